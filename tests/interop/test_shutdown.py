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
