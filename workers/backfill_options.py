"""What a backfill takes and gives: ``BackfillOptions``, ``BackfillReport``, ``BackfillError``,
and the identity of a run (``run_fingerprint``) under which its progress is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.definitions import FileHistory
from featurestore.exceptions import BackfillError

from featurestore.processing import PreparedView

if TYPE_CHECKING:
    from featurestore.offline import OfflineStore

__all__ = ["BackfillError", "BackfillOptions", "BackfillReport", "run_fingerprint"]

SOURCES = ("files", "postgres", "kafka")
CHUNK_EVENTS = 400_000  # target events per chunk when the number of chunks is automatic
READ_ROWS = 200_000  # rows per read batch
ONLINE_BATCH = 2000  # states per Redis commit
SAMPLE_REJECTS = 50  # rejects kept in memory for the report (all go to the rejects table)


@dataclass
class BackfillOptions:
    source: str = "files"
    start_ms: int | None = None
    end_ms: int | None = None
    shards: int = 1
    shard: int = 0
    online: bool = False
    group: str | None = None  # worker group whose offsets the hand-off writes (kafka/postgres + online)
    strict: bool = False
    chunks: int | None = None  # chunks per shard (None: about CHUNK_EVENTS events each)
    restart: bool = False  # forget the progress of this run and start again
    progress: bool = False  # tqdm progress bars on stderr
    spill_dir: str | None = None
    write: bool = True  # False: read and compute only (benchmarks)
    read_rows: int = READ_ROWS
    kafka_options: dict = field(default_factory=dict)
    idle_timeout_s: float = 10.0  # kafka: stop reading a partition after this long without records


@dataclass
class BackfillReport:
    """What a backfill read, wrote and refused."""

    run: str = ""
    events_read: int = 0
    rows_written: int = 0
    rows_changed: int = 0
    events_logged: int = 0
    entities_online: int = 0
    chunks: int = 0
    chunks_skipped: int = 0
    rejected: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    rejects: list = field(default_factory=list)  # a sample, with locations
    cutover: dict = field(default_factory=dict)  # "topic:partition" -> last offset covered
    offsets_committed: bool = False
    already_complete: bool = False
    seconds: float = 0.0
    phases: dict = field(default_factory=lambda: {"read_s": 0.0, "compute_s": 0.0, "encode_s": 0.0, "write_s": 0.0})

    def reject(self, location: str, reason: str, detail) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if len(self.rejects) < SAMPLE_REJECTS:
            self.rejects.append({"location": location, "reason": reason, "detail": detail})

    def as_dict(self) -> dict:
        return {"run": self.run, "events_read": self.events_read, "rows_written": self.rows_written,
                "rows_changed": self.rows_changed, "events_logged": self.events_logged,
                "entities_online": self.entities_online, "chunks": self.chunks, "chunks_skipped": self.chunks_skipped,
                "rejected": self.rejected, "rejected_by_reason": self.rejected_by_reason,
                "cutover": self.cutover, "offsets_committed": self.offsets_committed,
                "already_complete": self.already_complete, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_read / self.seconds) if self.seconds and self.events_read else None,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}}


# -- run identity ---------------------------------------------------------------------------------

def run_fingerprint(pv: PreparedView, opts: BackfillOptions, offline: OfflineStore, group: str | None) -> str:
    """Identity of a rebuild: view definition and version, source (and file identity), range,
    shard count, online/group.  The shard index is not part of it: all shards of a rebuild
    share the run (and its cut-over); their chunks have distinct ids."""
    src = pv.view.source
    ident = {"view": pv.view.name, "fingerprint": pv.view.fingerprint(), "version": pv.version, "source": opts.source,
             "start": opts.start_ms, "end": opts.end_ms, "shards": opts.shards, "chunks": opts.chunks,
             "online": opts.online, "group": group if opts.online else None}
    if opts.source == "files" and isinstance(src.history, FileHistory) and Path(src.history.path).exists():
        st = os.stat(src.history.path)
        ident["file"] = [str(Path(src.history.path).resolve()), st.st_size, st.st_mtime_ns]
    elif opts.source == "postgres":
        ident["table"] = offline.events_table(src.name)
    elif opts.source == "kafka":
        ident["topic"] = src.topic
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
