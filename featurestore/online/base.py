"""The online store contract shared by the worker, the backfill and the client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs more, paid per state and batch
class OnlineRecord:
    """What the online store keeps for one (view version, entity).

    ``state`` is ``ViewState.to_bytes()``; ``values`` the encoded feature values
    as of ``watermark`` (the entity's latest event time), exact for any request
    time before ``valid_until`` (when the oldest non-empty tile leaves a
    window); past it the reader re-evaluates ``state``.
    """

    view_key: str  # project, view name and version, e.g. "default:customer_stats:v2"
    key: str
    state: bytes
    values: bytes
    watermark: int
    valid_until: int | None
    ttl_ms: int | None
    #: offsets of the events applied to ``state``, ``b"partition:offset,..."`` (the highest per
    #: partition of the source's topic); b"" when the writer does not track them.  A worker that
    #: replays a batch skips, per state, what is at or below them (commits may be chunked).
    applied: bytes = b""
    #: the state's event ids (``ViewState.to_parts``), kept beside ``state`` so that online reads,
    #: which never need them, do not fetch them: the stored pairs to replace (b"" when none, or when
    #: ``state`` holds them), or ``b"&"`` and the pairs to append to them (``transforms.engine.codec.append_ids``)
    ids: bytes = b""
    #: the ``applied`` the writer last saw stored for this (view, entity) (b"": none, or no state): the commit
    #: writes nothing when the stored one differs — another writer changed the state since this one loaded
    #: it (events of one entity on several partitions, read by several workers).  None: not checked.
    expected: bytes | None = None


class OnlineStore(Protocol):
    """Backends implement these; ``commit`` is atomic and fenced by offsets."""

    def commit(self, records: list[OnlineRecord], group: str | None,
               offsets: dict[str, tuple[int, int]], epoch: str | None = None, chunk: int | None = None,
               token: str | None = None) -> int: ...

    def claim_partitions(self, group: str, names: list[str], token: str) -> None: ...

    def load_states(self, view_key: str, keys: list[str]) -> dict[str, bytes | None]: ...

    def load_states_applied(self, view_key: str, keys: list[str]) -> dict[str, tuple[bytes | None, bytes, bytes]]: ...

    def load_offsets(self, group: str) -> dict[str, int]: ...

    def read_values(self, items: list[tuple[str, str]]) -> list[tuple[bytes | None, int | None, int | None]]: ...

    def load_state(self, view_key: str, key: str) -> bytes | None: ...
