"""Run the benchmarks one after another on one stack of servers; prints one JSON object.

    ./dev bench                     every benchmark at its documented size (about 13 minutes)
    ./dev bench online worker       only these
    ./dev bench --quick             tiny sizes: checks that each benchmark runs end to end and
                                    reports its goal; the figures mean nothing at these sizes

The servers are those of the ``FEATURESTORE_*`` settings, else an embedded stack started here (and
stopped at exit) and shared by every benchmark; each benchmark runs in its own process, so one's
memory and threads do not weigh on the next.  Exits 1 when a benchmark fails (its stderr is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``./dev bench``): the repository root holds ``bench``
    sys.path.insert(0, str(ROOT))

NAMES = ("transforms", "backfill", "historical", "online", "worker", "latency", "server", "stats")

#: arguments of ``--quick``: seconds per benchmark instead of minutes
QUICK = {
    "transforms": ["--events", "20000", "--entities", "500", "--streaming-events", "5000", "--hot-events", "20000"],
    "backfill": ["--events", "20000", "--entities", "500"],
    "historical": ["--events", "20000", "--labels", "5000", "--entities", "500"],
    "online": ["--reads", "300", "--entities", "50", "--ingest-batch", "500", "--warmup-seconds", "4",
               "--read-seconds", "1"],
    "worker": ["--events", "3000", "--customers", "200"],
    "stats": ["--entities", "2000"],
    "latency": ["--rates", "300", "--seconds", "2", "--customers", "100"],
    "server": ["--entities", "100", "--rate", "100", "--seconds", "1", "--rounds", "1", "--throughput-seconds", "1",
               "--step-seconds", "0.5", "--steps-1", "200", "--steps-100", "20"],
}


def server_env() -> dict[str, str]:
    """``FEATURESTORE_*`` variables naming the servers every benchmark uses."""
    from bench.servers import bench_settings

    s = bench_settings()  # an embedded stack when none is configured, stopped when this process exits
    return {"FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "FEATURESTORE_REDIS_URL": s.redis_url.get_secret_value(),
            "FEATURESTORE_POSTGRES_DSN": s.postgres_dsn.get_secret_value()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {', '.join(NAMES)})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke check, not a measurement)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(NAMES)})")
    env = {**os.environ, **server_env()}
    report: dict = {"quick": args.quick, "benchmarks": {}}
    failed = []
    for name in args.names or NAMES:
        command = [sys.executable, "-m", f"bench.bench_{name}", *(QUICK[name] if args.quick else [])]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = round(time.perf_counter() - started, 1)
        try:
            result = json.loads(done.stdout) if done.returncode == 0 else None
        except json.JSONDecodeError:
            result = None
        if result is None:
            failed.append(name)
            print(f"bench: {name} failed (exit {done.returncode}) after {seconds} s:\n{done.stderr[-4000:]}",
                  file=sys.stderr, flush=True)
            report["benchmarks"][name] = {"failed": True, "exit_code": done.returncode, "seconds": seconds}
            continue
        print(f"bench: {name} done in {seconds} s", file=sys.stderr, flush=True)
        report["benchmarks"][name] = {"seconds": seconds, "report": result}
    report["failed"] = failed
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
