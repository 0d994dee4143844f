"""Graceful shutdown on SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import time

import pytest

from mqtt_util import V5, V311


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_tells_v5_clients(broker, clients, sig):
    """MQTT 5.0 clients get DISCONNECT 0x8B (Server shutting down); 3.1.1 clients are closed;
    the process exits 0."""
    c5 = clients(broker.port, version=V5).connect()
    c5b = clients(broker.port, version=V5).connect(clean_start=False, session_expiry=60)
    c3 = clients(broker.port, version=V311).connect()
    c5.subscribe("shut/#", 1)

    started = time.monotonic()
    broker.signal(sig)
    for c in (c5, c5b):
        d = c.wait_disconnected(timeout=5)
        assert d.from_server, f"{c.client_id}: connection closed without a DISCONNECT packet"
        assert d.reason == 0x8B, f"{c.client_id}: DISCONNECT reason {d.reason:#x} ({d.reason_name})"
        assert d.reason_name == "Server shutting down"
    d3 = c3.wait_disconnected(timeout=5)
    assert not d3.from_server
    status = broker.wait(timeout=8)
    assert status == 0, f"broker exited with {status}"
    assert time.monotonic() - started < 5, "shutdown took too long"


def test_shutdown_without_clients_is_quick(broker):
    started = time.monotonic()
    broker.signal(signal.SIGTERM)
    assert broker.wait(timeout=5) == 0
    assert time.monotonic() - started < 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(port: int, method: str, path: str, token: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {token}"},
        data=b"" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_drain_asked_to_stay_keeps_the_process_up_until_sigterm(broker_factory, clients, tmp_path):
    """What the operator does before removing a broker: `POST /admin/drain?stay=true` sends the
    clients away and the process stays up, empty and unready, so the kubelet does not restart
    it and take clients again; SIGTERM then ends it at once."""
    import json

    token = "operator-token-0123456789"
    (tmp_path / "token").write_text(token)
    admin = _free_port()
    broker = broker_factory(
        "--metrics-listen", f"127.0.0.1:{admin}", "--admin-token-file", str(tmp_path / "token")
    )
    c = clients(broker.port, version=V5).connect()
    status, body = _admin(admin, "POST", "/admin/drain?stay=true", token)
    assert status == 202, body
    d = c.wait_disconnected(timeout=10)
    assert d.from_server and d.reason in (0x8B, 0x9C), d.reason_name
    deadline = time.monotonic() + 10
    while True:
        status, body = _admin(admin, "GET", "/admin/status", token)
        st = json.loads(body)
        if st["connections"] == 0 and st["draining"]:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    # Drained, and still running.
    time.sleep(2)
    assert broker.proc.poll() is None, "the broker exited although asked to stay"
    assert st["ready"] is False
    started = time.monotonic()
    broker.signal(signal.SIGTERM)
    assert broker.wait(timeout=5) == 0
    assert time.monotonic() - started < 3
