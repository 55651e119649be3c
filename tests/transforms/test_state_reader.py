"""``compile_reader(...).read_many``: a scratch arena kept per thread and reused from request to request,
features of the same computation evaluated once.  Every answer equals ``ViewState.evaluate`` of the
state alone, whatever the requests before it held (sizes, interned values, last_n items, distinct
values, a damaged state), and in several threads at once."""

from __future__ import annotations

import random
import threading

import pytest

from transforms import AggSpec, ViewState, compile_reader
from transforms.engine import StateFormatError

T0 = 1_767_225_600_000
SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000

SPECS = (AggSpec("s", "sum", "x", HOUR), AggSpec("s_again", "sum", "x", HOUR), AggSpec("c", "count", "x", DAY),
         AggSpec("m", "mean", "x", 10 * MIN, MIN), AggSpec("lo", "min", "x", DAY), AggSpec("hi", "max", "x", HOUR),
         AggSpec("v", "var", "x"), AggSpec("f", "first", "obj", HOUR), AggSpec("l", "last", "obj"),
         AggSpec("n3", "last_n", "obj", DAY, n=3), AggSpec("n3_again", "last_n", "obj", DAY, n=3),
         AggSpec("n2", "last_n", "x", n=2),
         AggSpec("cd", "count_distinct", "cat", HOUR), AggSpec("cd_life", "count_distinct", "cat"),
         AggSpec("e", "count_events", None, HOUR), AggSpec("r", "events_per_minute", None, HOUR),
         AggSpec("t", "seconds_since_last"), AggSpec("t_again", "seconds_since_last"))
NAMES = [s.name for s in SPECS]


def some_states(rng: random.Random, count: int) -> list[tuple[bytes, int | None]]:
    """(stored state, watermark) of ``count`` entities: none to 30 events each, numbers, strings,
    lists and dicts (fresh objects, not interned), some states with no event at all."""
    out = []
    for e in range(count):
        state = ViewState(SPECS)
        t, events = T0 + rng.randrange(DAY), []
        for i in range(rng.choice((0, 1, 2, 5, 30))):
            t += rng.choice((0, 1, 999, 40 * SEC, 7 * MIN, 2 * HOUR))
            obj = rng.choice((None, f"s{e}-{i}", "shared", [e, i], {"k": i}, 3, 2.5, True))
            events.append((t, {"x": rng.choice((None, 1.5, -2.25, float(i), rng.gauss(0, 1e3), 7)),
                               "cat": rng.choice((None, "a", "b", f"c{e}", 1, 2.0)), "obj": obj}, None))
        state.apply(events)
        out.append((state.to_parts()[0], state.watermark))
    return out


def expected(blob: bytes, t: int, features: list[str]) -> list:
    values = ViewState.from_bytes(SPECS, blob).evaluate(t)
    return [values[f] for f in features]


def check(reader, features, states, picked, rng) -> None:
    blobs = [states[m][0] for m in picked]
    times = [(states[m][1] or T0) + rng.choice((0, 1, MIN, 30 * MIN, HOUR + 1, 2 * DAY)) for m in picked]
    got = reader.read_many(blobs, times)
    want = [expected(b, t, features) for b, t in zip(blobs, times)]
    assert got == want
    assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in want]


@pytest.mark.parametrize("features", [NAMES, ["n3", "s", "s_again", "cd", "s", "t_again", "l", "t", "f"], ["hi"]])
def test_requests_of_every_size_one_after_another(features) -> None:
    """Requests of 1 to 300 states (past the size the reader keeps its arena for) in turn, the same
    state in several requests and twice in one: each answer is the states' own."""
    rng = random.Random(len(features))
    states = some_states(rng, 320)
    reader = compile_reader(SPECS, features)
    for size in (1, 5, 9, 40, 3, 300, 17, 1, 64, 2, 257, 8):
        picked = rng.sample(range(len(states)), size)
        if size > 1:
            picked[-1] = picked[0]
        check(reader, features, states, picked, rng)


def test_a_damaged_state_leaves_nothing_for_the_next_request() -> None:
    """A request whose states include a damaged one raises; the next request's answers are its own."""
    rng = random.Random(3)
    states = some_states(rng, 60)
    reader = compile_reader(SPECS, NAMES)
    for size, bad_at in ((3, 1), (40, 25)):
        blobs = [b for b, _ in states[:size]]
        blobs[bad_at] = blobs[bad_at][:-8]
        with pytest.raises(StateFormatError, match="rebuild"):
            reader.read_many(blobs, [(wm or T0) + DAY for _, wm in states[:size]])
        check(reader, NAMES, states, list(range(size, 2 * size))[:len(states) - size], rng)
    held = [m for m, (_, wm) in enumerate(states) if wm is not None]
    with pytest.raises(ValueError, match="watermark"):
        reader.read_many([states[held[0]][0], states[held[1]][0]], [states[held[0]][1], states[held[1]][1] - 1])
    check(reader, NAMES, states, [held[1], 0, held[0]], rng)


def test_threads_read_at_once() -> None:
    """Four threads, each with requests of its own sizes through the same reader, all at once."""
    rng = random.Random(4)
    states = some_states(rng, 120)
    reader = compile_reader(SPECS, NAMES)
    failures: list[BaseException] = []

    def read(seed: int) -> None:
        local = random.Random(seed)
        try:
            for _ in range(25):
                check(reader, NAMES, states, local.sample(range(len(states)), local.choice((1, 3, 12, 50))), local)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


def test_features_of_one_computation_answer_lists_of_their_own() -> None:
    """Two last_n features of the same column, window and n answer equal lists, not one list twice."""
    rng = random.Random(5)
    states = [s for s in some_states(rng, 40) if s[1] is not None]
    reader = compile_reader(SPECS, ["n3", "s", "n3_again", "s_again"])
    for size in (1, 12):
        blobs, times = [b for b, _ in states[:size]], [wm + DAY for _, wm in states[:size]]
        for n3, s, again, s_again in reader.read_many(blobs, times):
            assert n3 == again and n3 is not again and s == s_again
