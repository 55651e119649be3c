"""A newcomer's first steps, word for word from the README: the quick start's demo, then the manual
flow parsed out of the README's "by hand" block, on a fresh state folder with the embedded stack.

Also: every command-line option has help text."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from featurestore.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def manual_flow() -> list[str]:
    """The commands of the README block that follows the sentence introducing the manual flow."""
    text = README.read_text()
    start = text.index("The same by hand, after the demo")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def run(command: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "featurestore":  # the venv's entry point, as `source .venv/bin/activate` gives it
        args[0] = str(Path(os.sys.executable).parent / "featurestore")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
@pytest.mark.slow
def test_readme_quick_start_then_the_manual_flow_applies_every_new_event(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")}
    env["FEATURESTORE_STATE_DIR"] = str(tmp_path / "state")
    demo = run("./dev demo", env, timeout=600)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "6/6 point-in-time training frame" in demo.stdout
    assert "using the embedded stack" in demo.stderr  # nothing starts without saying so
    assert "Change(" not in demo.stdout and "null" not in demo.stdout
    assert "2 h after it" in demo.stdout  # the training frame says why it asks for a time after the run

    outputs = {}
    flow = manual_flow()
    assert flow[0] == "source .venv/bin/activate" and flow[-1] == "featurestore dev down"
    try:
        for command in flow[1:-1]:
            done = run(command, env)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
            outputs[command.split()[1]] = done
        nobody = run("featurestore get --entity customer_id=NOBODY --service fraud_detection", env)
        assert nobody.returncode == 0 and "no data for entity customer_id=NOBODY" in nobody.stderr, nobody.stderr
        down = run(flow[-1], env)
        assert down.returncode == 0 and "removed the Redis and PostgreSQL data" in down.stdout, down.stdout
    finally:
        run("featurestore dev down", env)
    produced = json.loads(outputs["produce"].stdout.strip().splitlines()[-1])
    worked = json.loads(outputs["worker"].stdout.strip().splitlines()[-1])
    assert produced["events"] == 2000
    assert worked["records"] == 2000  # every new event applied: none skipped as "already applied"
    got = json.loads(outputs["get"].stdout)
    assert got["max_amount_7d"]["status"] == "present" and got["max_amount_7d"]["value"] > 0
    assert got["high_value_customer"]["status"] == "present"
    assert "no data for entity" not in outputs["get"].stderr


def _options(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_cli_option_has_help_text():
    lacking = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in _options(build_parser(), "featurestore")
               if not a.help or a.help == argparse.SUPPRESS]
    assert lacking == []


@pytest.mark.integration
def test_a_library_call_that_starts_the_embedded_stack_says_so(tmp_path, caplog):
    """``FeatureStore.connect()`` with no server configured starts the embedded stack with a WARNING naming
    the variables to set; ``embedded=True`` asks for it and logs at INFO instead."""
    import logging

    from featurestore import FeatureStore
    from featurestore.dev.stack import EmbeddedStack
    from featurestore.settings import Settings

    settings = Settings(_env_file=None, state_dir=tmp_path / "state", kafka_bootstrap_servers=None,
                        redis_url=None, postgres_dsn=None)
    try:
        with caplog.at_level(logging.INFO, logger="featurestore"):
            FeatureStore.connect(settings=settings).close()
            warned = [r for r in caplog.records if r.levelno == logging.WARNING and "embedded stack" in r.getMessage()]
            assert warned and "FEATURESTORE_POSTGRES_DSN" in warned[0].getMessage()
            caplog.clear()
            FeatureStore.connect(settings=settings, embedded=True).close()
            said = [r for r in caplog.records if "embedded stack" in r.getMessage()]
            assert said and all(r.levelno == logging.INFO for r in said)
    finally:
        EmbeddedStack(tmp_path / "state").down()
