"""The bearer token guards every endpoint but the probes, TLS comes from the certificate options, no
secret reaches a log or ``/registry``, the server binds loopback unless told otherwise, and several
worker processes add their metrics up."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess

import httpx
import pytest

from featurestore.cli import build_parser
from tests.server.conftest import start_server

pytestmark = pytest.mark.integration

TOKEN = "t0ken-of-the-feature-server"
GUARDED = [("GET", "/registry"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"),
           ("POST", "/get-online-features"), ("POST", "/push"), ("POST", "/materialize")]
READ = {"features": ["customer_stats:total_spend"], "entities": {"customer_id": ["C1"]}}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl): (certificate file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def guarded(project, serve, certificate):
    """A server with a token, over TLS, read-only, logging everything (DEBUG and one line per request)."""
    cert, key = certificate
    env = {**project.env, "FEATURESTORE_SERVER_TOKEN": TOKEN}
    return serve(env, "--ssl-certfile", cert, "--ssl-keyfile", key, "--read-only", "--log-level", "DEBUG",
                 "--access-log", scheme="https", verify=ssl.create_default_context(cafile=cert))


@pytest.mark.parametrize("method, path", GUARDED)
def test_every_endpoint_but_the_probes_needs_the_token(guarded, method, path) -> None:
    body = READ if method == "POST" else None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = guarded.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = guarded.client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == (403 if path in ("/push", "/materialize") else 200), response.text


def test_the_probes_answer_without_the_token(guarded) -> None:
    assert guarded.client.get("/healthz").json() == guarded.client.get("/health").json() == {"status": "ok"}
    ready = guarded.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["views"] == {"customer_stats": 1, "transaction_stats": 1}


def test_tls_serves_https_only(guarded) -> None:
    assert guarded.url.startswith("https://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(guarded.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_no_secret_in_the_registry_or_the_logs(guarded, project) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    registry = guarded.client.get("/registry", headers=auth)
    doc = registry.json()
    assert {v["name"]: (v["served_version"], v["registered_versions"]) for v in doc["feature_views"]} == {
        "customer_stats": (1, [1]), "transaction_stats": (1, [1])}
    assert {"entities", "sources", "on_demand_feature_views", "feature_services"} <= set(doc)
    assert doc["project"] == project.name
    text = registry.text
    assert TOKEN not in text and project.env["FEATURESTORE_REDIS_URL"] not in text
    assert project.env["FEATURESTORE_POSTGRES_DSN"] not in text
    guarded.client.get("/registry", headers={"Authorization": f"Bearer {TOKEN}x"})  # a wrong token, logged as 401
    log = guarded.log_text()
    assert '"GET /registry HTTP/1.1" 401' in log and TOKEN not in log


def test_loopback_unless_told_otherwise(server) -> None:
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: it picks the address of the outward interface
        address = probe.getsockname()[0]
    except OSError:
        address = None
    finally:
        probe.close()
    if address and not address.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=2).close()
    assert server.client.get("/healthz").status_code == 200


def test_several_workers_add_their_metrics_up(project, tmp_path) -> None:
    served = start_server(project.env, tmp_path / "workers.log", "--workers", "2")
    try:
        for _ in range(30):  # new connections: spread over both processes
            assert httpx.post(served.url + "/get-online-features", json=READ).status_code == 200
        text = served.client.get("/metrics").text
        total = re.search(r'^featurestore_server_requests_total\{code="200",endpoint="/get-online-features",'
                          r'service="-"\} (\S+)$', text, re.MULTILINE)
        assert total is not None and float(total.group(1)) == 30, text[:2000]
    finally:
        served.stop()
