"""MQTT 5.0 features: properties passed through, message expiry, topic aliases from the client,
subscription identifiers, subscription options (No Local, Retain As Published, Retain
Handling), request/response, CONNACK properties."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_util import (
    V5,
    V311,
    RawClient,
    connect_packet,
    decode_publish,
    props,
    unique_id,
)


def pub_props(**kw):
    return props(PacketTypes.PUBLISH, **kw)


# -- properties passed through ------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_user_properties_passed_through(broker, clients, qos):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("up/t", 2)
    user = [("k1", "v1"), ("k2", "v2"), ("k1", "v3"), ("empty", ""), ("ключ", "値")]
    pub.publish("up/t", b"x", qos=qos, properties=pub_props(UserProperty=user))
    m = sub.expect()
    # Order and duplicates are preserved [MQTT-3.3.2-17/18].
    assert m.props.get("UserProperty") == user


def test_user_properties_on_retained_message(broker, clients):
    pub = clients(broker.port, version=V5).connect()
    pub.publish("up/ret", b"r", qos=1, retain=True, properties=pub_props(UserProperty=[("a", "b")]))
    sub = clients(broker.port, version=V5).connect()
    sub.subscribe("up/ret", 1)
    m = sub.expect()
    assert m.retain is True
    assert m.props.get("UserProperty") == [("a", "b")]


def test_content_type_and_payload_format_passed_through(broker, clients):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("ct/#", 1)
    pub.publish(
        "ct/json",
        b'{"t": 21.5}',
        qos=1,
        properties=pub_props(
            ContentType="application/json; charset=utf-8", PayloadFormatIndicator=1
        ),
    )
    pub.publish("ct/bin", b"\xff\x00", qos=1, properties=pub_props(PayloadFormatIndicator=0))
    pub.publish("ct/none", b"plain", qos=1)
    m1, m2, m3 = sub.expect_n(3)
    assert m1.topic == "ct/json"
    assert m1.props.get("ContentType") == "application/json; charset=utf-8"
    assert m1.props.get("PayloadFormatIndicator") == 1
    assert m2.topic == "ct/bin"
    # 0 is the default: sending it or leaving it out both mean "unspecified bytes".
    assert m2.props.get("PayloadFormatIndicator", 0) == 0
    assert "ContentType" not in m2.props
    assert m3.topic == "ct/none"
    assert "ContentType" not in m3.props and m3.props.get("PayloadFormatIndicator", 0) == 0


def test_request_response_properties(broker, clients):
    """Response Topic and Correlation Data go through unchanged, and a responder can answer."""
    requester = clients(broker.port, version=V5).connect()
    responder = clients(broker.port, version=V5).connect()
    responder.subscribe("svc/request", 1)
    requester.subscribe("svc/reply/42", 1)
    corr = b"\x00\xffcorrelation-\x01"
    requester.publish(
        "svc/request",
        b"ping",
        qos=1,
        properties=pub_props(ResponseTopic="svc/reply/42", CorrelationData=corr),
    )
    req = responder.expect()
    assert req.payload == b"ping"
    assert req.props.get("ResponseTopic") == "svc/reply/42"
    assert req.props.get("CorrelationData") == corr
    responder.publish(
        req.props["ResponseTopic"],
        b"pong",
        qos=1,
        properties=pub_props(CorrelationData=req.props["CorrelationData"]),
    )
    resp = requester.expect()
    assert (resp.topic, resp.payload) == ("svc/reply/42", b"pong")
    assert resp.props.get("CorrelationData") == corr
    assert "ResponseTopic" not in resp.props


def test_v5_properties_not_sent_to_v311_subscriber(broker, clients):
    """A 3.1.1 subscriber still gets a message published with 5.0 properties (and no error)."""
    sub = clients(broker.port, version=V311).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("strip/t", 1)
    pub.publish(
        "strip/t",
        b"data",
        qos=1,
        properties=pub_props(
            UserProperty=[("a", "b")], ContentType="text/plain", MessageExpiryInterval=60
        ),
    )
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("strip/t", b"data", 1)
    assert not sub.disconnected.is_set()


# -- message expiry -----------------------------------------------------------------------------


def test_message_expiry_forwarded_to_online_subscriber(broker, clients):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("mx/online", 1)
    pub.publish("mx/online", b"x", qos=1, properties=pub_props(MessageExpiryInterval=30))
    pub.publish("mx/online", b"y", qos=1)
    m = sub.expect()
    assert 29 <= m.props.get("MessageExpiryInterval", -1) <= 30, m.props
    m = sub.expect()
    assert "MessageExpiryInterval" not in m.props


def test_message_expiry_offline_and_retained(broker, clients):
    """Messages that expire while waiting for an offline session, or as retained messages, are
    not delivered; the ones still alive carry the remaining interval."""
    cid = unique_id("expiry")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=300)
    s.subscribe("mx/q/#", 1)
    s.disconnect()

    pub = clients(broker.port, version=V5).connect()
    pub.publish("mx/q/short", b"expires", qos=1, properties=pub_props(MessageExpiryInterval=1))
    pub.publish("mx/q/long", b"lives", qos=1, properties=pub_props(MessageExpiryInterval=60))
    pub.publish("mx/q/forever", b"no expiry", qos=1)
    pub.publish(
        "mx/r/short", b"expires", qos=1, retain=True, properties=pub_props(MessageExpiryInterval=1)
    )
    pub.publish(
        "mx/r/long", b"lives", qos=1, retain=True, properties=pub_props(MessageExpiryInterval=60)
    )
    published = time.monotonic()
    time.sleep(1.7)

    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=300)
    assert s2.session_present is True
    waited = time.monotonic() - published
    got = s2.expect_n(2)
    assert [(m.topic, m.payload) for m in got] == [
        ("mx/q/long", b"lives"),
        ("mx/q/forever", b"no expiry"),
    ]
    remaining = got[0].props.get("MessageExpiryInterval")
    assert remaining is not None, "the remaining Message Expiry Interval must be forwarded"
    assert 60 - waited - 1.5 <= remaining <= 60 - int(waited), (
        f"Message Expiry Interval {remaining} after waiting {waited:.1f}s of 60"
    )
    assert "MessageExpiryInterval" not in got[1].props
    s2.expect_none()

    r = clients(broker.port, version=V5).connect()
    r.subscribe("mx/r/#", 1)
    m = r.expect()
    assert (m.topic, m.payload, m.retain) == ("mx/r/long", b"lives", True)
    assert 60 - waited - 1.5 <= m.props.get("MessageExpiryInterval", -1) <= 60 - int(waited)
    r.expect_none()


# -- topic aliases ------------------------------------------------------------------------------


@pytest.mark.parametrize("sub_version", [V311, V5], ids=["sub-v311", "sub-v5"])
def test_topic_alias_from_client(broker, clients, sub_version):
    pub = clients(broker.port, version=V5).connect()
    assert pub.connack_props.get("TopicAliasMaximum") == 1024, pub.connack_props
    sub = clients(broker.port, version=sub_version).connect()
    sub.subscribe("alias/#", 1)
    pub.publish("alias/one", b"1", qos=1, properties=pub_props(TopicAlias=1))
    pub.publish("", b"2", qos=1, properties=pub_props(TopicAlias=1))
    pub.publish("alias/two", b"3", qos=0, properties=pub_props(TopicAlias=2))
    pub.publish("", b"4", qos=0, properties=pub_props(TopicAlias=2))
    # Re-map alias 1 to another topic.
    pub.publish("alias/three", b"5", qos=1, properties=pub_props(TopicAlias=1))
    pub.publish("", b"6", qos=2, properties=pub_props(TopicAlias=1))
    got = sub.expect_n(6)
    assert [(m.topic, m.payload) for m in got] == [
        ("alias/one", b"1"),
        ("alias/one", b"2"),
        ("alias/two", b"3"),
        ("alias/two", b"4"),
        ("alias/three", b"5"),
        ("alias/three", b"6"),
    ]
    if sub_version == V5:
        assert all("TopicAlias" not in m.props for m in got), "paho does not accept aliases"
    assert not pub.disconnected.is_set()


def test_topic_alias_with_retained_message(broker, clients):
    """A retained message published through an alias is stored under the real topic."""
    pub = clients(broker.port, version=V5).connect()
    pub.publish("alias/ret", b"v1", qos=1, retain=True, properties=pub_props(TopicAlias=3))
    pub.publish("", b"v2", qos=1, retain=True, properties=pub_props(TopicAlias=3))
    sub = clients(broker.port, version=V5).connect()
    sub.subscribe("alias/#", 1)
    m = sub.expect()
    assert (m.topic, m.payload, m.retain) == ("alias/ret", b"v2", True)
    sub.expect_none()


def test_topic_alias_above_maximum_is_refused(broker_factory, clients):
    broker = broker_factory("--topic-alias-maximum", "2")
    pub = clients(broker.port, version=V5).connect()
    assert pub.connack_props.get("TopicAliasMaximum") == 2
    pub.paho.publish("alias/x", b"bad", qos=1, properties=pub_props(TopicAlias=3))
    d = pub.wait_disconnected()
    assert (d.from_server, d.reason) == (True, 0x94), f"{d}"


def test_unknown_topic_alias_is_refused(broker, clients):
    """An empty topic with an alias that was never set: DISCONNECT with Protocol Error (0x82,
    Mosquitto's choice) or Topic Alias invalid (0x94)."""
    pub = clients(broker.port, version=V5).connect()
    pub.paho.publish("", b"bad", qos=1, properties=pub_props(TopicAlias=5))
    d = pub.wait_disconnected()
    assert d.from_server and d.reason in (0x82, 0x94), f"{d}"


def _raw_v5_subscriber(port, topic, topic_alias_maximum):
    raw = RawClient(port)
    conn_props = (
        b"" if topic_alias_maximum is None else b"\x22" + topic_alias_maximum.to_bytes(2, "big")
    )
    raw.send(connect_packet(unique_id("rawalias"), version=V5, properties=conn_props))
    pkt = raw.read_packet()
    assert pkt is not None and pkt[0] == 2 and pkt[2][1] == 0, f"CONNACK {pkt}"
    assert raw.subscribe(topic, 1) == b"\x01"
    return raw


def _read_publishes(raw, n):
    out = []
    for _ in range(n):
        pkt = raw.read_packet()
        assert pkt is not None and pkt[0] == 3, f"expected PUBLISH, got {pkt}"
        p = decode_publish(pkt[1], pkt[2])
        if p.packet_id is not None:
            raw.puback(p.packet_id)
        out.append(p)
    return out


def test_outgoing_topic_aliases(broker, clients):
    """A client announcing Topic Alias Maximum gets the topic once, then only the alias."""
    raw = _raw_v5_subscriber(broker.port, "oa/#", 2)
    try:
        pub = clients(broker.port, version=V5).connect()
        for t in ["oa/first", "oa/first", "oa/second", "oa/second", "oa/first", "oa/third"]:
            pub.publish(t, t.encode(), qos=1)
        got = _read_publishes(raw, 6)
        aliases = [dict(p.props).get(0x23) for p in got]
        topics = [p.topic for p in got]
        assert [p.payload for p in got] == [
            b"oa/first",
            b"oa/first",
            b"oa/second",
            b"oa/second",
            b"oa/first",
            b"oa/third",
        ]
        # First use of a topic: full topic and a new alias; later uses: empty topic + alias.
        assert topics[0] == "oa/first" and aliases[0] in (1, 2)
        assert topics[1] == "" and aliases[1] == aliases[0]
        assert topics[2] == "oa/second" and aliases[2] in (1, 2) and aliases[2] != aliases[0]
        assert topics[3] == "" and aliases[3] == aliases[2]
        assert topics[4] == "" and aliases[4] == aliases[0]
        # No alias left (maximum 2): the topic is sent in full, with no alias or a re-used one.
        assert topics[5] == "oa/third" and aliases[5] in (None, 1, 2)
        for p in got:
            assert all(ident != 0x23 or 1 <= v <= 2 for ident, v in p.props)
    finally:
        raw.close()


def test_no_outgoing_topic_aliases_without_maximum(broker, clients):
    raw = _raw_v5_subscriber(broker.port, "na/#", None)
    try:
        pub = clients(broker.port, version=V5).connect()
        for _ in range(3):
            pub.publish("na/t", b"x", qos=1)
        got = _read_publishes(raw, 3)
        assert [p.topic for p in got] == ["na/t"] * 3
        assert all(0x23 not in dict(p.props) for p in got)
    finally:
        raw.close()


def test_outgoing_topic_aliases_disabled(broker_factory, clients):
    broker = broker_factory("--outgoing-topic-aliases", "false")
    raw = _raw_v5_subscriber(broker.port, "nd/#", 10)
    try:
        pub = clients(broker.port, version=V5).connect()
        for _ in range(3):
            pub.publish("nd/t", b"x", qos=1)
        got = _read_publishes(raw, 3)
        assert [p.topic for p in got] == ["nd/t"] * 3
        assert all(0x23 not in dict(p.props) for p in got)
    finally:
        raw.close()


# -- subscription identifiers -------------------------------------------------------------------


def test_subscription_identifier(broker, clients):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    assert sub.connack_props.get("SubscriptionIdentifierAvailable", 1) == 1
    sub.subscribe("sid/a", 1, sub_id=42)
    sub.subscribe("sid/b", 1)
    sub.subscribe("sid/big/#", 1, sub_id=268435455)
    pub.publish("sid/a", b"a", qos=1)
    pub.publish("sid/b", b"b", qos=1)
    pub.publish("sid/big/x", b"c", qos=1)
    a, b, c = sub.expect_n(3)
    assert (a.topic, a.props.get("SubscriptionIdentifier")) == ("sid/a", [42])
    assert b.topic == "sid/b" and "SubscriptionIdentifier" not in b.props
    assert (c.topic, c.props.get("SubscriptionIdentifier")) == ("sid/big/x", [268435455])


def test_subscription_identifiers_of_overlapping_subscriptions(broker, clients):
    """One copy carrying both identifiers, or one copy per subscription each with its own:
    both are allowed [MQTT-3.3.4-3..5]."""
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("ov/#", 1, sub_id=1)
    sub.subscribe("ov/+", 1, sub_id=2)
    pub.publish("ov/x", b"both", qos=1)
    got = sub.drain(0.5)
    assert 1 <= len(got) <= 2, got
    assert all(m.payload == b"both" for m in got)
    ids = [sorted(m.props.get("SubscriptionIdentifier", [])) for m in got]
    if len(got) == 1:
        assert ids == [[1, 2]]
    else:
        assert sorted(ids) == [[1], [2]]


def test_subscription_identifier_on_retained_delivery(broker, clients):
    pub = clients(broker.port, version=V5).connect()
    pub.publish("sid/ret", b"r", qos=1, retain=True)
    sub = clients(broker.port, version=V5).connect()
    sub.subscribe("sid/ret", 1, sub_id=7)
    m = sub.expect()
    assert (m.retain, m.props.get("SubscriptionIdentifier")) == (True, [7])


def test_subscription_identifier_replaced_on_resubscribe(broker, clients):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("sid/re", 1, sub_id=3)
    sub.subscribe("sid/re", 1, sub_id=4)
    pub.publish("sid/re", b"x", qos=1)
    m = sub.expect()
    assert m.props.get("SubscriptionIdentifier") == [4]
    sub.expect_none()


# -- subscription options -----------------------------------------------------------------------


def test_no_local(broker, clients):
    me = clients(broker.port, version=V5).connect()
    other = clients(broker.port, version=V5).connect()
    me.subscribe("nl/t", 1, no_local=True)
    me.publish("nl/t", b"from me", qos=1)
    other.publish("nl/t", b"from other", qos=1)
    m = me.expect()
    assert m.payload == b"from other", f"No Local subscriber got its own message: {m}"
    me.expect_none()


def test_no_local_off_gets_own_messages(broker, clients):
    me = clients(broker.port, version=V5).connect()
    me.subscribe("nl/off", 1, no_local=False)
    me.publish("nl/off", b"echo", qos=1)
    assert me.expect().payload == b"echo"


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_retain_as_published(broker, clients, rap):
    sub = clients(broker.port, version=V5).connect()
    pub = clients(broker.port, version=V5).connect()
    sub.subscribe("rap/t", 1, retain_as_published=rap)
    pub.publish("rap/t", b"retained", qos=1, retain=True)
    pub.publish("rap/t", b"plain", qos=1, retain=False)
    m1, m2 = sub.expect_n(2)
    assert (m1.payload, m1.retain) == (b"retained", rap)
    assert (m2.payload, m2.retain) == (b"plain", False)
    # Retained messages sent because of a new subscription always have RETAIN 1.
    late = clients(broker.port, version=V5).connect()
    late.subscribe("rap/t", 1, retain_as_published=rap)
    m = late.expect()
    assert (m.payload, m.retain) == (b"retained", True)


@pytest.mark.parametrize("handling", [0, 1, 2], ids=lambda h: f"rh{h}")
def test_retain_handling(broker, clients, handling):
    pub = clients(broker.port, version=V5).connect()
    pub.publish("rh/t", b"kept", qos=1, retain=True)
    sub = clients(broker.port, version=V5).connect()

    sub.subscribe("rh/t", 1, retain_handling=handling)
    first = sub.drain(0.3)
    sub.subscribe("rh/t", 1, retain_handling=handling)  # the subscription exists now
    second = sub.drain(0.3)

    expect_first = [] if handling == 2 else [(b"kept", True)]
    expect_second = [(b"kept", True)] if handling == 0 else []
    assert [(m.payload, m.retain) for m in first] == expect_first, "on the new subscription"
    assert [(m.payload, m.retain) for m in second] == expect_second, "on the repeated subscription"


def test_retain_handling_1_with_resumed_session(broker, clients):
    """Retain Handling 1: a subscription that exists in a resumed session is not new."""
    pub = clients(broker.port, version=V5).connect()
    pub.publish("rh1/t", b"kept", qos=1, retain=True)
    cid = unique_id("rh1")
    s = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    s.subscribe("rh1/t", 1, retain_handling=1)
    assert s.expect().payload == b"kept"
    s.disconnect()
    s2 = clients(broker.port, cid, V5).connect(clean_start=False, session_expiry=60)
    assert s2.session_present is True
    s2.subscribe("rh1/t", 1, retain_handling=1)
    s2.expect_none()
    s2.unsubscribe("rh1/t")
    s2.subscribe("rh1/t", 1, retain_handling=1)
    m = s2.expect()
    assert (m.payload, m.retain) == (b"kept", True)


# -- CONNACK ------------------------------------------------------------------------------------


def test_connack_properties_defaults(broker, clients):
    c = clients(broker.port, version=V5).connect()
    p = c.connack_props
    assert p.get("TopicAliasMaximum") == 1024
    assert p.get("ReceiveMaximum", 65535) == 1024
    assert p.get("MaximumPacketSize") == 1048576
    assert p.get("RetainAvailable", 1) == 1
    assert p.get("WildcardSubscriptionAvailable", 1) == 1
    assert p.get("SharedSubscriptionAvailable", 1) == 1
    assert p.get("MaximumQoS", 2) == 2
    assert "ServerKeepAlive" not in p
