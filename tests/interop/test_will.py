"""Will messages: published on abnormal close and keep-alive expiry, not on a normal DISCONNECT;
MQTT 5.0 Will Delay Interval, DISCONNECT 0x04 and will properties."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_util import (
    V5,
    V311,
    VERSION_IDS,
    VERSIONS,
    RawClient,
    connect_packet,
    props,
    unique_id,
)


def watcher(clients, broker, version, topic="will/#"):
    w = clients(broker.port, version=version).connect()
    w.subscribe(topic, 2)
    return w


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_will_on_abnormal_close(broker, clients, version, qos):
    w = watcher(clients, broker, version)
    c = clients(broker.port, version=version)
    c.will_set("will/dead", b"client died", qos=qos, retain=False)
    c.connect()
    c.drop()
    m = w.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/dead", b"client died", qos, False)
    w.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_will_retained(broker, clients, version):
    w = watcher(clients, broker, version, "will/status")
    c = clients(broker.port, version=version)
    c.will_set("will/status", b"offline", qos=1, retain=True)
    c.connect()
    c.drop()
    m = w.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/status", b"offline", 1, False)
    # A subscriber arriving later finds the will as the retained message.
    late = clients(broker.port, version=version).connect()
    late.subscribe("will/status", 1)
    m = late.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/status", b"offline", 1, True)
    late.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_no_will_on_normal_disconnect(broker, clients, version):
    w = watcher(clients, broker, version)
    c = clients(broker.port, version=version)
    c.will_set("will/normal", b"should not appear", qos=1)
    c.connect()
    c.disconnect()
    marker = clients(broker.port, version=version).connect()
    marker.publish("will/marker", b"m", qos=1)
    m = w.expect()
    assert (m.topic, m.payload) == ("will/marker", b"m"), f"will sent after DISCONNECT: {m}"
    w.expect_none()


def test_will_on_keepalive_expiry(broker, clients):
    """Clients with Keep Alive 1 s that go silent (socket left open) are closed after at most
    1.5 s and their wills are published. A 3.1.1 and a 5.0 client, side by side."""
    w = watcher(clients, broker, V5)
    raws = {}
    try:
        for version in VERSIONS:
            raw = RawClient(broker.port)
            raws[version] = raw
            raw.send(
                connect_packet(
                    unique_id("ka"),
                    version=version,
                    keepalive=1,
                    will=(f"will/keepalive/{version}", b"timed out", 1, False),
                )
            )
            pkt = raw.read_packet()
            assert pkt is not None and pkt[0] == 2, f"expected CONNACK, got {pkt}"
            assert pkt[2][1] == 0, f"CONNACK {pkt}"
        start = time.monotonic()
        got = w.expect_n(2, timeout=4)
        assert sorted((m.topic, m.payload, m.qos) for m in got) == [
            ("will/keepalive/4", b"timed out", 1),
            ("will/keepalive/5", b"timed out", 1),
        ]
        for m in got:
            elapsed = m.at - start
            assert 0.9 <= elapsed <= 3.0, f"{m.topic} published {elapsed:.2f}s after CONNACK"
        # 5.0: the broker may say why (DISCONNECT 0x8D Keep Alive timeout) before closing.
        pkt = raws[V5].read_packet(timeout=2)
        if pkt is not None:
            assert pkt[0] == 14, f"expected DISCONNECT or close, got packet type {pkt[0]}"
            assert pkt[2][:1] == b"\x8d", f"DISCONNECT reason {pkt[2][:1].hex()}"
            assert raws[V5].read_packet(timeout=2) is None
        assert raws[V311].read_packet(timeout=2) is None
    finally:
        for raw in raws.values():
            raw.close()


def test_keepalive_respected_when_pinging(broker, clients):
    """A client that does send PINGREQs inside its keep alive stays connected (no will)."""
    w = watcher(clients, broker, V311)
    c = clients(broker.port, version=V311, keepalive=1)
    c.will_set("will/pinger", b"should not appear", qos=1)
    c.connect()
    w.expect_none(1.6)
    assert not c.disconnected.is_set()


# -- MQTT 5.0 ---------------------------------------------------------------------------------


def test_v5_disconnect_with_will_message(broker, clients):
    """DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will."""
    w = watcher(clients, broker, V5)
    c = clients(broker.port, version=V5)
    c.will_set("will/v5", b"bye with will", qos=1)
    c.connect()
    c.disconnect(reason=0x04)
    m = w.expect()
    assert (m.topic, m.payload, m.qos) == ("will/v5", b"bye with will", 1)


def test_v5_will_delay_interval(broker, clients):
    w = watcher(clients, broker, V5)
    c = clients(broker.port, version=V5)
    c.will_set(
        "will/delayed",
        b"late",
        qos=1,
        properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1),
    )
    c.connect(session_expiry=60)
    c.drop()
    dropped = time.monotonic()
    w.expect_none(0.6)
    m = w.expect(timeout=4)
    assert (m.topic, m.payload) == ("will/delayed", b"late")
    elapsed = m.at - dropped
    assert 0.9 <= elapsed <= 3.0, f"delayed will published after {elapsed:.2f}s, expected ~1s"


def test_v5_will_delay_cancelled_by_reconnect(broker, clients):
    """Reconnecting to the session before the Will Delay Interval passes: no will."""
    w = watcher(clients, broker, V5)
    cid = unique_id("delay")
    c = clients(broker.port, cid, V5)
    c.will_set(
        "will/cancelled",
        b"should not appear",
        qos=1,
        properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1),
    )
    c.connect(session_expiry=60)
    c.drop()
    again = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    assert again.session_present is True
    w.expect_none(1.6)


def test_v5_will_delay_capped_by_session_end(broker, clients):
    """The will is published when the session ends, even if the delay is longer: with Session
    Expiry 0 the session ends at the close, so the will goes at once."""
    w = watcher(clients, broker, V5)
    c = clients(broker.port, version=V5)
    c.will_set(
        "will/session-end",
        b"now",
        qos=1,
        properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=30),
    )
    c.connect(session_expiry=0)
    c.drop()
    dropped = time.monotonic()
    m = w.expect(timeout=2)
    assert (m.topic, m.payload) == ("will/session-end", b"now")
    assert m.at - dropped < 1.0


def test_v5_will_properties_forwarded(broker, clients):
    w = watcher(clients, broker, V5)
    c = clients(broker.port, version=V5)
    c.will_set(
        "will/props",
        b'{"state":"dead"}',
        qos=1,
        properties=props(
            PacketTypes.WILLMESSAGE,
            ContentType="application/json",
            PayloadFormatIndicator=1,
            ResponseTopic="will/reply",
            CorrelationData=b"\x00\x01corr",
            UserProperty=[("site", "lab"), ("site", "rack-2")],
            MessageExpiryInterval=120,
        ),
    )
    c.connect()
    c.drop()
    m = w.expect()
    assert m.payload == b'{"state":"dead"}'
    p = m.props
    assert p.get("ContentType") == "application/json"
    assert p.get("PayloadFormatIndicator") == 1
    assert p.get("ResponseTopic") == "will/reply"
    assert p.get("CorrelationData") == b"\x00\x01corr"
    assert p.get("UserProperty") == [("site", "lab"), ("site", "rack-2")]
    assert 118 <= p.get("MessageExpiryInterval", -1) <= 120


def test_v311_will_to_v5_subscriber(broker, clients):
    w = watcher(clients, broker, V5)
    c = clients(broker.port, version=V311)
    c.will_set("will/cross", b"3 to 5", qos=2)
    c.connect()
    c.drop()
    m = w.expect()
    assert (m.topic, m.payload, m.qos) == ("will/cross", b"3 to 5", 2)
