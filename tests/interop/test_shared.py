"""Shared subscriptions `$share/{group}/{filter}`: each message goes to exactly one member of
each group, for MQTT 5.0 and 3.1.1 members alike."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_util import V5, V311, props

N = 40


def collect(members, n, timeout=5.0):
    """Reads from every member until n messages in all, then a short quiet period."""
    got = {c.client_id: [] for c in members}
    deadline = time.monotonic() + timeout
    total = 0
    while total < n and time.monotonic() < deadline:
        for c in members:
            while not c.messages.empty():
                got[c.client_id].append(c.messages.get())
                total += 1
        time.sleep(0.01)
    for c in members:
        got[c.client_id] += c.drain(0.15)
    return got


@pytest.mark.parametrize(
    "versions",
    [(V5, V5), (V311, V311), (V311, V5), (V5, V5, V311)],
    ids=["v5+v5", "v311+v311", "v311+v5", "v5+v5+v311"],
)
def test_shared_subscription_each_message_once(broker, clients, versions):
    members = []
    for v in versions:
        c = clients(broker.port, version=v).connect()
        assert c.subscribe("$share/workers/jobs/+", 1) == [1]
        members.append(c)
    plain = clients(broker.port, version=V5).connect()
    plain.subscribe("jobs/+", 1)
    pub = clients(broker.port, version=V5).connect()

    for i in range(N):
        pub.publish(f"jobs/{i % 3}", f"job-{i}", qos=1)

    got = collect(members, N)
    payloads = [m.payload.decode() for ms in got.values() for m in ms]
    dupes = [p for p, k in Counter(payloads).items() if k > 1]
    assert not dupes, f"delivered to more than one member: {dupes}"
    assert sorted(payloads) == sorted(f"job-{i}" for i in range(N)), (
        f"missing: {set(f'job-{i}' for i in range(N)) - set(payloads)}"
    )
    for cid, ms in got.items():
        assert ms, f"member {cid} got nothing: {[len(x) for x in got.values()]}"
        assert all(m.topic == f"jobs/{int(m.payload[4:]) % 3}" and m.qos == 1 for m in ms)
    # A normal subscription to the same filter gets everything, in order on each topic.
    normal = plain.expect_n(N)
    for t in range(3):
        assert [m.payload.decode() for m in normal if m.topic == f"jobs/{t}"] == [
            f"job-{i}" for i in range(N) if i % 3 == t
        ]
    plain.expect_none(0.1)


def test_shared_groups_are_independent(broker, clients):
    """Every group gets each message once; a non-shared subscriber gets it too."""
    a1 = clients(broker.port, version=V5).connect()
    a2 = clients(broker.port, version=V311).connect()
    b1 = clients(broker.port, version=V5).connect()
    a1.subscribe("$share/a/grp/#", 2)
    a2.subscribe("$share/a/grp/#", 2)
    b1.subscribe("$share/b/grp/#", 2)
    pub = clients(broker.port, version=V311).connect()
    for i in range(10):
        pub.publish("grp/x", f"m{i}", qos=2)
    group_a = collect([a1, a2], 10)
    got_a = sorted(m.payload for ms in group_a.values() for m in ms)
    assert got_a == sorted(f"m{i}".encode() for i in range(10))
    assert [m.payload for m in b1.expect_n(10)] == [f"m{i}".encode() for i in range(10)]
    b1.expect_none(0.1)


def test_shared_subscription_qos_downgrade(broker, clients):
    c = clients(broker.port, version=V5).connect()
    c.subscribe("$share/g/qd/t", 0)
    pub = clients(broker.port, version=V5).connect()
    pub.publish("qd/t", b"x", qos=2)
    m = c.expect()
    assert (m.topic, m.payload, m.qos) == ("qd/t", b"x", 0)


def test_shared_member_leaving(broker, clients):
    """After one member unsubscribes, the others get everything."""
    stay = clients(broker.port, version=V5).connect()
    leave = clients(broker.port, version=V311).connect()
    stay.subscribe("$share/g/leave/t", 1)
    leave.subscribe("$share/g/leave/t", 1)
    leave.unsubscribe("$share/g/leave/t")
    pub = clients(broker.port, version=V5).connect()
    for i in range(6):
        pub.publish("leave/t", f"{i}", qos=1)
    assert [m.payload for m in stay.expect_n(6)] == [f"{i}".encode() for i in range(6)]
    leave.expect_none(0.1)


def test_shared_subscription_dollar_topic_rules(broker, clients):
    """`$share/g/#` does not match `$` topics either."""
    c = clients(broker.port, version=V5).connect()
    c.subscribe("$share/g/#", 1)
    pub = clients(broker.port, version=V5).connect()
    pub.publish("$internal/x", b"hidden", qos=1)
    pub.publish("visible/x", b"shown", qos=1)
    m = c.expect()
    assert (m.topic, m.payload) == ("visible/x", b"shown")
    c.expect_none(0.2)


def test_shared_subscription_with_v5_options(broker, clients):
    """Subscription identifier and user properties reach the chosen member of a group."""
    c = clients(broker.port, version=V5).connect()
    c.subscribe("$share/g/opt/t", 1, sub_id=12)
    pub = clients(broker.port, version=V5).connect()
    user = props(PacketTypes.PUBLISH, UserProperty=[("u", "1")])
    pub.publish("opt/t", b"x", qos=1, properties=user)
    m = c.expect()
    assert m.props.get("SubscriptionIdentifier") == [12]
    assert m.props.get("UserProperty") == [("u", "1")]
