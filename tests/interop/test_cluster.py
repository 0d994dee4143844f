"""Three real broker processes as one cluster: paho clients publish on one node and receive on
the others, at QoS 1 and 2, with sequence numbers (no loss, no duplicates, in order); retained
messages reach a late subscriber on another node; a killed node's routes go away."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from mqtt_util import V5, V311

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(broker_factory):
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [
        broker_factory(
            "--node-id", f"node-{i}",
            "--cluster-name", "interop",
            "--cluster-listen", f"127.0.0.1:{port}",
            "--peers", peers,
        )
        for i, port in enumerate(ports)
    ]  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(n.log().count("cluster link up") >= 2 for n in nodes):
            return nodes
        time.sleep(0.05)
    raise AssertionError("no full mesh:\n" + "\n".join(n.log()[-2000:] for n in nodes))


def sync(publisher, subscriber, topic: str) -> None:
    """Publishes probes until the subscriber (on another node) gets one: the route is there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        publisher.publish(topic, b"probe", qos=0)
        if subscriber.drain(timeout=0.1):
            return
    raise AssertionError(f"{topic} never routed")


@pytest.mark.parametrize("qos", [1, 2])
def test_published_on_one_node_received_on_the_others_exactly_in_order(cluster, clients, qos):
    n0, n1, n2 = cluster
    s1 = clients(n1.port, version=V5).connect()
    s1.subscribe("line/+/count", qos)
    s2 = clients(n2.port, version=V311).connect()
    s2.subscribe("line/#", qos)
    pub = clients(n0.port, version=V5).connect()
    sync(pub, s1, "line/sync/count")
    sync(pub, s2, "line/sync/count")
    s1.drain(timeout=0.3)
    s2.drain(timeout=0.3)
    count = 300
    for i in range(count):
        pub.publish("line/a/count", str(i).encode(), qos=qos)
    for s in (s1, s2):
        got = [int(m.payload) for m in s.expect_n(count, timeout=30)]
        assert got == list(range(count)), "lost, duplicated or reordered"
        s.expect_none()


def test_retained_on_one_node_reaches_a_late_subscriber_on_another(cluster, clients):
    n0, _, n2 = cluster
    pub = clients(n0.port, version=V5).connect()
    pub.publish("cfg/line-1", b"speed=3", qos=1, retain=True)
    deadline = time.monotonic() + 5
    while True:
        late = clients(n2.port, version=V5).connect()
        late.subscribe("cfg/#", 1)
        msgs = late.drain(timeout=0.3)
        if msgs:
            assert [(m.topic, m.payload, m.retain) for m in msgs] == [
                ("cfg/line-1", b"speed=3", True)
            ]
            return
        late.close()
        assert time.monotonic() < deadline, "the retained message never reached node 2"


def test_a_killed_node_is_seen_down_and_the_others_keep_serving(cluster, clients):
    n0, n1, n2 = cluster
    n2.signal(signal.SIGKILL)
    n2.wait(10)
    deadline = time.monotonic() + 10
    while "cluster link down" not in n0.log() or "cluster link down" not in n1.log():
        assert time.monotonic() < deadline, "the others did not see node 2 go"
        time.sleep(0.1)
    s1 = clients(n1.port, version=V5).connect()
    s1.subscribe("after/#", 1)
    pub = clients(n0.port, version=V5).connect()
    sync(pub, s1, "after/sync")
    s1.drain(timeout=0.2)
    pub.publish("after/x", b"still here", qos=1)
    assert s1.expect().payload == b"still here"
