"""Without numba, the engine runs the same kernel source as plain Python: slow, and equal.

A child process with ``FEATURESTORE_JIT=0`` (the kernels interpreted) and this process (compiled)
apply the same random micro-batches of every function to the same states; the refusals, every
value at several times, and the serialized states and ids must be equal byte for byte.  The
fallback's own suite: ``FEATURESTORE_JIT=0 pytest tests/transforms``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson


ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, random, sys
import orjson
from transforms import ViewState
from transforms.engine.jit import COMPILED
from tests.transforms.every_function import D, H, M, SPECS as specs, T0
rng = random.Random(int(sys.argv[1]))
out = {"compiled": COMPILED, "rejected": [], "values": [], "states": []}
states = [ViewState(specs, 5 * M) for _ in range(4)]
t = T0
for batch in range(30):
    for st in states:
        events = []
        for i in range(rng.randint(0, 12)):
            t += rng.choice((1, 500, 30_000, 9 * M, 2 * H))
            ts = t - rng.choice((0, 0, 0, M, 6 * M))
            events.append((ts, {"x": rng.choice((None, float("nan"), rng.uniform(-5, 5), rng.randint(-3, 3))),
                                "y": rng.choice((None, rng.uniform(0, 9))),
                                "c": rng.choice((None, "a", "b", "c", 1, 2.0, True))},
                           rng.choice((None, f"e{rng.randint(0, 60)}"))))
        out["rejected"].append([(r.index, r.reason) for r in st.apply(events)])
        if st.watermark is not None:
            for dt in (0, M, H, D + 1):
                out["values"].append(list(st.evaluate(st.watermark + dt).items()))
        blob, ids = st.to_parts()
        out["states"].append([blob.hex(), ids.hex()])
print(json.dumps(out))
'''


def run(seed: int, jit: bool) -> dict:
    env = {**os.environ, "FEATURESTORE_JIT": "1" if jit else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(seed)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_pure_python_kernels_equal_the_compiled_ones() -> None:
    for seed in (1, 2):
        compiled, interpreted = run(seed, True), run(seed, False)
        assert compiled["compiled"] is True and interpreted["compiled"] is False
        assert len(compiled["values"]) > 100 and any(compiled["rejected"])
        assert compiled["rejected"] == interpreted["rejected"]
        assert orjson.dumps(compiled["values"]) == orjson.dumps(interpreted["values"])
        assert compiled["states"] == interpreted["states"]


def test_a_kernel_cache_that_cannot_be_written_falls_back_with_a_warning(tmp_path) -> None:
    """The cache folder is made when missing; one that cannot be made (here: below a file) is replaced
    by a temporary folder, with a warning that names both and the setting to change."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = ("import logging; logging.basicConfig(); from transforms.engine import jit; print(jit.CACHE_DIR)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATURESTORE_KERNEL_CACHE": str(blocker / "kernels")}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    used = Path(done.stdout.strip())
    assert used.is_dir() and not str(used).startswith(str(blocker))
    assert "cannot be written" in done.stderr and "FEATURESTORE_KERNEL_CACHE" in done.stderr
    fresh = tmp_path / "cache"
    env["FEATURESTORE_KERNEL_CACHE"] = str(fresh)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and Path(done.stdout.strip()).parent == fresh and "cannot" not in done.stderr
