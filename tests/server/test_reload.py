"""A running server serves what ``featurestore apply`` changed, without a restart: it polls the
registry and reloads its repository's files when they change."""

from __future__ import annotations

import shutil

import pytest

from tests.support import apply_repo

from .conftest import EXAMPLE, wait_for

pytestmark = pytest.mark.integration

NEW_VIEW = '''

spend_copy = FeatureView(name="spend_copy", entity=customer, source=transactions, ttl="90d",
                         features=[Aggregate(name="spend_2h", column="amount", function="sum", window="2h")])
'''
READ = {"features": ["spend_copy:spend_2h", "customer_stats:total_spend"], "entities": {"customer_id": ["C1"]}}


def served_version(served, view: str):
    views = {v["name"]: v for v in served.client.get("/registry").json()["feature_views"]}
    return views[view]["served_version"] if view in views else None


def test_an_apply_is_served_without_a_restart(servers, project, serve, tmp_path) -> None:
    repo = tmp_path / "repo.py"
    shutil.copy(EXAMPLE, repo)
    served = serve(project.env, "--repo", str(repo), "--registry-poll-seconds", "0.2", "--log-level", "INFO")
    refused = served.client.post("/get-online-features", json=READ)
    assert refused.status_code == 404 and "spend_copy" in refused.json()["error"]["message"]

    repo.write_text(repo.read_text() + "\nthis is not python\n")  # a file that does not load: served as before
    wait_for(lambda: "registry poll failed" in served.log_text())
    assert "registry poll failed" in served.log_text()
    known = {**READ, "features": READ["features"][1:]}
    assert served.client.post("/get-online-features", json=known).status_code == 200

    repo.write_text(EXAMPLE.read_text() + NEW_VIEW)  # defined, not applied yet: 404 names it as not applied
    wait_for(lambda: "spend_copy" in served.client.get("/registry").text)
    error = served.client.post("/get-online-features", json=READ).json()["error"]
    assert error["code"] == "unknown_name" and "not applied" in error["message"], error

    apply_repo(servers, project.name, repo)
    wait_for(lambda: served_version(served, "spend_copy") is not None)
    assert served_version(served, "spend_copy") == 1
    answer = served.client.post("/get-online-features", json=READ)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["metadata"]["feature_names"] == ["customer_id", "spend_2h", "total_spend"]
    assert body["results"][1]["statuses"] == ["NOT_FOUND"]
    assert "view spend_copy: serving v1 (was not applied)" in served.log_text()
