"""A polled batch split into what the worker applies and what it refuses.

``decode_batch`` decodes and validates each new record (``workers.decode``): the valid events
go to their source's ``Pending`` with where they came from, the bad records become dead
letters, and each partition's highest new offset is what a commit of the batch advances to.
Records at or below a partition's applied offset are skipped (a batch split by poison
isolation, or a replay after a crash); records already found to raise when processed alone
(``poison``) are dead-lettered as ``processing_error`` without being decoded again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from featurestore.definitions import EventSource
from featurestore.schema import validator_for

from .dead_letters import DeadLetter
from .decode import decode_record
from .partitions import partition_name

__all__ = ["DecodedBatch", "Pending", "decode_batch"]


@dataclass
class Pending:
    """Valid events of one source in a batch, with where they came from."""

    events: list = field(default_factory=list)
    where: list = field(default_factory=list)  # (partition, offset, raw record)


@dataclass
class DecodedBatch:
    """What ``decode_batch`` makes of a polled batch."""

    pending: dict[str, Pending]  # source name -> its valid events
    dead: list[DeadLetter]  # records refused before any state saw them
    advance: dict[str, int]  # partition name -> the highest new offset in the batch
    n_new: int  # records not applied before (valid or not)


def decode_batch(batch: dict, sources: dict[str, EventSource], applied: dict[str, int],
                 poison: dict[tuple[str, int, int], str], on_rewind: Callable[[object, int, int], None],
                 now_ms: int) -> DecodedBatch:
    """Decode ``batch`` (topic-partition -> records) of topics ``sources``; ``applied`` holds each
    partition's last applied offset.  A partition whose first record is at or below it while no
    record is being isolated calls ``on_rewind(tp, offset, applied)`` and is skipped whole."""
    pending: dict[str, Pending] = defaultdict(Pending)
    dead: list[DeadLetter] = []
    advance: dict[str, int] = {}
    n_new = 0
    for tp, records in batch.items():
        name = partition_name(tp)
        done = applied.get(name, -1)
        source = sources[tp.topic]
        validate = validator_for(source)
        if records and records[0].offset <= done and not poison:
            on_rewind(tp, records[0].offset, done)
            continue
        for rec in records:
            if rec.offset <= done:
                continue  # already applied (a batch split by poison isolation)
            advance[name] = rec.offset
            n_new += 1
            if poison and (tp.topic, tp.partition, rec.offset) in poison:
                dead.append(DeadLetter(rec, "processing_error", poison[(tp.topic, tp.partition, rec.offset)]))
                continue
            result = decode_record(rec, source.max_message_bytes, validate, now_ms)
            if type(result) is DeadLetter:
                dead.append(result)
                continue
            p = pending[source.name]
            p.events.append(result)
            p.where.append((tp.partition, rec.offset, rec))
    return DecodedBatch(pending, dead, advance, n_new)
