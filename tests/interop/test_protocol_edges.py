"""Protocol details checked byte for byte with a raw socket client, where paho would hide them:
QoS 2 exactly-once with retransmissions, PUBREL resent after reconnect, PINGRESP, protocol
errors."""

from __future__ import annotations

import struct
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
    decode_publish,
    mqtt_str,
    props,
    unique_id,
    varint,
)

PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, PINGRESP, DISCONNECT = 3, 4, 5, 6, 7, 13, 14


def raw_connect(port, version, client_id=None, clean=True, properties=b""):
    raw = RawClient(port)
    raw.send(
        connect_packet(
            client_id or unique_id("raw"), version=version, clean=clean, properties=properties
        )
    )
    pkt = raw.read_packet()
    assert pkt is not None and pkt[0] == 2, f"expected CONNACK, got {pkt}"
    assert pkt[2][1] == 0, f"CONNACK refused: {pkt}"
    return raw, pkt


def publish_packet(topic, payload, qos, pid, version, dup=False, retain=False):
    flags = (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = mqtt_str(topic) + (struct.pack("!H", pid) if qos else b"")
    if version == V5:
        body += b"\x00"
    body += payload
    return bytes([0x30 | flags]) + varint(len(body)) + body


def ack_packet(ptype, pid):
    flags = 0x02 if ptype == PUBREL else 0
    return bytes([(ptype << 4) | flags, 2]) + struct.pack("!H", pid)


def expect_packet(raw, ptype, timeout=5):
    pkt = raw.read_packet(timeout=timeout)
    assert pkt is not None, f"connection closed, expected packet type {ptype}"
    assert pkt[0] == ptype, f"expected packet type {ptype}, got {pkt}"
    return pkt


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_qos2_inbound_duplicate_publish_delivered_once(broker, clients, version):
    """A QoS 2 PUBLISH retransmitted (DUP=1, same packet id) before PUBREL is delivered once."""
    sub = clients(broker.port, version=version).connect()
    sub.subscribe("exactly/once", 2)
    raw, _ = raw_connect(broker.port, version)
    try:
        raw.send(publish_packet("exactly/once", b"one", 2, 7, version))
        rec = expect_packet(raw, PUBREC)
        assert rec[2][:2] == b"\x00\x07"
        raw.send(publish_packet("exactly/once", b"one", 2, 7, version, dup=True))
        rec = expect_packet(raw, PUBREC)
        assert rec[2][:2] == b"\x00\x07"
        raw.send(ack_packet(PUBREL, 7))
        comp = expect_packet(raw, PUBCOMP)
        assert comp[1] == 0 and comp[2][:2] == b"\x00\x07"
        if version == V5 and len(comp[2]) > 2:
            assert comp[2][2] == 0, f"PUBCOMP reason {comp[2][2]:#x}"
        # The packet id is free again: a new message with it is a new message.
        raw.send(publish_packet("exactly/once", b"two", 2, 7, version))
        expect_packet(raw, PUBREC)
        raw.send(ack_packet(PUBREL, 7))
        expect_packet(raw, PUBCOMP)
    finally:
        raw.close()
    got = sub.expect_n(2)
    assert [m.payload for m in got] == [b"one", b"two"]
    sub.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_pubrel_for_unknown_packet_id(broker, version):
    raw, _ = raw_connect(broker.port, version)
    try:
        raw.send(ack_packet(PUBREL, 99))
        comp = expect_packet(raw, PUBCOMP)
        assert comp[2][:2] == b"\x00\x63"
        if version == V5:
            assert comp[2][2:3] == b"\x92", f"PUBCOMP {comp[2].hex()}: expected 0x92"
    finally:
        raw.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_qos2_outbound_pubrel_resent_after_reconnect(broker, clients, version):
    """Subscriber got a QoS 2 PUBLISH and sent PUBREC, then the connection broke: on
    reconnection the broker resends PUBREL (not the PUBLISH) with the same packet id."""
    cid = unique_id("pubrel")
    conn_props = b"\x11\x00\x00\x00\x3c" if version == V5 else b""  # Session Expiry 60
    raw, _ = raw_connect(broker.port, version, cid, clean=False, properties=conn_props)
    pub = clients(broker.port, version=version).connect()
    try:
        assert raw.subscribe("rel/t", 2, version=version) == b"\x02"
        pub.publish("rel/t", b"q2", qos=2)
        pkt = expect_packet(raw, PUBLISH)
        p = decode_publish(pkt[1], pkt[2], version)
        assert (p.topic, p.payload, p.qos, p.dup) == ("rel/t", b"q2", 2, False)
        raw.send(ack_packet(PUBREC, p.packet_id))
        rel = expect_packet(raw, PUBREL)
        assert rel[1] == 0x02 and rel[2][:2] == struct.pack("!H", p.packet_id)
    finally:
        raw.close()  # no PUBCOMP

    raw2, connack = raw_connect(broker.port, version, cid, clean=False, properties=conn_props)
    try:
        assert connack[2][0] == 1, "session present expected"
        rel = expect_packet(raw2, PUBREL)
        assert rel[1] == 0x02 and rel[2][:2] == struct.pack("!H", p.packet_id)
        raw2.send(ack_packet(PUBCOMP, p.packet_id))
        # Nothing else pending: the message is not sent again.
        pub.publish("rel/t", b"next", qos=1)
        pkt = expect_packet(raw2, PUBLISH)
        assert decode_publish(pkt[1], pkt[2], version).payload == b"next"
    finally:
        raw2.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_qos1_outbound_resent_with_dup_after_reconnect(broker, clients, version):
    cid = unique_id("dup1")
    conn_props = b"\x11\x00\x00\x00\x3c" if version == V5 else b""
    raw, _ = raw_connect(broker.port, version, cid, clean=False, properties=conn_props)
    pub = clients(broker.port, version=version).connect()
    try:
        raw.subscribe("dup/t", 1, version=version)
        pub.publish("dup/t", b"a", qos=1)
        pub.publish("dup/t", b"b", qos=1)
        first = [decode_publish(*expect_packet(raw, PUBLISH)[1:], version) for _ in range(2)]
    finally:
        raw.close()  # no PUBACKs
    assert [(p.payload, p.dup) for p in first] == [(b"a", False), (b"b", False)]

    raw2, connack = raw_connect(broker.port, version, cid, clean=False, properties=conn_props)
    try:
        assert connack[2][0] == 1
        again = [decode_publish(*expect_packet(raw2, PUBLISH)[1:], version) for _ in range(2)]
        # Resent in the original order, same packet ids, DUP set [MQTT-4.4.0-1], [MQTT-4.6.0-1].
        assert [(p.payload, p.dup, p.packet_id) for p in again] == [
            (b"a", True, first[0].packet_id),
            (b"b", True, first[1].packet_id),
        ]
        for p in again:
            raw2.puback(p.packet_id)
    finally:
        raw2.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_pingreq_gets_pingresp(broker, version):
    raw, _ = raw_connect(broker.port, version)
    try:
        for _ in range(2):
            raw.send(b"\xc0\x00")
            assert raw.read_packet() == (PINGRESP, 0, b"")
    finally:
        raw.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_publish_to_wildcard_topic_is_refused(broker, clients, version):
    """A Topic Name must not contain wildcards [MQTT-3.3.2-2]: the connection is closed (5.0
    may say why first) and nothing is delivered."""
    watcher = clients(broker.port, version=version).connect()
    watcher.subscribe("#", 1)
    raw, _ = raw_connect(broker.port, version)
    try:
        raw.send(publish_packet("bad/+/topic", b"x", 1, 1, version))
        pkt = raw.read_packet()
        if pkt is not None:
            assert version == V5 and pkt[0] == DISCONNECT, f"expected close, got {pkt}"
            assert pkt[2][0] in (0x81, 0x82, 0x90), f"DISCONNECT reason {pkt[2][0]:#x}"
            assert raw.read_packet() is None
    finally:
        raw.close()
    watcher.expect_none()


def test_v5_no_local_on_shared_subscription_is_protocol_error(broker):
    """[MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error."""
    raw, _ = raw_connect(broker.port, V5)
    try:
        body = b"\x00\x01\x00" + mqtt_str("$share/g/nl/t") + b"\x05"  # QoS 1 + No Local
        raw.send(b"\x82" + varint(len(body)) + body)
        pkt = raw.read_packet()
        assert pkt is not None, "closed without DISCONNECT"
        assert pkt[0] == DISCONNECT and pkt[2][0] == 0x82, f"got {pkt}"
        assert raw.read_packet() is None
    finally:
        raw.close()


def test_v5_session_expiry_capped_in_connack(broker_factory, clients):
    broker = broker_factory("--max-session-expiry-secs", "10")
    c = clients(broker.port, version=V5).connect(clean_start=False, session_expiry=3600)
    assert c.connack_props.get("SessionExpiryInterval") == 10
    c2 = clients(broker.port, version=V5).connect(clean_start=False, session_expiry=5)
    assert c2.connack_props.get("SessionExpiryInterval", 5) == 5


def test_v5_subscription_identifier_on_queued_message(broker, clients):
    cid = unique_id("sidq")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    s.subscribe("sidq/#", 1, sub_id=77)
    s.disconnect()
    clients(broker.port, version=V5).connect().publish("sidq/x", b"queued", qos=1)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    m = s2.expect()
    assert (m.payload, m.props.get("SubscriptionIdentifier")) == (b"queued", [77])


def test_v5_will_sent_when_session_expires_before_delay(broker, clients):
    """Will Delay 30 s but Session Expiry 1 s: the will goes when the session ends."""
    w = clients(broker.port, version=V5).connect()
    w.subscribe("wexp/#", 1)
    c = clients(broker.port, version=V5)
    c.will_set(
        "wexp/t", b"session over", qos=1,
        properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=30),
    )  # fmt: skip
    c.connect(session_expiry=1)
    c.drop()
    dropped = time.monotonic()
    m = w.expect(timeout=4)
    assert (m.topic, m.payload) == ("wexp/t", b"session over")
    assert 0.8 <= m.at - dropped <= 3.0, f"will after {m.at - dropped:.2f}s"


def test_v5_malformed_packet_closes_connection(broker):
    """A malformed packet (PUBLISH with QoS 3) ends a 5.0 connection, with DISCONNECT 0x81
    Malformed Packet (or 0x82) if the broker says why."""
    raw, _ = raw_connect(broker.port, V5)
    try:
        body = mqtt_str("t") + b"\x00\x01\x00x"
        raw.send(bytes([0x36]) + varint(len(body)) + body)
        pkt = raw.read_packet()
        if pkt is not None:
            assert pkt[0] == DISCONNECT and pkt[2][0] in (0x81, 0x82), f"got {pkt}"
            assert raw.read_packet() is None
    finally:
        raw.close()


def test_v311_subscribe_multiple_filters_suback_order(broker):
    raw, _ = raw_connect(broker.port, V311)
    try:
        body = b"\x00\x05" + mqtt_str("m/a") + b"\x02" + mqtt_str("m/b") + b"\x00"
        body += mqtt_str("m/c") + b"\x01"
        raw.send(b"\x82" + varint(len(body)) + body)
        assert raw.read_packet() == (9, 0, b"\x00\x05\x02\x00\x01")
    finally:
        raw.close()


def test_v5_topic_alias_not_carried_over_reconnect(broker, clients):
    """Topic Alias mappings belong to one network connection [MQTT-3.3.2-7]."""
    cid = unique_id("aliasreconnect")
    watcher = clients(broker.port, version=V5).connect()
    watcher.subscribe("ac/#", 1)
    c = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    c.publish("ac/t", b"mapped", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    assert watcher.expect().payload == b"mapped"
    c.disconnect()
    c2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    c2.paho.publish("", b"stale alias", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    d = c2.wait_disconnected()
    assert d.from_server and d.reason in (0x82, 0x94), f"{d}"
    watcher.expect_none()


def test_v5_receive_maximum_exceeded(broker_factory):
    """More unacknowledged incoming QoS 2 messages than the advertised Receive Maximum:
    DISCONNECT 0x93."""
    broker = broker_factory("--receive-maximum", "2")
    raw, connack = raw_connect(broker.port, V5)
    try:
        for pid in (1, 2):
            raw.send(publish_packet("rmx/t", b"x", 2, pid, V5))
            expect_packet(raw, PUBREC)
        raw.send(publish_packet("rmx/t", b"x", 2, 3, V5))
        pkt = raw.read_packet()
        assert pkt is not None and pkt[0] == DISCONNECT, f"expected DISCONNECT, got {pkt}"
        assert pkt[2][0] == 0x93, f"DISCONNECT reason {pkt[2][0]:#x}"
        assert raw.read_packet() is None
    finally:
        raw.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_id_too_long_refused(broker_factory, version):
    broker = broker_factory("--max-client-id-len", "8")
    raw = RawClient(broker.port)
    try:
        raw.send(connect_packet("much-too-long-id", version=version))
        pkt = raw.read_packet()
        assert pkt is not None and pkt[0] == 2, f"expected CONNACK, got {pkt}"
        assert pkt[2][1] == (0x85 if version == V5 else 0x02), f"CONNACK {pkt[2].hex()}"
        assert raw.read_packet() is None
    finally:
        raw.close()
    ok, _ = raw_connect(broker.port, version, "short-id")
    ok.close()
