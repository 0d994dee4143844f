"""Sessions: persistent sessions and offline queueing, session present, clean session / clean
start, MQTT 5.0 session expiry, client-id takeover, client identifier rules."""

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


def persistent(clients, port, cid, version, *, expiry=300, **kw):
    """A client that connects to a persistent session (3.1.1 clean_session=0; 5.0 clean_start=0
    with a session expiry interval)."""
    if version == V5:
        return clients(port, cid, V5, **kw).connect(clean_start=False, session_expiry=expiry)
    return clients(port, cid, V311, clean_session=False, **kw).connect()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_offline_messages_queued_for_persistent_session(broker, clients, version):
    cid = unique_id("persist")
    s = persistent(clients, broker.port, cid, version)
    assert s.session_present is False
    assert s.subscribe("offline/#", 2) == [2]
    s.disconnect()

    pub = clients(broker.port, version=version).connect()
    pub.publish("offline/a", b"q0", qos=0)
    pub.publish("offline/a", b"q1", qos=1)
    pub.publish("offline/b", b"q2", qos=2)
    pub.publish("offline/c", b"q1-again", qos=1)

    s2 = persistent(clients, broker.port, cid, version)
    assert s2.session_present is True
    got = s2.expect_n(3)
    # paho hands a QoS 2 message to the application only at PUBREL, so compare QoS 1 order
    # and the set, not the interleaving.
    assert [(m.topic, m.payload) for m in got if m.qos == 1] == [
        ("offline/a", b"q1"),
        ("offline/c", b"q1-again"),
    ]
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        ("offline/a", b"q1", 1),
        ("offline/b", b"q2", 2),
        ("offline/c", b"q1-again", 1),
    ]
    assert not any(m.retain for m in got)
    # QoS 0 is not queued by default; the subscription is still there for live traffic.
    pub.publish("offline/live", b"live", qos=1)
    m = s2.expect()
    assert (m.topic, m.payload, m.qos) == ("offline/live", b"live", 1), (
        f"expected the live message (QoS 0 must not be queued offline), got {m}"
    )
    s2.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_queue_qos0_offline_option(broker_factory, clients, version):
    broker = broker_factory("--queue-qos0-offline", "true")
    cid = unique_id("q0off")
    s = persistent(clients, broker.port, cid, version)
    s.subscribe("q0/#", 2)
    s.disconnect()
    pub = clients(broker.port, version=version).connect()
    pub.publish("q0/t", b"zero", qos=0)
    pub.publish("q0/t", b"one", qos=1)
    s2 = persistent(clients, broker.port, cid, version)
    assert s2.session_present is True
    got = s2.expect_n(2)
    assert [(m.payload, m.qos) for m in got] == [(b"zero", 0), (b"one", 1)]
    s2.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_first_persistent_connect_has_no_session(broker, clients, version):
    s = persistent(clients, broker.port, unique_id("fresh"), version)
    assert s.session_present is False


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_clean_connect_discards_session(broker, clients, version):
    cid = unique_id("discard")
    s = persistent(clients, broker.port, cid, version)
    s.subscribe("discard/#", 1)
    s.disconnect()
    pub = clients(broker.port, version=version).connect()
    pub.publish("discard/x", b"queued", qos=1)

    if version == V5:
        clean = clients(broker.port, cid, V5).connect(clean_start=True, session_expiry=0)
    else:
        clean = clients(broker.port, cid, V311, clean_session=True).connect()
    assert clean.session_present is False
    clean.expect_none()
    # The old subscription is gone too.
    pub.publish("discard/x", b"after clean", qos=1)
    clean.expect_none(0.2)
    clean.disconnect()

    again = persistent(clients, broker.port, cid, version)
    assert again.session_present is False
    again.expect_none(0.2)


def test_v5_clean_start_false_with_zero_expiry_ends_at_disconnect(broker, clients):
    cid = unique_id("zeroexp")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=0)
    s.subscribe("zero/#", 1)
    s.disconnect()
    pub = clients(broker.port, version=V5).connect()
    pub.publish("zero/x", b"nobody", qos=1)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=0)
    assert s2.session_present is False
    s2.expect_none()


def test_v5_clean_start_with_expiry_creates_persistent_session(broker, clients):
    cid = unique_id("cleanexp")
    s = clients(broker.port, cid, V5).connect(clean_start=True, session_expiry=60)
    assert s.session_present is False
    s.subscribe("cleanexp/#", 1)
    s.disconnect()
    clients(broker.port, version=V5).connect().publish("cleanexp/x", b"kept", qos=1)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    assert s2.session_present is True
    assert s2.expect().payload == b"kept"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_offline_queue_order(broker, clients, version):
    cid = unique_id("qorder")
    s = persistent(clients, broker.port, cid, version)
    s.subscribe("qorder/t", 1)
    s.disconnect()
    pub = clients(broker.port, version=version).connect()
    for i in range(100):
        pub.paho.publish("qorder/t", str(i), qos=1)
    pub.publish("qorder/t", "end", qos=1)
    s2 = persistent(clients, broker.port, cid, version)
    got = [m.payload.decode() for m in s2.expect_n(101)]
    assert got == [str(i) for i in range(100)] + ["end"]


def test_v5_session_expiry_elapses(broker, clients):
    cid = unique_id("expire")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=1)
    s.subscribe("exp/#", 1)
    s.disconnect()
    time.sleep(1.7)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    assert s2.session_present is False, "session should have expired after 1 s"


def test_v5_session_expiry_changed_on_disconnect(broker, clients):
    """DISCONNECT may set Session Expiry Interval 0 (from a non-zero CONNECT value): the
    session then ends with the connection."""
    cid = unique_id("disexp")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=300)
    s.subscribe("disexp/#", 1)
    s.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=300)
    assert s2.session_present is False


def test_v5_session_survives_within_expiry(broker, clients):
    cid = unique_id("keep")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=5)
    s.subscribe("keep/#", 1)
    s.disconnect()
    clients(broker.port, version=V5).connect().publish("keep/x", b"kept", qos=1)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=5)
    assert s2.session_present is True
    m = s2.expect()
    assert (m.topic, m.payload, m.qos) == ("keep/x", b"kept", 1)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_unacknowledged_message_redelivered_on_reconnect(broker, clients, version):
    """A QoS 1 message delivered but not acknowledged is sent again, with DUP set, when the
    persistent session reconnects."""
    cid = unique_id("redeliver")
    s = persistent(clients, broker.port, cid, version, manual_ack=True)
    s.subscribe("redeliver/t", 1)
    pub = clients(broker.port, version=version).connect()
    pub.publish("redeliver/t", b"ack me", qos=1)
    m = s.expect()
    assert (m.payload, m.dup) == (b"ack me", False)
    s.drop()  # no PUBACK was sent

    s2 = persistent(clients, broker.port, cid, version)
    assert s2.session_present is True
    m = s2.expect()
    assert (m.topic, m.payload, m.qos, m.dup) == ("redeliver/t", b"ack me", 1, True)
    s2.expect_none()


# -- takeover ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_id_takeover(broker, clients, version):
    cid = unique_id("dup")
    first = clients(broker.port, cid, version).connect()
    first.subscribe("takeover/first", 1)
    second = clients(broker.port, cid, version).connect()
    d = first.wait_disconnected()
    if version == V5:
        assert d.from_server, "the old 5.0 connection should get a DISCONNECT packet"
        assert d.reason == 0x8E, f"DISCONNECT reason {d.reason:#x} ({d.reason_name})"
        assert d.reason_name == "Session taken over"
    assert second.connack_reason == 0
    # Clean session: the first connection's subscription is gone; the new one works.
    assert second.session_present is False
    second.subscribe("takeover/second", 1)
    pub = clients(broker.port, version=version).connect()
    pub.publish("takeover/first", b"old", qos=1)
    pub.publish("takeover/second", b"new", qos=1)
    m = second.expect()
    assert (m.topic, m.payload) == ("takeover/second", b"new")
    second.expect_none()
    assert not second.disconnected.is_set()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_takeover_keeps_persistent_session(broker, clients, version):
    cid = unique_id("dup-persist")
    first = persistent(clients, broker.port, cid, version)
    first.subscribe("tp/#", 1)
    second = persistent(clients, broker.port, cid, version)
    first.wait_disconnected()
    assert second.session_present is True
    clients(broker.port, version=version).connect().publish("tp/x", b"to second", qos=1)
    m = second.expect()
    assert (m.topic, m.payload) == ("tp/x", b"to second")


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_takeover_hands_over_unacknowledged_messages(broker, clients, version):
    """Messages the old connection received but did not acknowledge are resent (DUP) to the
    connection that takes the persistent session over, followed by what was queued."""
    cid = unique_id("handover")
    first = persistent(clients, broker.port, cid, version, manual_ack=True)
    first.subscribe("handover/t", 1)
    pub = clients(broker.port, version=version).connect()
    pub.publish("handover/t", b"unacked-1", qos=1)
    pub.publish("handover/t", b"unacked-2", qos=1)
    assert [m.payload for m in first.expect_n(2)] == [b"unacked-1", b"unacked-2"]

    second = persistent(clients, broker.port, cid, version)
    first.wait_disconnected()
    assert second.session_present is True
    pub.publish("handover/t", b"after", qos=1)
    got = second.expect_n(3)
    assert [(m.payload, m.dup) for m in got] == [
        (b"unacked-1", True),
        (b"unacked-2", True),
        (b"after", False),
    ]
    second.expect_none()


def test_v5_takeover_within_will_delay_sends_no_will(broker, clients):
    """Taking over a session before the old connection's Will Delay Interval has passed: the
    will is not published (a new connection for the client id was opened in time)."""
    watcher = clients(broker.port, version=V5).connect()
    watcher.subscribe("tw/#", 1)
    cid = unique_id("takewill")
    first = clients(broker.port, cid, V5)
    first.will_set(
        "tw/will", b"should not appear", qos=1,
        properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1),
    )  # fmt: skip
    first.connect(clean_start=False, session_expiry=60)
    second = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    d = first.wait_disconnected()
    assert (d.from_server, d.reason) == (True, 0x8E)
    assert second.session_present is True
    watcher.expect_none(1.3)


def test_takeover_across_protocol_versions(broker, clients):
    """A 5.0 connection taking over a 3.1.1 client's id and the reverse."""
    cid = unique_id("dup-mixed")
    a = clients(broker.port, cid, V311).connect()
    b = clients(broker.port, cid, V5).connect()
    a.wait_disconnected()
    c = clients(broker.port, cid, V311).connect()
    d = b.wait_disconnected()
    assert (d.from_server, d.reason) == (True, 0x8E)
    assert c.connack_reason == 0 and not c.disconnected.is_set()


# -- client identifiers -------------------------------------------------------------------------


def test_v311_empty_client_id_with_clean_session(broker, clients):
    c = clients(broker.port, "", V311, clean_session=True).connect()
    assert c.session_present is False
    c.subscribe("anon/t", 1)
    c.publish("anon/t", b"hi", qos=1)
    assert c.expect().payload == b"hi"


def test_v311_empty_client_id_without_clean_session_refused(broker):
    """MQTT 3.1.1 [MQTT-3.1.3-8]: CONNACK return code 0x02 (identifier rejected), then close."""
    raw = RawClient(broker.port)
    try:
        raw.send(connect_packet("", version=V311, clean=False))
        pkt = raw.read_packet()
        assert pkt == (2, 0, b"\x00\x02"), f"expected CONNACK rc 2, got {pkt}"
        assert raw.read_packet(timeout=3) is None, "connection should be closed"
    finally:
        raw.close()


def test_v5_assigned_client_identifier(broker, clients):
    a = clients(broker.port, "", V5).connect()
    b = clients(broker.port, "", V5).connect()
    ida = a.connack_props.get("AssignedClientIdentifier")
    idb = b.connack_props.get("AssignedClientIdentifier")
    assert isinstance(ida, str) and ida, f"CONNACK properties: {a.connack_props}"
    assert isinstance(idb, str) and idb
    assert ida != idb
    # Both connections stay up (they did not take each other over).
    a.subscribe("assigned/t", 1)
    b.publish("assigned/t", b"x", qos=1)
    assert a.expect().payload == b"x"
    assert not a.disconnected.is_set() and not b.disconnected.is_set()


def test_v5_assigned_client_identifier_resumes_session(broker, clients):
    a = clients(broker.port, "", V5).connect(clean_start=False, session_expiry=60)
    assigned = a.connack_props["AssignedClientIdentifier"]
    a.subscribe("assigned/persist", 1)
    a.disconnect()
    clients(broker.port, version=V5).connect().publish("assigned/persist", b"back", qos=1)
    b = clients(broker.port, assigned, V5).connect(clean_start=False, session_expiry=60)
    assert b.session_present is True
    assert b.expect().payload == b"back"


def test_v5_client_identifier_kept_when_given(broker, clients):
    c = clients(broker.port, "given-id", V5).connect()
    assert "AssignedClientIdentifier" not in c.connack_props
