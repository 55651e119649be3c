"""The README's feature server lines, word for word: its curl line answers on the embedded stack."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.server.conftest import ROOT

pytestmark = pytest.mark.integration


def readme_block() -> list[str]:
    """The command lines of the README's "Feature server" bash block (continuations joined)."""
    section = (ROOT / "README.md").read_text().split("## Feature server", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_curl_line_answers(server) -> None:
    serve_line, curl_line = readme_block()
    assert serve_line.startswith("featurestore serve --repo examples/repo.py")
    assert "http://127.0.0.1:6566/" in curl_line
    command = curl_line.replace("127.0.0.1:6566", f"127.0.0.1:{server.port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(done.stdout)
    names = answer["metadata"]["feature_names"]
    assert names[0] == "customer_id" and "purchase_frequency_score" in names
    assert len(answer["results"]) == len(names)
    assert all(re.fullmatch(r"[A-Z_]+", s) for r in answer["results"] for s in r["statuses"])
