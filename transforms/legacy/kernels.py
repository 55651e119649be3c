"""Formats 1 and 2 (frozen, see ``transforms.legacy``).

Tile layout and per-layout kernels of the streaming state, generated once per spec set.

``ViewState`` keeps one dict of tiles per hop (``None``: the single lifetime
tile).  A tile is one flat list: ``[k, n_events, <fields of column 1>, <fields
of column 2>, ...]`` where each input column of that hop keeps only the fields
its functions need (``TileGroup.columns``), in the order of ``FIELDS``:

==========  =============================================  =============
field       what                                           needed by
==========  =============================================  =============
c           non-null values                                every column
s           their sum                                      sum, mean
mu, q       running mean and M2 (Welford)                  var, stddev
lo / hi     min / max                                      min / max
fts.. fv    (ts, arrival seq, value) of the first value    first
lts.. lv    (ts, arrival seq, value) of the last value     last
==========  =============================================  =============

so an event updates one tile per hop, and a state stores no field nobody reads.

Looping over groups and specs with generic code costs more than the arithmetic
itself (a typical entity holds one or two events per tile), so for each spec
set this module writes the three hot loops out as plain Python source with the
hops, windows, columns and field offsets as constants, and compiles it once:

* ``add(groups, accepted)`` — every accepted ``(ts, seq, values)`` event into
  the tile of each hop (each input column is read and null-checked once);
  all or nothing: when an input raises (a value ``float()`` or a comparison
  refuses), the tiles it touched are put back as they were before the call
  and the exception propagates;
* ``prune(groups, watermark)`` — drop tiles no future window can reach;
* ``evaluate(tiles, wm, t, special)`` — merge the tiles of each (hop, window)
  once, then ``([value of every feature in spec order], the earliest time a
  value may change without a new event)``.  ``tiles[i]`` is an iterable of tile rows of
  group ``i`` (a live state's ``dict.values()``, or the rows of a serialized
  state, so a read never rebuilds a ``ViewState``); ``special(i, t)`` gives
  spec ``i``'s set-valued feature (count_distinct, last_n).  Built for a subset
  of the features (``wanted``), it merges only the windows and fields they need
  and returns their values (still in spec order).

The algebra is not repeated here: merges call ``merge_moments`` from
``transforms.aggregations`` — the function the batch path uses — and values are
its ``SCALAR_FINAL`` expressions written inline, the ones ``finalize`` compiles
for scalars.  ``print(transforms.state._layout(specs).kernels.source)`` shows what was generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..aggregations import EMPTY_VALUES, SCALAR_FINAL, SCALAR_NAMESPACE, merge_moments

#: Column fields of a tile, in layout order, with their empty value.
FIELDS = {"c": 0, "s": 0.0, "mu": 0.0, "q": 0.0, "lo": None, "hi": None,
          "fts": None, "fsq": None, "fv": None, "lts": None, "lsq": None, "lv": None}
ACTIVITY = frozenset({"count_events", "events_per_minute"})  # read n_events only, no column


def fields_for(functions) -> tuple[str, ...]:
    """The tile fields a column needs for ``functions``."""
    need = {"c"}
    if functions & {"sum", "mean"}:
        need.add("s")
    if functions & {"var", "stddev"}:
        need |= {"mu", "q"}
    if "min" in functions:
        need.add("lo")
    if "max" in functions:
        need.add("hi")
    if "first" in functions:
        need |= {"fts", "fsq", "fv"}
    if "last" in functions:
        need |= {"lts", "lsq", "lv"}
    return tuple(f for f in FIELDS if f in need)


@dataclass(frozen=True)
class TileGroup:
    """The tiles of one hop: ``columns`` is ((column, fields), ...); ``reach`` the longest window (None: lifetime)."""

    hop: int | None
    columns: tuple
    reach: int | None

    @cached_property
    def offsets(self) -> dict:
        """(column, field) -> index in the tile row."""
        out, i = {}, 2
        for column, fields in self.columns:
            for f in fields:
                out[(column, f)] = i
                i += 1
        return out

    @cached_property
    def new_tile(self) -> str:
        return "[k, 0" + "".join(f", {FIELDS[f]!r}" for _, fields in self.columns for f in fields) + "]"

    @cached_property
    def signature(self) -> str:
        """Names the row layout in serialized states (``column:field,field;...``)."""
        return ";".join(f"{c}:{','.join(fields)}" for c, fields in self.columns)


def _fold(emit, indent: str, dst: dict, src: dict) -> None:
    """Emit the folding of ``src`` into ``dst`` (field -> expression) for the extreme and
    positional fields in ``dst``: min, max, and first/last by (ts, arrival seq)."""
    if "lo" in dst:
        emit(f"{indent}if {dst['lo']} is None or {src['lo']} < {dst['lo']}: {dst['lo']} = {src['lo']}")
    if "hi" in dst:
        emit(f"{indent}if {dst['hi']} is None or {src['hi']} > {dst['hi']}: {dst['hi']} = {src['hi']}")
    for ts, seq, value, before in (("fts", "fsq", "fv", "<"), ("lts", "lsq", "lv", ">")):
        if ts in dst:
            emit(f"{indent}if {dst[ts]} is None or ({src[ts]}, {src[seq]}) {before} ({dst[ts]}, {dst[seq]}): "
                 f"{dst[ts]} = {src[ts]}; {dst[seq]} = {src[seq]}; {dst[value]} = {src[value]}")


def _restore(tiles: dict, saved: dict) -> None:
    """Put back the rows ``saved`` holds (k -> the row before, None: a tile that did not exist)."""
    for k, row in saved.items():
        if row is None:
            del tiles[k]
        else:
            tiles[k][:] = row


@dataclass(frozen=True)
class Kernels:
    add: object
    prune: object
    evaluate: object
    source: str


def build(groups: tuple, specs: tuple, group_index: dict, special: frozenset,
          wanted: frozenset | None = None) -> Kernels:
    """``groups``: ``TileGroup`` s in ``ViewState`` order; ``group_index``: spec name -> index of its
    group (simple functions); ``special``: names evaluated by ``special(i, t)`` (count_distinct,
    last_n); ``wanted``: the features ``evaluate`` returns (default all)."""
    lines: list[str] = []
    emit = lines.append
    offsets = [g.offsets for g in groups]

    # -- add ------------------------------------------------------------------------------
    # The tiles are updated in place; s{i} keeps the row each touched tile had before this call
    # (None: a tile this call created), so that an input that raises undoes the whole call.
    emit("def add(groups, accepted):")
    for i in range(len(groups)):
        emit(f"    g{i} = groups[{i}]; t{i} = g{i}.tiles; f{i} = g{i}.floor; s{i} = {{}}")
    columns = list(dict.fromkeys(c for g in groups for c, _ in g.columns))
    emit("    try:")
    emit("        for ts, seq, values in accepted:")
    for j, column in enumerate(columns):
        emit(f"            v{j} = values.get({column!r})")
        emit(f"            x{j} = not (v{j} is None or (isinstance(v{j}, float) and v{j} != v{j}))")
    if not groups:
        emit("            pass")
    for i, group in enumerate(groups):
        o = offsets[i]
        emit(f"            k = ts // {group.hop}" if group.hop else "            k = 0")
        emit(f"            tile = t{i}.get(k)")
        emit("            if tile is None:")
        emit(f"                tile = t{i}[k] = {group.new_tile}")
        emit(f"                s{i}[k] = None")
        emit(f"                if f{i} is None or k < f{i}:")
        emit(f"                    f{i} = k")
        emit(f"            elif k not in s{i}:")
        emit(f"                s{i}[k] = tile.copy()")
        emit("            tile[1] += 1")
        for column, fields in group.columns:
            j = columns.index(column)
            v = f"v{j}"
            at = {f: o[(column, f)] for f in fields}
            emit(f"            if x{j}:")
            emit(f"                tile[{at['c']}] += 1")
            if "s" in at:
                emit(f"                tile[{at['s']}] += float({v})")
            if "mu" in at:  # Welford, as merge_moments expects (count, mean, M2)
                emit(f"                x = float({v}); d = x - tile[{at['mu']}]; "
                     f"tile[{at['mu']}] += d / tile[{at['c']}]; "
                     f"tile[{at['q']}] += d * (x - tile[{at['mu']}])")
            _fold(emit, "                ", {f: f"tile[{i}]" for f, i in at.items()},
                  {"lo": v, "hi": v, "fts": "ts", "fsq": "seq", "fv": v, "lts": "ts", "lsq": "seq", "lv": v})
    emit("    except BaseException:")
    for i in range(len(groups)):
        emit(f"        restore(t{i}, s{i})")
    emit("        raise")
    for i in range(len(groups)):
        emit(f"    g{i}.floor = f{i}")

    # -- prune ----------------------------------------------------------------------------
    emit("def prune(groups, wm):")
    emit("    pass")
    for i, group in enumerate(groups):
        if not group.hop:
            continue
        # window_start(wm, reach, hop) // hop
        emit(f"    g = groups[{i}]; oldest = (wm - {group.reach}) // {group.hop}")
        emit("    if g.tiles and (g.floor is None or g.floor < oldest):")
        emit("        tiles = g.tiles")
        emit("        for k in [k for k in tiles if k < oldest]:")
        emit("            del tiles[k]")
        emit("        g.floor = oldest")

    # -- evaluate -------------------------------------------------------------------------
    emit("def evaluate(tiles, wm, t, special):")
    emit("    horizon = None")
    chosen = [(si, s) for si, s in enumerate(specs) if wanted is None or s.name in wanted]  # si: index in specs
    merges: dict[tuple, dict] = {}  # (group, window) -> {column: functions wanted}
    for _, spec in chosen:
        if spec.name in special or spec.function == "seconds_since_last":
            continue
        need = merges.setdefault((group_index[spec.name], spec.window_ms), {})
        if spec.function not in ACTIVITY:
            need.setdefault(spec.column, set()).add(spec.function)
    mindex = {key: m for m, key in enumerate(merges)}
    for (gi, w), need in merges.items():
        m = mindex[(gi, w)]
        group, o = groups[gi], offsets[gi]
        hop = group.hop
        emit(f"    n{m} = 0; old = None")
        for column, functions in need.items():
            j = columns.index(column)
            emit(f"    c{m}_{j} = 0; s{m}_{j} = 0.0; mu{m}_{j} = 0.0; q{m}_{j} = 0.0; "
                 f"lo{m}_{j} = None; hi{m}_{j} = None")
            if functions & {"first", "last"}:
                emit(f"    fts{m}_{j} = fsq{m}_{j} = fv{m}_{j} = lts{m}_{j} = lsq{m}_{j} = lv{m}_{j} = None")
        if w is not None:
            emit(f"    a = (t - {w}) // {hop}; b = t // {hop}")
        emit(f"    for tile in tiles[{gi}]:")
        emit("        k = tile[0]")
        if w is not None:
            emit("        if k < a or k > b:")
            emit("            continue")
        emit("        if tile[1]:")
        emit(f"            n{m} += tile[1]")
        emit("            if old is None or k < old:")
        emit("                old = k")
        for column, functions in need.items():
            j = columns.index(column)
            at = {f: o[(column, f)] for f in fields_for(functions)}
            s = f"{m}_{j}"
            emit(f"        if tile[{at['c']}]:")
            if "mu" in at:
                emit(f"            c{s}, mu{s}, q{s} = merge_moments(c{s}, mu{s}, q{s}, "
                     f"tile[{at['c']}], tile[{at['mu']}], tile[{at['q']}])")
            else:
                emit(f"            c{s} += tile[{at['c']}]")
            if "s" in at:
                emit(f"            s{s} += tile[{at['s']}]")
            _fold(emit, "            ", {f: f"{f}{s}" for f in at}, {f: f"tile[{i}]" for f, i in at.items()})
        if w is not None:  # the oldest non-empty tile leaves this window at (old + 1) * hop + w
            emit("    if old is not None:")
            emit(f"        change = (old + 1) * {hop} + {w}")
            emit("        if horizon is None or change < horizon:")
            emit("            horizon = change")
    for o, (si, spec) in enumerate(chosen):  # o{o}: value of the o-th chosen feature
        name, fn = spec.name, spec.function
        if fn == "seconds_since_last":
            emit(f"    o{o} = None if wm is None else (t - wm) / 1000")
            continue
        if name in special:
            emit(f"    o{o}, change = special({si}, t)")
            emit("    if change is not None and (horizon is None or change < horizon):")
            emit("        horizon = change")
            continue
        m = mindex[(group_index[name], spec.window_ms)]
        if fn in ACTIVITY:
            call = SCALAR_FINAL[fn].format(n=f"n{m}", w=spec.window_ms)
        else:
            s = f"{m}_{columns.index(spec.column)}"
            if fn in ("first", "last"):
                emit(f"    o{o} = {'fv' if fn == 'first' else 'lv'}{s}")
                continue
            call = SCALAR_FINAL[fn].format(n=f"n{m}", c=f"c{s}", s=f"s{s}", mu=f"mu{s}", q=f"q{s}", lo=f"lo{s}",
                                           hi=f"hi{s}", w=spec.window_ms)
        if fn in EMPTY_VALUES:
            call = f"({EMPTY_VALUES[fn]!r} if not n{m} else {call})"
        emit(f"    o{o} = {call}")
    emit(f"    return [{', '.join(f'o{o}' for o in range(len(chosen)))}], horizon")

    source = "\n".join(lines) + "\n"
    namespace = {"merge_moments": merge_moments, "restore": _restore, **SCALAR_NAMESPACE}
    exec(compile(source, f"<transforms.kernels {len(specs)} specs>", "exec"), namespace)  # noqa: S102 (our own source)
    return Kernels(namespace["add"], namespace["prune"], namespace["evaluate"], source)
