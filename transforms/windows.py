"""Event-time windows on integer epoch milliseconds.

All times inside the core are ``int`` milliseconds since the Unix epoch (UTC).
A window of length ``w`` with hop ``h`` (``h`` divides ``w``) evaluated as of
time ``t`` covers event times in ``[window_start(t, w, h), t]``, both ends
included, where ``window_start = floor((t - w) / h) * h``: the window ends at
``t`` and starts at the hop boundary at or before ``t - w``.  With ``h = 1``
(one millisecond) this is the exact sliding window ``[t - w, t]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

#: Event times: one int, or an int64 array computed elementwise.
Times = TypeVar("Times", int, "np.ndarray")

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

MIN_WINDOW = SECOND
MAX_WINDOW = 90 * DAY

#: Hops that ``default_hop`` chooses from, largest first.
NICE_HOPS = (
    DAY, 12 * HOUR, 6 * HOUR, 3 * HOUR, 2 * HOUR, HOUR, 30 * MINUTE,
    15 * MINUTE, 10 * MINUTE, 5 * MINUTE, MINUTE, 30 * SECOND, 10 * SECOND,
    5 * SECOND, SECOND, 500, 100, 50, 10, 5, 1,
)

#: A default hop never makes a window cover more than this fraction beyond w.
MAX_OVERHANG = 0.02


def default_hop(window_ms: int) -> int:
    """The largest hop from ``NICE_HOPS`` that divides ``window_ms`` and is at
    most ``MAX_OVERHANG * window_ms`` (1 min for 1 h, 15 min for 24 h, 3 h for
    7 d); 1 ms (exact) when none fits."""
    for hop in NICE_HOPS:
        if hop <= window_ms * MAX_OVERHANG and window_ms % hop == 0:
            return hop
    return 1


def window_start(t: Times, window_ms: int, hop_ms: int) -> Times:
    """First event time inside the window of length ``window_ms`` as of ``t`` (elementwise for an array)."""
    return ((t - window_ms) // hop_ms) * hop_ms


def check_window(window_ms: int, hop_ms: int) -> None:
    """Raise ``ValueError`` naming the problem when (window, hop) is not valid."""
    if not isinstance(window_ms, int) or not isinstance(hop_ms, int):
        raise ValueError(f"window and hop must be integer milliseconds, got {window_ms!r}, {hop_ms!r}")
    if not MIN_WINDOW <= window_ms <= MAX_WINDOW:
        raise ValueError(f"window {window_ms} ms is outside [1 s, 90 d]")
    if hop_ms < 1 or window_ms % hop_ms:
        raise ValueError(f"hop {hop_ms} ms must be positive and divide the window {window_ms} ms")


def parse_duration(text: str | int) -> int:
    """``'90s'``, ``'15m'``, ``'1h'``, ``'7d'``, ``'250ms'`` or an int (ms) -> milliseconds."""
    if isinstance(text, int):
        return text
    units = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
    s = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d", "w"):
        if s.endswith(suffix) and s[: -len(suffix)].isdigit():
            return int(s[: -len(suffix)]) * units[suffix]
    raise ValueError(f"cannot parse duration {text!r}: use e.g. 500ms, 30s, 15m, 1h, 7d")


def format_duration(ms: int) -> str:
    """Inverse of ``parse_duration`` for whole units: 3600000 -> '1h'."""
    for suffix, unit in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND)):
        if ms % unit == 0 and ms >= unit:
            return f"{ms // unit}{suffix}"
    return f"{ms}ms"
