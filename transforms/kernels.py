"""Per-layout kernels of the streaming state, generated once per spec set.

``ViewState`` keeps one dict of tiles per (column, hop) group.  Looping over
groups and specs with generic code costs more than the arithmetic itself (a
typical entity holds one or two events per tile), so for each spec set this
module writes the three hot loops out as plain Python source with the groups,
hops, windows and columns as constants, and compiles it once:

* ``add(groups, accepted)`` — every accepted ``(ts, seq, values)`` event into
  the tile of each group (each input column is read and null-checked once);
* ``prune(groups, watermark)`` — drop tiles no future window can reach;
* ``evaluate(tiles, wm, t, special)`` — merge the tiles of each (group, window)
  once, then every feature in spec order, and the earliest time a value may
  change without a new event.  ``tiles[i]`` is an iterable of tile rows of
  group ``i`` (a live state's ``dict.values()``, or the rows of a serialized
  state, so a read never rebuilds a ``ViewState``); ``special(i, t)`` gives
  spec ``i``'s set-valued feature (count_distinct, last_n).  Built for a subset
  of the features (``wanted``), it merges only the windows they need.

The algebra is not repeated here: merges call ``merge_moments`` and values
call ``finalize`` from ``transforms.aggregations`` — the functions the batch
path uses.  ``print(transforms.state._layout(specs).kernels.source)`` shows what was generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .aggregations import EMPTY_VALUES, finalize, merge_moments

# Tile slots (see transforms.state): K, N_EVENTS, COUNT, TOTAL, MEAN, M2, LO, HI, F_TS, F_SEQ, F_VAL, L_TS, L_SEQ, L_VAL
_NEW_TILE = "[k, 0, 0, 0.0, 0.0, 0.0, None, None, None, None, None, None, None, None]"


@dataclass(frozen=True)
class Kernels:
    add: object
    prune: object
    evaluate: object
    source: str


def build(groups: tuple, specs: tuple, group_index: dict, special: frozenset,
          wanted: frozenset | None = None) -> Kernels:
    """``groups``: ((column, hop), functions, reach) per group, in ``ViewState.groups`` order;
    ``group_index``: spec name -> index of its group; ``special``: names evaluated by
    ``special(i, t)`` (count_distinct, last_n); ``wanted``: the features ``evaluate``
    returns (default all)."""
    lines: list[str] = []
    emit = lines.append

    # -- add ------------------------------------------------------------------------------
    emit("def add(groups, accepted):")
    for i in range(len(groups)):
        emit(f"    g{i} = groups[{i}]; t{i} = g{i}.tiles; f{i} = g{i}.floor")
    columns = list(dict.fromkeys(key[0] for key, _, _ in groups if key[0] is not None))
    emit("    for ts, seq, values in accepted:")
    for j, column in enumerate(columns):
        emit(f"        v{j} = values.get({column!r})")
        emit(f"        x{j} = not (v{j} is None or (isinstance(v{j}, float) and v{j} != v{j}))")
    if not groups:
        emit("        pass")
    for i, ((column, hop), functions, _) in enumerate(groups):
        emit(f"        k = ts // {hop}" if hop else "        k = 0")
        emit(f"        tile = t{i}.get(k)")
        emit("        if tile is None:")
        emit(f"            tile = t{i}[k] = {_NEW_TILE}")
        emit(f"            if f{i} is None or k < f{i}:")
        emit(f"                f{i} = k")
        emit("        tile[1] += 1")
        if column is None:
            continue
        j = columns.index(column)
        v = f"v{j}"
        emit(f"        if x{j}:")
        emit("            tile[2] += 1")
        if functions & {"sum", "mean"}:
            emit(f"            tile[3] += float({v})")
        if functions & {"var", "stddev"}:  # Welford, as merge_moments expects (count, mean, M2)
            emit(f"            x = float({v}); d = x - tile[4]; tile[4] += d / tile[2]; tile[5] += d * (x - tile[4])")
        if functions & {"min", "max"}:
            emit(f"            if tile[6] is None or {v} < tile[6]: tile[6] = {v}")
            emit(f"            if tile[7] is None or {v} > tile[7]: tile[7] = {v}")
        if functions & {"first", "last"}:
            emit(f"            if tile[8] is None or (ts, seq) < (tile[8], tile[9]): tile[8] = ts; tile[9] = seq; tile[10] = {v}")
            emit(f"            if tile[11] is None or (ts, seq) > (tile[11], tile[12]): tile[11] = ts; tile[12] = seq; tile[13] = {v}")
    for i in range(len(groups)):
        emit(f"    g{i}.floor = f{i}")

    # -- prune ----------------------------------------------------------------------------
    emit("def prune(groups, wm):")
    emit("    pass")
    for i, ((_, hop), _, reach) in enumerate(groups):
        if not hop:
            continue
        emit(f"    g = groups[{i}]; oldest = (wm - {reach}) // {hop}")  # window_start(wm, reach, hop) // hop
        emit("    if g.tiles and (g.floor is None or g.floor < oldest):")
        emit("        tiles = g.tiles")
        emit("        for k in [k for k in tiles if k < oldest]:")
        emit("            del tiles[k]")
        emit("        g.floor = oldest")

    # -- evaluate -------------------------------------------------------------------------
    emit("def evaluate(tiles, wm, t, special):")
    emit("    horizon = None")
    chosen = [(si, s) for si, s in enumerate(specs) if wanted is None or s.name in wanted]  # si: index in specs
    merges: dict[tuple, int] = {}
    for _, spec in chosen:
        if spec.name in special or spec.function == "seconds_since_last":
            continue
        merges.setdefault((group_index[spec.name], spec.window_ms), len(merges))
    for (gi, w), m in merges.items():
        (_, hop), functions, _ = groups[gi]
        welford = bool(functions & {"var", "stddev"})
        extremes = bool(functions & {"min", "max"})
        positional = bool(functions & {"first", "last"})
        emit(f"    n{m} = 0; c{m} = 0; s{m} = 0.0; mu{m} = 0.0; q{m} = 0.0; lo{m} = None; hi{m} = None; old = None")
        if positional:
            emit(f"    fts{m} = fsq{m} = fv{m} = lts{m} = lsq{m} = lv{m} = None")
        emit(f"    for tile in tiles[{gi}]:")
        emit("        k = tile[0]")
        if w is not None:
            emit(f"        if k < (t - {w}) // {hop} or k > t // {hop}:")
            emit("            continue")
        emit("        if tile[1]:")
        emit(f"            n{m} += tile[1]")
        emit("            if old is None or k < old:")
        emit("                old = k")
        emit("        if not tile[2]:")
        emit("            continue")
        if welford:
            emit(f"        c{m}, mu{m}, q{m} = merge_moments(c{m}, mu{m}, q{m}, tile[2], tile[4], tile[5])")
        else:
            emit(f"        c{m} += tile[2]")
        emit(f"        s{m} += tile[3]")
        if extremes:
            emit(f"        if lo{m} is None or tile[6] < lo{m}: lo{m} = tile[6]")
            emit(f"        if hi{m} is None or tile[7] > hi{m}: hi{m} = tile[7]")
        if positional:
            emit(f"        if tile[8] is not None and (fts{m} is None or (tile[8], tile[9]) < (fts{m}, fsq{m})):")
            emit(f"            fts{m} = tile[8]; fsq{m} = tile[9]; fv{m} = tile[10]")
            emit(f"        if tile[11] is not None and (lts{m} is None or (tile[11], tile[12]) > (lts{m}, lsq{m})):")
            emit(f"            lts{m} = tile[11]; lsq{m} = tile[12]; lv{m} = tile[13]")
        if w is not None:  # the oldest non-empty tile leaves this window at (old + 1) * hop + w
            emit("    if old is not None:")
            emit(f"        change = (old + 1) * {hop} + {w}")
            emit("        if horizon is None or change < horizon:")
            emit("            horizon = change")
    emit("    out = {}")
    for si, spec in chosen:
        name, fn = spec.name, spec.function
        if fn == "seconds_since_last":
            emit(f"    out[{name!r}] = None if wm is None else (t - wm) / 1000")
            continue
        if name in special:
            emit(f"    value, change = special({si}, t)")
            emit(f"    out[{name!r}] = value")
            emit("    if change is not None and (horizon is None or change < horizon):")
            emit("        horizon = change")
            continue
        m = merges[(group_index[name], spec.window_ms)]
        if fn == "first":
            emit(f"    out[{name!r}] = fv{m}")
        elif fn == "last":
            emit(f"    out[{name!r}] = lv{m}")
        else:
            call = (f"finalize({fn!r}, n_events=n{m}, count=c{m}, total=s{m}, mean=mu{m}, m2=q{m}, "
                    f"lo=lo{m}, hi=hi{m}, window_ms={spec.window_ms})")
            if fn in EMPTY_VALUES:
                call = f"({EMPTY_VALUES[fn]!r} if not n{m} else {call})"
            emit(f"    out[{name!r}] = {call}")
    emit("    return out, horizon")

    source = "\n".join(lines) + "\n"
    namespace = {"merge_moments": merge_moments, "finalize": finalize}
    exec(compile(source, f"<transforms.kernels {len(specs)} specs>", "exec"), namespace)  # noqa: S102 (our own source)
    return Kernels(namespace["add"], namespace["prune"], namespace["evaluate"], source)
