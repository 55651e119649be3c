"""A damaged stored state is refused with ``StateFormatError`` and never read out of bounds.

Compiled kernels do not check array bounds, so a stored word used as an index (an interned-object
code, a count) would read or write outside the arena: a crash of the worker or the server, or a
wrong value.  The decoding checks every such word.  The random damage runs in a child process, so
that a crash is reported as this test's failure rather than ending the test run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from transforms import AggSpec, ViewState, compile_reader
from transforms.engine.codec import StateFormatError

M, H, D = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000
#: string values in tiles (first, last) and in a last_n list
SPECS = (AggSpec("f", "first", "c", H), AggSpec("l", "last", "c", D), AggSpec("lo", "min", "x", D),
         AggSpec("hi", "max", "x", H), AggSpec("n3", "last_n", "c", D, n=3), AggSpec("s", "sum", "x", H),
         AggSpec("cd", "count_distinct", "c", H), AggSpec("t", "seconds_since_last"))
NAMES = [s.name for s in SPECS]
ROOT = Path(__file__).resolve().parents[2]


def stored_state(seed: int) -> tuple[bytes, int]:
    """(a stored state holding strings, its watermark)."""
    rng = random.Random(seed)
    state = ViewState(SPECS, lateness_ms=H)
    ts = T0
    events = []
    for i in range(rng.randint(3, 40)):
        ts += rng.randint(0, 20 * M)
        events.append((ts, {"c": rng.choice(["a", "bb", "ccc", "dddd", "é"]), "x": rng.random()}, f"e{seed}-{i}"))
    state.apply(events)
    blob, _ = state.to_parts()
    return blob, ts


def trailer_at(blob: bytes) -> int:
    """Where the state's value trailer (the JSON list of its strings) starts."""
    return 8 * int.from_bytes(blob[8:16], "little", signed=True)


def with_trailer(blob: bytes, values: list) -> bytes:
    return blob[:trailer_at(blob)] + (orjson.dumps(values) if values else b"")


@pytest.mark.parametrize("keep", [0, 1])
def test_object_codes_beyond_the_trailer_are_refused(keep) -> None:
    """The state's words name strings by their position in its trailer; a trailer shorter than the
    codes (or none at all) is refused, by the one-state and the many-state decoders alike."""
    blob, wm = stored_state(1)
    values = orjson.loads(blob[trailer_at(blob):])
    assert len(values) >= 3, values  # the state holds several strings, so its codes reach past `keep`
    damaged = with_trailer(blob, values[:keep])
    with pytest.raises(StateFormatError, match="damaged"):
        ViewState.from_bytes(SPECS, damaged, H)
    reader = compile_reader(SPECS, NAMES)
    with pytest.raises(StateFormatError, match="damaged"):
        reader.read_many([blob, damaged], [wm + D, wm + D])
    assert reader.read_many([blob], [wm + D]) == [list(ViewState.from_bytes(SPECS, blob, H).evaluate(wm + D).values())]


def damage(runs: int, seed: int) -> dict:
    """Decode ``runs`` randomly damaged states (one word or byte changed) one and many at a time;
    every one must be refused or read.  Returns the counts."""
    rng = random.Random(seed)
    reader = compile_reader(SPECS, NAMES)
    states = [stored_state(s) for s in range(20)]
    counts = {"refused": 0, "read": 0}
    for _ in range(runs):
        blob, wm = states[rng.randrange(len(states))]
        buf = bytearray(blob)
        if rng.random() < 0.7:
            words = np.frombuffer(buf, dtype=np.int64, count=trailer_at(blob) // 8)
            at = rng.randrange(1, len(words))  # the header word is checked as a whole already
            value = rng.choice([-1, 0, 1, 2, 3, 4, 5, 7, 64, len(words), 2 ** 31, -(2 ** 40), rng.getrandbits(63)])
            buf[8 * at:8 * at + 8] = int(value).to_bytes(8, "little", signed=True)
        else:
            at = rng.randrange(8, len(buf))
            buf[at] = rng.randrange(256)
        damaged = bytes(buf)
        try:
            one = ViewState.from_bytes(SPECS, damaged, H)
            one.evaluate(max(wm, one.watermark or wm) + D)
            many = reader.read_many([states[0][0], damaged], [states[0][1] + D, max(wm, one.watermark or wm) + D])
            assert len(many) == 2
            counts["read"] += 1
        except StateFormatError:
            counts["refused"] += 1
    return counts


def test_randomly_damaged_states_are_refused_or_read_never_crash() -> None:
    child = subprocess.run([sys.executable, "-c",
                            "import json, tests.transforms.test_state_damage as t; "
                            "print(json.dumps([t.damage(15_000, seed) for seed in range(1, 5)]))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"the child exited {child.returncode}:\n{child.stderr[-3000:]}"
    for counts in json.loads(child.stdout.strip().splitlines()[-1]):
        # both outcomes occur, so the damage reaches the checks and also leaves readable states
        assert counts["refused"] > 100 and counts["read"] > 100, counts
