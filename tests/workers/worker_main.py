"""A worker in a process of its own, for the SIGKILL / SIGTERM / group tests.

    python -m tests.workers.worker_main --topic T --project P --group G --schema S \\
        --bootstrap HOST:PORT --redis redis://... --postgres postgresql://... \\
        [--batch-size N] [--exit-after-idle SECONDS] [--dead-letter-topic D] \\
        [--throttle-ms MS] [--commit-chunk N] [--crash-at POINT --crash-after-batches K [--crash-signal STOP]]

Builds the same Worker as ``tests.workers.support.build_worker`` (``make_view(topic)``),
installs the SIGTERM/SIGINT handlers, runs, and prints ``{"records_done": n, "dead_letters":
{reason: n}, "fenced": n}`` on stdout
when it exits (by a signal, or after ``--exit-after-idle`` seconds without new records).

Test-only knobs: ``--throttle-ms`` sleeps after each micro-batch (keeps a stream going
long enough to hit it mid-way); ``--crash-at`` SIGKILLs the process itself at a precise
point of the ``--crash-after-batches``-th batch that has something to commit:
``before_redis_commit`` (event log and dead letters written, Redis not),
``between_redis_chunks`` (the first chunks of states written, the last chunk and the
offsets not: needs a batch of more than ``--commit-chunk`` states) or
``before_kafka_commit`` (Redis committed, Kafka not).  With ``--crash-signal STOP`` the
process SIGSTOPs itself there instead, once (heartbeats stop too, so the group takes its
partitions after the session timeout), and goes on from that point when sent SIGCONT.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from types import SimpleNamespace

from tests.workers.support import build_worker, make_view

CRASH_POINTS = ("before_redis_commit", "between_redis_chunks", "before_kafka_commit")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.workers.worker_main")
    p.add_argument("--topic", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--postgres", required=True)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--exit-after-idle", type=float, default=None,
                   help="exit (code 0) once assigned partitions and this many seconds passed without "
                        "a new committed record")
    p.add_argument("--dead-letter-topic", default=None)
    p.add_argument("--throttle-ms", type=float, default=0.0)
    p.add_argument("--commit-chunk", type=int, default=None, help="WorkerConfig.commit_chunk (default: its default)")
    p.add_argument("--crash-at", choices=CRASH_POINTS, default=None)
    p.add_argument("--crash-after-batches", type=int, default=1)
    p.add_argument("--crash-signal", choices=("KILL", "STOP"), default="KILL")
    return p.parse_args(argv)


def _signal_self(sig: str) -> None:
    sys.stderr.write(f"worker_main: crashing on purpose (SIG{sig})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL if sig == "KILL" else signal.SIGSTOP)
    sys.stderr.write("worker_main: continued (SIGCONT)\n")
    sys.stderr.flush()


def _install_crash(worker, point: str, after: int, sig: str = "KILL") -> None:
    """SIGKILL (or SIGSTOP, once) the process at ``point`` of the ``after``-th commit attempt."""
    seen = {"n": 0}

    def crash() -> None:
        if seen["n"] == after or (sig == "KILL" and seen["n"] > after):
            _signal_self(sig)

    if point == "before_redis_commit":
        commit = worker.online.commit

        def crashing_commit(records, group, offsets, epoch=None, chunk=None, token=None):
            seen["n"] += 1
            crash()
            return commit(records, group, offsets, epoch, chunk, token)

        worker.online.commit = crashing_commit
    elif point == "between_redis_chunks":
        part = worker.online._commit_part
        written = {"chunks": 0}

        def crashing_part(records, group, offsets, epoch, advance, token=None, slot_group=None):
            if not advance:
                written["chunks"] += 1
            elif written["chunks"]:  # the last chunk of a commit that already wrote others
                written["chunks"] = 0
                seen["n"] += 1
                crash()
            return part(records, group, offsets, epoch, advance, token, slot_group)

        worker.online._commit_part = crashing_part
    elif point == "before_kafka_commit":
        commit_kafka = worker._commit_kafka

        def crashing_commit_kafka(advance):
            seen["n"] += 1
            crash()
            return commit_kafka(advance)

        worker._commit_kafka = crashing_commit_kafka


def install_throttle(worker, seconds: float) -> None:
    """Sleep ``seconds`` after each micro-batch (test-only: keeps a short stream going)."""
    process = worker.process

    def throttled(batch):
        process(batch)
        time.sleep(seconds)

    worker.process = throttled


def main(argv=None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to the log
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    servers = SimpleNamespace(kafka_bootstrap=args.bootstrap, redis_url=args.redis, postgres_dsn=args.postgres)
    config = {"batch_size": args.batch_size}
    if args.commit_chunk is not None:
        config["commit_chunk"] = args.commit_chunk
    if args.dead_letter_topic:
        config["dead_letter_topic"] = args.dead_letter_topic
    worker = build_worker(servers, make_view(args.topic), args.project, args.group, args.schema, **config)
    worker.install_signal_handlers()
    if args.throttle_ms > 0:
        install_throttle(worker, args.throttle_ms / 1000)
    if args.crash_at:
        _install_crash(worker, args.crash_at, args.crash_after_batches, args.crash_signal)

    until = None
    if args.exit_after_idle is not None:
        last = {"done": -1, "at": time.monotonic()}

        def until(w):
            # Idle time counts from the first assignment (joining the group takes a while).
            now = time.monotonic()
            if w.records_done != last["done"] or not w.consumer.assignment():
                last["done"], last["at"] = w.records_done, now
            return now - last["at"] >= args.exit_after_idle

    sys.stderr.write(f"worker_main: pid {os.getpid()} running\n")
    sys.stderr.flush()
    code = worker.run(until=until)
    letters = {s.labels["reason"]: int(s.value) for m in worker.metrics.dead_letters.collect()
               for s in m.samples if s.name.endswith("_total") and s.value}
    print(json.dumps({"records_done": worker.records_done, "dead_letters": letters,
                      "fenced": int(worker.metrics.fenced._value.get())}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
