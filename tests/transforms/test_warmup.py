"""``warm_up`` (what a worker runs before it joins its group) leaves no kernel to compile later.

A child process (its dispatchers start empty) runs ``warm_up``, notes how many compiled forms each
numba dispatcher of the engine holds, then does what workers and readers do over hours: batches
of every function over many entities with event ids, strings and nulls, late and repeated events,
an event-id table that outgrows itself, interned values compacted, states encoded, loaded one and
many at a time, read back one and many per call, legacy states converted, slots dropped and
reused.  Any dispatcher that gained a compiled form is a kernel a batch would have waited for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transforms.engine.jit import COMPILED

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, random
import numpy as np
from transforms.engine.warmup import warm_up
warm_up()
import transforms.engine as engine
from transforms.engine import algebra, codec_kernels, evaluate, kernels, pool, prune

def dispatchers():
    out = {}
    for module in (algebra, codec_kernels, evaluate, kernels, pool, prune):
        for name, obj in vars(module).items():
            if hasattr(obj, "py_func") and hasattr(obj, "signatures"):
                out[f"{module.__name__}.{name}"] = len(obj.signatures)
    return out

before = dispatchers()
from transforms import ViewState, compile_reader
from transforms.state import append_ids, load_state, load_states
from transforms.engine import StateArena, codec
from transforms.legacy.state import ViewState as LegacyViewState
from tests.transforms.every_function import D, H, M, SPECS as specs, T0
rng = random.Random(7)
arena = StateArena(specs, 5 * M)
arena.objects.limit = 64  # compaction within the run
t, n = T0, 0
for batch in range(40):
    slots, ts, ids, values = [], [], [], []
    for _ in range(500):
        key = f"k{rng.randrange(300)}"
        t += rng.randrange(0, 20_000)
        n += 1
        slots.append(arena.slot(key))
        ts.append(t - rng.choice([0, 0, 0, 4 * M, 20 * M]))  # some late
        ids.append(f"e{n - rng.choice([0] * 9 + [1])}")  # some repeated
        values.append({"x": rng.choice([None, 1, 2.5, float(n)]), "y": rng.random(),
                       "c": rng.choice([None, "a", "b", f"s{n % 97}", 3])})
    arena.apply(np.array(slots), np.array(ts), ids, values)
    at = np.array(sorted(arena.slot_of.values()), dtype=np.int64)
    arena.values(at, np.full(len(at), t, dtype=np.int64))
    blobs = codec.encode_many(arena, at)
    parts = [append_ids(None, part) for part in codec.encode_ids_many(arena, at)]  # as stored
    if batch % 10 == 9:  # evicted and loaded again, many at a time and one at a time
        keys = list(arena.slot_of)[:50]
        for key in keys:
            arena.drop(key)
        again = [arena.slot(key) for key in keys]
        load_states(arena, again[:40], blobs[:40], parts[:40])
        for s, blob, part in zip(again[40:], blobs[40:50], parts[40:50]):
            load_state(arena, s, blob, part)
reader = compile_reader(specs, ["s", "n3", "cd", "t"])
reader.read_many(blobs[:1], [t + D])
reader.read_many(blobs[:30], [t + H] * 30)
one = ViewState(specs, 5 * M)
one.apply([(T0, {"x": 1.0, "y": 2.0, "c": "a"}, "i1"), (T0 + M, {"x": None, "y": 1.0, "c": None}, "i2")])
one.snapshot_values(T0 + 2 * H)
ViewState.from_bytes(specs, one.to_bytes(), 5 * M).evaluate(T0 + D)
old = LegacyViewState(specs, 5 * M)
old.apply([(T0, {"x": 1.0, "y": 2.0, "c": "a"}, "i1")])
ViewState.from_bytes(specs, old.to_bytes(), 5 * M).evaluate(T0 + H)
arena.reset()
after = dispatchers()
print(json.dumps({"dispatchers": len(before),
                  "compiled_later": {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}}))
'''


@pytest.mark.skipif(not COMPILED, reason="numba is not importable here: nothing is compiled, so nothing to warm")
def test_warm_up_leaves_nothing_to_compile(tmp_path) -> None:
    # an empty kernel cache: every kernel compiles, each compiled form counted where it is made
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["dispatchers"] >= 30  # the engine's kernels were found
    assert out["compiled_later"] == {}
