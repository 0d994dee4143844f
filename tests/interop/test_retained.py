"""Retained messages: store, replace, delete with an empty payload, delivery on subscribe."""

from __future__ import annotations

import pytest

from mqtt_util import VERSION_IDS, VERSIONS


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_retained_delivered_on_subscribe(broker, clients, version, qos):
    pub = clients(broker.port, version=version).connect()
    pub.publish("ret/one", b"state=on", qos=qos, retain=True)
    pub.disconnect()

    sub = clients(broker.port, version=version).connect()
    sub.subscribe("ret/one", 2)
    m = sub.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("ret/one", b"state=on", qos, True)
    sub.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_qos_is_min_of_message_and_subscription(broker, clients, version):
    pub = clients(broker.port, version=version).connect()
    pub.publish("retq/two", b"2", qos=2, retain=True)
    pub.publish("retq/zero", b"0", qos=0, retain=True)
    sub = clients(broker.port, version=version).connect()
    sub.subscribe("retq/two", 1)
    m = sub.expect()
    assert (m.payload, m.qos, m.retain) == (b"2", 1, True)
    sub.subscribe("retq/zero", 2)
    m = sub.expect()
    assert (m.payload, m.qos, m.retain) == (b"0", 0, True)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_replaced(broker, clients, version):
    pub = clients(broker.port, version=version).connect()
    pub.publish("ret/rep", b"v1", qos=1, retain=True)
    pub.publish("ret/rep", b"v2", qos=1, retain=True)
    pub.publish("ret/rep", b"not retained", qos=1, retain=False)  # must not replace v2

    sub = clients(broker.port, version=version).connect()
    sub.subscribe("ret/rep", 1)
    m = sub.expect()
    assert (m.payload, m.retain) == (b"v2", True)
    sub.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_deleted_by_empty_payload(broker, clients, version):
    pub = clients(broker.port, version=version).connect()
    live = clients(broker.port, version=version).connect()
    live.subscribe("ret/del", 1)
    pub.publish("ret/del", b"gone soon", qos=1, retain=True)
    assert live.expect().payload == b"gone soon"

    pub.publish("ret/del", b"", qos=1, retain=True)
    # The empty retained message still goes to current subscribers as a normal message.
    m = live.expect()
    assert (m.topic, m.payload, m.retain) == ("ret/del", b"", False)

    sub = clients(broker.port, version=version).connect()
    sub.subscribe("ret/#", 1)
    pub.publish("ret/marker", b"after", qos=1)
    m = sub.expect()
    assert (m.topic, m.payload, m.retain) == ("ret/marker", b"after", False), (
        "the deleted retained message was delivered on subscribe"
    )


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_live_delivery_clears_retain_flag(broker, clients, version):
    """A retained PUBLISH forwarded to an existing subscription has RETAIN 0 (3.1.1
    [MQTT-3.3.1-9]; 5.0 with Retain As Published 0)."""
    sub = clients(broker.port, version=version).connect()
    pub = clients(broker.port, version=version).connect()
    sub.subscribe("ret/live", 1)
    pub.publish("ret/live", b"now", qos=1, retain=True)
    m = sub.expect()
    assert (m.payload, m.retain) == (b"now", False)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_wildcard_subscription(broker, clients, version):
    pub = clients(broker.port, version=version).connect()
    topics = {"house/kitchen/temp": b"21", "house/hall/temp": b"19", "house/kitchen/hum": b"40"}
    for t, p in topics.items():
        pub.publish(t, p, qos=1, retain=True)
    pub.publish("garden/temp", b"12", qos=1, retain=True)

    sub = clients(broker.port, version=version).connect()
    sub.subscribe("house/+/temp", 1)
    got = sub.expect_n(2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("house/hall/temp", b"19"),
        ("house/kitchen/temp", b"21"),
    ]
    assert all(m.retain for m in got)
    sub.expect_none()

    sub2 = clients(broker.port, version=version).connect()
    sub2.subscribe("house/#", 0)
    got = sub2.expect_n(3)
    assert {(m.topic, m.payload, m.qos, m.retain) for m in got} == {
        (t, p, 0, True) for t, p in topics.items()
    }
    sub2.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_survives_publisher_and_resubscribe(broker, clients, version):
    """Every new subscription gets the retained message again (Retain Handling 0 default)."""
    pub = clients(broker.port, version=version).connect()
    pub.publish("ret/again", b"x", qos=1, retain=True)
    pub.disconnect()
    sub = clients(broker.port, version=version).connect()
    for _ in range(2):
        sub.subscribe("ret/again", 1)
        m = sub.expect()
        assert (m.payload, m.retain) == (b"x", True)
    sub.unsubscribe("ret/again")
    sub.subscribe("ret/again", 1)
    assert sub.expect().retain is True


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_matching_edge_cases(broker, clients, version):
    """The retained index matches filters exactly like live routing: `#` includes the parent
    level, `+` matches empty levels, `$` topics need an explicit first level."""
    pub = clients(broker.port, version=version).connect()
    topics = ["sport", "sport/tennis", "sport/tennis/player1", "a//c", "/lead", "$sys/x", "sports"]
    for t in topics:
        pub.publish(t, t.encode(), qos=1, retain=True)

    cases = {
        "sport/#": {"sport", "sport/tennis", "sport/tennis/player1"},
        "sport/+": {"sport/tennis"},
        "+": {"sport", "sports"},
        "a/+/c": {"a//c"},
        "+/lead": {"/lead"},
        "#": {"sport", "sport/tennis", "sport/tennis/player1", "a//c", "/lead", "sports"},
        "$sys/#": {"$sys/x"},
        "+/+": {"sport/tennis", "/lead"},
        "sport/tennis/#": {"sport/tennis", "sport/tennis/player1"},
    }
    for f, want in cases.items():
        c = clients(broker.port, version=version).connect()
        c.subscribe(f, 1)
        got = c.drain(0.15)
        assert sorted(m.topic for m in got) == sorted(want), f"filter {f!r}"
        assert all(m.retain and m.payload == m.topic.encode() for m in got), f"filter {f!r}"
        c.disconnect()
