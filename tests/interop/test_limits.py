"""Configuration limits seen from a client: packet size, keep alive, in-flight window, queue
length, CONNECT timeout, Receive Maximum."""

from __future__ import annotations

import socket
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


def test_max_packet_size_advertised_and_enforced_v5(broker_factory, clients):
    broker = broker_factory("--max-packet-size", "2048")
    c = clients(broker.port, version=V5).connect()
    assert c.connack_props.get("MaximumPacketSize") == 2048
    c.publish("big/t", b"x" * 1000, qos=1)  # fits
    c.paho.publish("big/t", b"x" * 4096, qos=1)
    d = c.wait_disconnected()
    assert (d.from_server, d.reason) == (True, 0x95), f"{d}"


def test_max_packet_size_enforced_v311(broker_factory, clients):
    broker = broker_factory("--max-packet-size", "2048")
    watcher = clients(broker.port, version=V311).connect()
    watcher.subscribe("big/#", 1)
    c = clients(broker.port, version=V311).connect()
    c.paho.publish("big/t", b"x" * 4096, qos=1)
    d = c.wait_disconnected()
    assert not d.from_server
    watcher.expect_none()


def test_messages_larger_than_client_maximum_not_sent(broker, clients):
    """A 5.0 client's Maximum Packet Size is respected: bigger messages are dropped for it
    [MQTT-3.1.2-25], smaller ones still arrive."""
    small = clients(broker.port, version=V5)
    small.connect(properties=props(PacketTypes.CONNECT, MaximumPacketSize=512))
    small.subscribe("cmax/#", 1)
    pub = clients(broker.port, version=V5).connect()
    pub.publish("cmax/big", b"y" * 2000, qos=1)
    pub.publish("cmax/small", b"ok", qos=1)
    m = small.expect()
    assert (m.topic, m.payload) == ("cmax/small", b"ok")
    small.expect_none()
    assert not small.disconnected.is_set()


@pytest.mark.parametrize("asked", [60, 0], ids=["ka60", "ka0"])
def test_server_keep_alive_v5(broker_factory, clients, asked):
    broker = broker_factory("--max-keepalive-secs", "5")
    c = clients(broker.port, version=V5, keepalive=asked).connect()
    assert c.connack_props.get("ServerKeepAlive") == 5


def test_keepalive_within_maximum_v5(broker_factory, clients):
    broker = broker_factory("--max-keepalive-secs", "5")
    c = clients(broker.port, version=V5, keepalive=3).connect()
    assert c.connack_props.get("ServerKeepAlive", 3) == 3


def test_keepalive_above_maximum_refused_v311(broker_factory):
    """3.1.1 clients cannot be told a Server Keep Alive: refused like Mosquitto does (CONNACK
    return code 2)."""
    broker = broker_factory("--max-keepalive-secs", "5")
    raw = RawClient(broker.port)
    try:
        raw.send(connect_packet(unique_id("ka"), version=V311, keepalive=60))
        assert raw.read_packet() == (2, 0, b"\x00\x02")
        assert raw.read_packet(timeout=3) is None
    finally:
        raw.close()


def test_receive_maximum_advertised(broker_factory, clients):
    broker = broker_factory("--receive-maximum", "10")
    c = clients(broker.port, version=V5).connect()
    assert c.connack_props.get("ReceiveMaximum") == 10


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_max_inflight_window(broker_factory, clients, version):
    """With --max-inflight 2, only two unacknowledged QoS 1 messages are outstanding."""
    broker = broker_factory("--max-inflight", "2")
    sub = clients(broker.port, version=version, manual_ack=True).connect()
    sub.subscribe("inflight/t", 1)
    pub = clients(broker.port, version=version).connect()
    for i in range(5):
        pub.publish("inflight/t", f"{i}", qos=1)
    first = sub.expect_n(2)
    assert [m.payload for m in first] == [b"0", b"1"]
    sub.expect_none(0.3)
    sub.ack(first[0].mid, 1)
    assert sub.expect().payload == b"2"
    sub.expect_none(0.2)
    sub.ack(first[1].mid, 1)
    m3 = sub.expect()
    assert m3.payload == b"3"


def test_v5_receive_maximum_of_client_limits_inflight(broker, clients):
    sub = clients(broker.port, version=V5, manual_ack=True)
    sub.connect(properties=props(PacketTypes.CONNECT, ReceiveMaximum=1))
    sub.subscribe("rm/t", 2)
    pub = clients(broker.port, version=V5).connect()
    for i in range(3):
        pub.publish("rm/t", f"{i}", qos=1)
    m = sub.expect()
    assert m.payload == b"0"
    sub.expect_none(0.3)
    sub.ack(m.mid, 1)
    assert sub.expect().payload == b"1"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_max_queued_messages_offline(broker_factory, clients, version):
    """drop-new (the default): an offline session keeps the oldest N messages."""
    broker = broker_factory("--max-queued-messages", "3")
    cid = unique_id("qlimit")
    if version == V5:
        s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    else:
        s = clients(broker.port, cid, V311, clean_session=False).connect()
    s.subscribe("ql/t", 1)
    s.disconnect()
    pub = clients(broker.port, version=version).connect()
    for i in range(6):
        pub.publish("ql/t", f"{i}", qos=1)
    if version == V5:
        s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    else:
        s2 = clients(broker.port, cid, V311, clean_session=False).connect()
    assert s2.session_present is True
    assert [m.payload for m in s2.expect_n(3)] == [b"0", b"1", b"2"]
    s2.expect_none()


def test_connect_timeout(broker_factory):
    broker = broker_factory("--connect-timeout-secs", "1")
    raw = RawClient(broker.port)
    try:
        start = time.monotonic()
        closed = raw.wait_closed(timeout=4)
        assert 0.8 <= closed - start <= 3.0, f"closed after {closed - start:.2f}s"
    finally:
        raw.close()


def test_first_packet_must_be_connect(broker):
    raw = RawClient(broker.port)
    try:
        raw.send(b"\xc0\x00")  # PINGREQ
        assert raw.read_packet(timeout=3) is None
    finally:
        raw.close()


def test_garbage_is_dropped(broker, clients):
    """Junk bytes close that connection and nothing else."""
    other = clients(broker.port, version=V5).connect()
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=3)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(3)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    finally:
        s.close()
    other.subscribe("still/up", 1)
    other.publish("still/up", b"yes", qos=1)
    assert other.expect().payload == b"yes"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_queue_overflow_drop_oldest(broker_factory, clients, version):
    broker = broker_factory("--max-queued-messages", "3", "--queue-overflow", "drop-oldest")
    cid = unique_id("qdo")
    if version == V5:
        s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    else:
        s = clients(broker.port, cid, V311, clean_session=False).connect()
    s.subscribe("qdo/t", 1)
    s.disconnect()
    pub = clients(broker.port, version=version).connect()
    for i in range(6):
        pub.publish("qdo/t", f"{i}", qos=1)
    if version == V5:
        s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    else:
        s2 = clients(broker.port, cid, V311, clean_session=False).connect()
    assert [m.payload for m in s2.expect_n(3)] == [b"3", b"4", b"5"]
    s2.expect_none()


def test_queue_overflow_disconnect(broker_factory, clients):
    """A slow online 5.0 client whose queue overflows is disconnected with 0x97."""
    broker = broker_factory(
        "--max-inflight", "1", "--max-queued-messages", "2", "--queue-overflow", "disconnect"
    )
    slow = clients(broker.port, version=V5, manual_ack=True).connect()
    slow.subscribe("slow/t", 1)
    pub = clients(broker.port, version=V5).connect()
    for i in range(5):
        pub.publish("slow/t", f"{i}", qos=1)
    d = slow.wait_disconnected()
    assert (d.from_server, d.reason) == (True, 0x97), f"{d}"


def test_message_expiry_while_queued_behind_inflight(broker_factory, clients):
    """A message that expires while waiting in an online client's queue is not sent
    [MQTT-3.3.2-5]."""
    broker = broker_factory("--max-inflight", "1")
    sub = clients(broker.port, version=V5, manual_ack=True).connect()
    sub.subscribe("mxq/t", 1)
    pub = clients(broker.port, version=V5).connect()
    pub.publish("mxq/t", b"first", qos=1)
    pub.publish(
        "mxq/t", b"expires", qos=1,
        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1),
    )  # fmt: skip
    pub.publish("mxq/t", b"last", qos=1)
    m = sub.expect()
    assert m.payload == b"first"
    time.sleep(1.7)
    sub.ack(m.mid, 1)
    m = sub.expect(timeout=2)
    assert m.payload == b"last", f"expired message delivered: {m}"


def test_oversized_message_queued_behind_inflight_does_not_stall(broker_factory, clients):
    """A message too big for the client's Maximum Packet Size is dropped for it; the ones
    queued behind it must still be delivered once the window opens."""
    broker = broker_factory("--max-inflight", "1")
    sub = clients(broker.port, version=V5, manual_ack=True)
    sub.connect(properties=props(PacketTypes.CONNECT, MaximumPacketSize=512))
    sub.subscribe("big2/t", 1)
    pub = clients(broker.port, version=V5).connect()
    pub.publish("big2/t", b"first", qos=1)
    pub.publish("big2/t", b"z" * 2000, qos=1)
    pub.publish("big2/t", b"last", qos=1)
    m = sub.expect()
    assert m.payload == b"first"
    sub.ack(m.mid, 1)
    m = sub.expect(timeout=2)
    assert m.payload == b"last", f"got {m}"


def test_expired_offline_message_does_not_stall_resumed_session(broker_factory, clients):
    """Same with a persistent session: the first queued message expired while offline; the
    rest must still arrive after reconnecting."""
    broker = broker_factory("--max-inflight", "1")
    cid = unique_id("mxoff")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    s.subscribe("mxoff/t", 1)
    s.disconnect()
    pub = clients(broker.port, version=V5).connect()
    pub.publish(
        "mxoff/t", b"expires", qos=1,
        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1),
    )  # fmt: skip
    pub.publish("mxoff/t", b"second", qos=1)
    pub.publish("mxoff/t", b"third", qos=1)
    time.sleep(1.7)
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    assert s2.session_present is True
    assert [m.payload for m in s2.expect_n(2, timeout=3)] == [b"second", b"third"]
