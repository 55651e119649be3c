"""The probe server: loopback only unless told to listen on every interface."""

from __future__ import annotations

import urllib.request

import pytest

from workers.metrics import ProbeServer, WorkerMetrics
from tests.support import refused

# Another loopback address: Linux routes all of 127.0.0.0/8 to the loopback interface, so a server
# bound to every interface answers on it and one bound to 127.0.0.1 does not.
OTHER_LOCAL = "127.0.0.2"


def _healthz(host: str, port: int) -> bytes:
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
        return resp.read()




@pytest.fixture
def probe_server():
    started: list[ProbeServer] = []

    def start(**kwargs) -> ProbeServer:
        server = ProbeServer(WorkerMetrics(), port=0, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_probes_listen_on_loopback_by_default(probe_server) -> None:
    server = probe_server()
    assert server.host == "127.0.0.1"
    assert server.server.socket.getsockname()[0] == "127.0.0.1"
    assert _healthz("127.0.0.1", server.port) == b"ok"
    assert refused(OTHER_LOCAL, server.port)


def test_probes_listen_on_every_interface_when_asked(probe_server) -> None:
    server = probe_server(host="0.0.0.0")
    assert server.server.socket.getsockname()[0] == "0.0.0.0"
    assert _healthz("127.0.0.1", server.port) == b"ok"
    assert _healthz(OTHER_LOCAL, server.port) == b"ok"
