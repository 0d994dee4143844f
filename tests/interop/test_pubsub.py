"""Publish/subscribe basics with paho-mqtt: QoS 0/1/2 in both directions, topic filters,
ordering, unsubscribe, `$` topics."""

from __future__ import annotations

import pytest

from mqtt_util import QUIET, V5, VERSION_IDS, VERSIONS

QOS = [0, 1, 2]


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("pub_qos", QOS, ids=lambda q: f"pub{q}")
@pytest.mark.parametrize("sub_qos", QOS, ids=lambda q: f"sub{q}")
def test_qos_delivery(broker, clients, version, pub_qos, sub_qos):
    """Inbound at pub_qos, outbound at min(pub_qos, sub_qos), payload and flags intact."""
    sub = clients(broker.port, version=version).connect()
    pub = clients(broker.port, version=version).connect()
    assert sub.subscribe("qos/test", sub_qos) == [sub_qos]

    payload = f"hello q{pub_qos}->q{sub_qos}".encode() + bytes(range(256))
    ack = pub.publish("qos/test", payload, qos=pub_qos)
    if pub_qos > 0 and version == V5:
        assert ack == 0, f"PUBACK/PUBREC reason {ack}, expected 0 (Success)"

    m = sub.expect()
    assert m.topic == "qos/test"
    assert m.payload == payload
    assert m.qos == min(pub_qos, sub_qos)
    assert m.retain is False
    assert m.dup is False
    sub.expect_none(0.1)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("qos", QOS, ids=lambda q: f"qos{q}")
def test_order_preserved(broker, clients, version, qos):
    sub = clients(broker.port, version=version).connect()
    pub = clients(broker.port, version=version).connect()
    sub.subscribe("order/t", qos)
    n = 50
    for i in range(n):
        pub.paho.publish("order/t", str(i), qos=qos)
    pub.publish("order/t", "end", qos=qos)
    msgs = sub.expect_n(n + 1)
    assert [m.payload.decode() for m in msgs] == [str(i) for i in range(n)] + ["end"]
    assert {m.qos for m in msgs} == {qos}


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_topic_filters(broker, clients, version):
    """`+` matches one level, `#` any number including the parent, exact filters only themselves."""
    pub = clients(broker.port, version=version).connect()
    subs = {}
    for f in ["sport/+/score", "sport/#", "sport/tennis", "+/+", "+", "#"]:
        c = clients(broker.port, version=version).connect()
        assert c.subscribe(f, 1) == [1]
        subs[f] = c
    topics = [
        "sport",
        "sport/tennis",
        "sport/tennis/score",
        "sport/golf/score/final",
        "/sport",
        "a",
    ]
    for t in topics:
        pub.publish(t, t, qos=1)
    pub.publish("zz/end", "end", qos=1)  # matches only "+/+" and "#"
    expected = {
        "sport/+/score": ["sport/tennis/score"],
        "sport/#": ["sport", "sport/tennis", "sport/tennis/score", "sport/golf/score/final"],
        "sport/tennis": ["sport/tennis"],
        "+/+": ["sport/tennis", "/sport", "zz/end"],
        "+": ["sport", "a"],
        "#": topics + ["zz/end"],
    }
    for f, want in expected.items():
        got = [m.topic for m in subs[f].expect_n(len(want))]
        assert got == want, f"filter {f!r}"
        subs[f].expect_none(0.1)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_unsubscribe_stops_delivery(broker, clients, version):
    sub = clients(broker.port, version=version).connect()
    pub = clients(broker.port, version=version).connect()
    sub.subscribe("unsub/a", 1)
    sub.subscribe("unsub/b", 1)
    pub.publish("unsub/a", "1", qos=1)
    assert sub.expect().payload == b"1"
    rcs = sub.unsubscribe("unsub/a")
    if version == V5:
        assert rcs == [0]
    pub.publish("unsub/a", "2", qos=1)
    pub.publish("unsub/b", "marker", qos=1)
    m = sub.expect()
    assert (m.topic, m.payload) == ("unsub/b", b"marker")
    sub.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_resubscribe_replaces_qos(broker, clients, version):
    """A second SUBSCRIBE to the same filter replaces the first (one copy, new QoS)."""
    sub = clients(broker.port, version=version).connect()
    pub = clients(broker.port, version=version).connect()
    assert sub.subscribe("resub/t", 2) == [2]
    assert sub.subscribe("resub/t", 0) == [0]
    pub.publish("resub/t", "x", qos=2)
    m = sub.expect()
    assert (m.payload, m.qos) == (b"x", 0)
    sub.expect_none()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_dollar_topics_not_matched_by_wildcards(broker, clients, version):
    """Topics starting with `$` do not match filters starting with `#` or `+`."""
    pub = clients(broker.port, version=version).connect()
    all_sub = clients(broker.port, version=version).connect()
    plus_sub = clients(broker.port, version=version).connect()
    dollar_sub = clients(broker.port, version=version).connect()
    all_sub.subscribe("#", 1)
    plus_sub.subscribe("+/status", 1)
    dollar_sub.subscribe("$app/#", 1)

    pub.publish("$app/status", "hidden", qos=1)
    pub.publish("dev/status", "visible", qos=1)

    m = dollar_sub.expect()
    assert (m.topic, m.payload) == ("$app/status", b"hidden")
    for c in (all_sub, plus_sub):
        m = c.expect()
        assert (m.topic, m.payload) == ("dev/status", b"visible"), f"{c.client_id} got {m}"
    for c in (all_sub, plus_sub, dollar_sub):
        c.expect_none(QUIET / 2)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_publisher_receives_own_message(broker, clients, version):
    """Without No Local a client gets its own publications back."""
    c = clients(broker.port, version=version).connect()
    c.subscribe("self/t", 2)
    c.publish("self/t", "me", qos=2)
    m = c.expect()
    assert (m.topic, m.payload, m.qos) == ("self/t", b"me", 2)


def test_v311_and_v5_interoperate(broker, clients):
    """A 3.1.1 publisher reaches a 5.0 subscriber and vice versa."""
    c3 = clients(broker.port, version=4).connect()
    c5 = clients(broker.port, version=5).connect()
    c3.subscribe("mix/to3", 1)
    c5.subscribe("mix/to5", 1)
    c3.publish("mix/to5", "from3", qos=1)
    c5.publish("mix/to3", "from5", qos=1)
    m5 = c5.expect()
    m3 = c3.expect()
    assert (m5.topic, m5.payload, m5.qos) == ("mix/to5", b"from3", 1)
    assert (m3.topic, m3.payload, m3.qos) == ("mix/to3", b"from5", 1)
    assert m5.props == {}, "a 3.1.1 publication carries no properties"


@pytest.mark.parametrize("qos", [1, 2], ids=lambda q: f"qos{q}")
def test_fan_out_burst(broker, clients, qos):
    """A burst to several subscribers (both protocol versions): nothing lost, nothing doubled,
    order kept per subscriber."""
    n = 300
    subs = [clients(broker.port, version=v).connect() for v in (4, 5, 5)]
    for s in subs:
        s.subscribe("burst/t", qos)
    pub = clients(broker.port, version=V5).connect()
    for i in range(n):
        pub.paho.publish("burst/t", str(i), qos=qos)
    pub.publish("burst/t", "end", qos=qos)
    for s in subs:
        got = s.expect_n(n + 1, timeout=15)
        assert [m.payload.decode() for m in got] == [str(i) for i in range(n)] + ["end"]
        assert {m.qos for m in got} == {qos}
    for s in subs:
        s.expect_none(0.1)
