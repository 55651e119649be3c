"""``featurestore stats --check`` and ``--every`` against the embedded stack (the package's repository: view
``spend`` has a failing expectation, ``activity`` none), and the schedule's loop logic.  This module adds
statistics runs, so it sorts after the modules that count them."""

from __future__ import annotations

import asyncio
import re

import pytest

from featurestore.cli import main
from featurestore.console.schedule import FAILED_RUN, repeat
from featurestore.exceptions import FeatureStoreError
from tests.console.conftest import MAX_AMOUNT, N_EVENTS, T0, max_amounts


@pytest.fixture
def stats(stack, monkeypatch, capsys):
    """``featurestore stats ... --repo`` in this process on the stack's servers: (exit code, stdout, stderr)."""
    for key, value in {"FEATURESTORE_PROJECT": stack.project, "FEATURESTORE_REDIS_URL": stack.servers.redis_url,
                       "FEATURESTORE_POSTGRES_DSN": stack.servers.postgres_dsn,
                       "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": stack.servers.kafka_bootstrap}.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["stats", *args, "--repo", str(stack.repo_path)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.integration
def test_check_exits_non_zero_naming_each_failed_check(stats):
    at = str(T0 + N_EVENTS * 60_000)
    over = sorted(k for k, v in max_amounts(T0 + N_EVENTS * 60_000).items() if v > MAX_AMOUNT)
    code, out, err = stats("--view", "spend", "--at", at, "--check")
    assert code == 1, err
    assert "1 of 3 checks failed on view spend" in err
    assert (f"view spend: check 'max_7d in [1, {MAX_AMOUNT}]' (feature max_7d, declared by view spend): "
            f"{len(over)} of 25 rows failed, e.g. {', '.join(over[:5])}") in err
    assert "checks: 2 of 3 passed" in out and re.search(r"FAIL max_7d in \[1, 390\] +8 of 25 rows failed", out)
    code, out, err = stats("--view", "spend", "--at", at)  # without --check: reported, exit 0
    assert code == 0 and "FAIL max_7d" in out and err == ""
    code, out, err = stats("--view", "activity", "--at", at, "--check")
    assert code == 0 and "checks: 1 of 1 passed" in out and err == ""
    code, out, err = stats("--view", "activity", "--view", "spend", "--at", at, "--check")  # the worst of both
    assert code == 1 and "on view spend" in err and "on view activity" not in err


@pytest.mark.integration
def test_every_runs_on_a_schedule(stats):
    code, out, err = stats("--view", "activity", "--every", "50ms", "--runs", "2", "--check")
    assert code == 0, err
    runs = [int(n) for n in re.findall(r"^run (\d+): view activity", out, re.M)]
    assert len(runs) == 2 and runs[1] == runs[0] + 1, out


@pytest.mark.integration
@pytest.mark.parametrize("args,message", [
    (("--every", "soon"), "--every 'soon': not a duration"),
    (("--every", "1h", "--at", "2026-12-01T00:00:00Z"), "--at with --every"),
    (("--runs", "2",), "--runs: only with --every"),
    (("--every", "1h", "--runs", "0"), "--runs 0: at least 1"),
    (("--view", "spend", "--reference", "1"), "--reference with several --view"),
])
def test_bad_schedule_options_are_explained(stats, args, message):
    code, _, err = stats("--view", "activity", *args)
    assert code == 2 and message in err, err


def test_repeat_runs_at_a_fixed_rate_and_survives_a_failed_run():
    """A fake clock: run 1 takes 2.5 intervals, so the starts at 1 and 2 are skipped and run 2 starts at 3."""
    now = [0.0]
    starts: list[float] = []
    durations = iter([2.5, 0.2, 0.1])

    async def action() -> int:
        starts.append(now[0])
        now[0] += next(durations)
        if len(starts) == 2:
            raise FeatureStoreError("postgres is down")
        return 1 if len(starts) == 3 else 0

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    assert asyncio.run(repeat(action, 1.0, runs=3, clock=lambda: now[0], sleep=sleep)) == FAILED_RUN
    assert starts == [0.0, 3.0, 4.0]


def test_repeat_with_a_real_tiny_interval_runs_twice():
    calls: list[int] = []

    async def action() -> int:
        calls.append(1)
        return 0

    assert asyncio.run(repeat(action, 0.01, runs=2)) == 0 and len(calls) == 2
    with pytest.raises(ValueError, match="interval must be positive"):
        asyncio.run(repeat(action, 0, runs=1))
