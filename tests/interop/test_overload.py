"""Overload protection against a real broker process: a publisher far faster than its
subscriber never makes the broker's memory grow without bound, QoS 0 excess is dropped and
counted, QoS 1 is slowed (backpressure) and loses nothing.

The memory bound is on the broker's RSS, read from /proc/PID/status while the flood runs."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import urllib.request

import pytest

from mqtt_util import V311, RawClient, connect_packet, mqtt_str, varint

pytestmark = pytest.mark.timeout(120)

PAYLOAD = 16 * 1024
# What a flood pushes through: far more than the bound below.
FLOOD_BYTES = 256 * 1024 * 1024
# The broker starts at about 10 MB; its queues are bounded (1000 messages of 16 KB per
# session, backpressure for QoS 1), plus socket buffers.
RSS_BOUND = 160 * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, sample: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert m, f"{sample} not in /metrics"
    return float(m.group(1))


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    body += payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


def connected(port: int, client_id: str) -> RawClient:
    c = RawClient(port)
    c.send(connect_packet(client_id, version=V311))
    pkt = c.read_packet()
    assert pkt is not None and pkt[0] == 2 and pkt[2][1] == 0, f"CONNACK: {pkt}"
    return c


class RssWatch(threading.Thread):
    """Samples the broker's RSS every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.peak


def test_qos0_flood_to_a_slow_subscriber_is_dropped_and_counted_with_memory_bounded(
    broker_factory,
):
    mport = free_port()
    broker = broker_factory("--metrics-listen", f"127.0.0.1:{mport}")
    sub = connected(broker.port, "slow0")
    sub.subscribe("flood/0", 0, version=V311)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    pub = connected(broker.port, "pub0")
    watch = RssWatch(broker.proc.pid)
    watch.start()
    packet = publish_packet("flood/0", b"x" * PAYLOAD, 0, 0)
    sent = 0
    read = 0
    while sent < FLOOD_BYTES:
        pub.send(packet)
        sent += PAYLOAD
        # The subscriber reads one message for every hundred published.
        if (sent // PAYLOAD) % 100 == 0:
            sub.sock.settimeout(5)
            pkt = sub.read_packet()
            assert pkt is not None and pkt[0] == 3
            read += 1
    peak = watch.stop()
    print(f"qos0 flood: {sent / 2**20:.0f} MB sent, RSS peak {peak / 2**20:.1f} MB")
    assert peak < RSS_BOUND, f"RSS peaked at {peak / 2**20:.0f} MB"
    dropped = metric(mport, 'rookery_messages_dropped_total{reason="queue_full"}')
    assert dropped > 0
    received = metric(mport, 'rookery_messages_received_total{qos="0"}')
    # Everything published was taken (QoS 0 publishers are not slowed for a QoS 0 stream).
    assert received >= FLOOD_BYTES // PAYLOAD - 1000, received
    pub.close()
    sub.close()


def test_qos1_flood_is_slowed_not_dropped_and_memory_stays_bounded(broker_factory):
    mport = free_port()
    broker = broker_factory("--metrics-listen", f"127.0.0.1:{mport}")
    total = 8_000  # 128 MB of payload
    sub = connected(broker.port, "slow1")
    sub.subscribe("flood/1", 1, version=V311)
    pub = connected(broker.port, "pub1")
    acks = {"n": 0}

    def read_acks() -> None:
        while acks["n"] < total:
            pkt = pub.read_packet(timeout=60)
            assert pkt is not None
            if pkt[0] == 4:
                acks["n"] += 1

    acker = threading.Thread(target=read_acks, daemon=True)
    acker.start()

    def flood() -> None:
        payload = b"y" * PAYLOAD
        for i in range(total):
            pub.send(publish_packet("flood/1", payload, 1, i % 65535 + 1))

    flooder = threading.Thread(target=flood, daemon=True)
    watch = RssWatch(broker.proc.pid)
    watch.start()
    flooder.start()
    got = 0
    sub.sock.settimeout(30)
    while got < total:
        pkt = sub.read_packet(timeout=30)
        assert pkt is not None, f"closed after {got}"
        if pkt[0] != 3:
            continue
        got += 1
        pid = struct.unpack("!H", pkt[2][2 + len("flood/1") : 4 + len("flood/1")])[0]
        sub.puback(pid)
        if got % 200 == 0:
            time.sleep(0.01)  # slower than the publisher
    flooder.join(30)
    acker.join(30)
    peak = watch.stop()
    print(f"qos1 flood: {total * PAYLOAD / 2**20:.0f} MB acknowledged, RSS peak {peak / 2**20:.1f} MB")
    assert acks["n"] == total
    assert peak < RSS_BOUND, f"RSS peaked at {peak / 2**20:.0f} MB"
    assert metric(mport, 'rookery_messages_dropped_total{reason="queue_full"}') == 0
    assert metric(mport, 'rookery_messages_sent_total{qos="1"}') == total
    pub.close()
    sub.close()
