"""numba's ``njit`` when numba can be imported, else the plain Python functions.

The kernels of ``transforms.engine`` are written in the subset of Python that numba
compiles, so the same source runs either way: compiled (the default), or interpreted,
slow and with the same results, when numba is missing or ``FEATURESTORE_JIT=0``.
Compiled kernels are cached on disk (``cache=True``) in ``FEATURESTORE_KERNEL_CACHE``,
default ``$FEATURESTORE_STATE_DIR/kernels`` (``.featurestore/kernels``), in a subfolder per
digest of the engine's sources, set before numba is imported; a folder that cannot be written
falls back to a temporary one, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)



def _cache_folder() -> Path:
    configured = os.environ.get("FEATURESTORE_KERNEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("FEATURESTORE_STATE_DIR", ".featurestore")).expanduser() / "kernels"


def _writable(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return path.resolve()
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / "featurestore-kernels" / path.name
        fallback.mkdir(parents=True, exist_ok=True)
        logger.warning("kernel cache folder %s cannot be written (%s): using %s instead; set "
                       "FEATURESTORE_KERNEL_CACHE to a writable folder so that workers start without compiling",
                       path, exc, fallback)
        return fallback


def _source_digest() -> str:
    """A digest of the engine's sources: numba keys a cached kernel by its own file only, so a kernel
    that calls one of another file would keep a stale compile; one folder per digest cannot."""
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(_writable(_cache_folder() / _source_digest()))
CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

numba: Any = None
WHY_NOT_COMPILED: str | None = None
try:
    if os.environ.get("FEATURESTORE_JIT", "1").lower() in ("0", "false", "no", "off"):
        raise ImportError("FEATURESTORE_JIT=0")
    import numba
except ImportError as exc:  # exercised by the FEATURESTORE_JIT=0 runs (tests/transforms/test_engine_fallback.py)
    numba = None
    WHY_NOT_COMPILED = str(exc)
else:
    numba.config.CACHE_DIR = CACHE_DIR  # numba may have read its settings before this module

COMPILED = numba is not None


def njit(fn):
    """Compile ``fn`` in nopython mode with the on-disk cache; identity without numba."""
    if numba is None:
        return fn
    return numba.njit(cache=True, nogil=True)(fn)


def njit_inline(fn):
    """``njit`` for a small helper of a per-item loop: inlined into its callers by numba (a compiled
    call costs more than such a helper's work); identity without numba."""
    if numba is None:
        return fn
    return numba.njit(cache=True, nogil=True, inline="always")(fn)
