"""The Debian mosquitto_pub / mosquitto_sub command-line clients against the broker."""

from __future__ import annotations

import queue
import subprocess
import threading

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_util import HOST, V5, props

pytestmark = pytest.mark.usefixtures("mosquitto_clients")

FMT = "MSG|%t|%q|%r|%p"


class MosquittoSub:
    """mosquitto_sub -d with line-buffered output, started and waited on until its SUBACK."""

    def __init__(self, port, version, topic, qos, *extra, count=1, wait=5, fmt=FMT):
        self.cmd = [
            "stdbuf", "-oL",
            "mosquitto_sub", "-d", "-h", HOST, "-p", str(port), "-V", version,
            "-t", topic, "-q", str(qos), "-C", str(count), "-W", str(wait), "-F", fmt, *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_until_subscribed()

    def _read(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_until_subscribed(self, timeout=5.0):
        """Until the SUBACK (or a message, or the exit: a persistent session may deliver
        before the SUBACK and -C may end the process)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"{self.cmd}: no SUBACK within {timeout}s: {self.all}"
                ) from None
            if line is None:
                self.lines.put(None)
                return
            self.all.append(line)
            if "received SUBACK" in line or line.startswith("MSG|"):
                return

    def finish(self, timeout=10.0):
        """Waits for the exit; returns (exit status, formatted message lines, all lines)."""
        rc = self.proc.wait(timeout)
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                break
            self.all.append(line)
        msgs = [line for line in self.all if line.startswith("MSG|")]
        return rc, msgs, self.all

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mosquitto_pub(port, version, *args):
    r = subprocess.run(
        ["mosquitto_pub", "-d", "-h", HOST, "-p", str(port), "-V", version, *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode == 0, f"mosquitto_pub {args} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.fixture
def subs():
    made = []

    def make(*a, **kw):
        s = MosquittoSub(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pytest.mark.parametrize("version", ["311", "5"], ids=["v311", "v5"])
@pytest.mark.parametrize("qos", [0, 1, 2], ids=lambda q: f"qos{q}")
def test_round_trip(broker, subs, version, qos):
    sub = subs(broker.port, version, "cli/rt/#", qos)
    out = mosquitto_pub(
        broker.port, version, "-t", "cli/rt/x", "-q", str(qos), "-m", f"hello {qos}"
    )
    assert f"sending PUBLISH (d0, q{qos}, r0, m1, 'cli/rt/x'" in out, out
    if qos == 1:
        assert "received PUBACK (Mid: 1, RC:0)" in out, out
    if qos == 2:
        assert "received PUBREC (Mid: 1)" in out, out
        assert "received PUBCOMP (Mid: 1, RC:0)" in out, out
    rc, msgs, lines = sub.finish()
    assert rc == 0, lines
    assert msgs == [f"MSG|cli/rt/x|{qos}|0|hello {qos}"], lines
    assert any(f"received PUBLISH (d0, q{qos}, r0, m" in x and "'cli/rt/x'" in x for x in lines), (
        lines
    )


@pytest.mark.parametrize("version", ["311", "5"], ids=["v311", "v5"])
def test_retained_with_mosquitto_pub_r(broker, subs, version):
    mosquitto_pub(broker.port, version, "-t", "cli/ret", "-q", "1", "-r", "-m", "kept")
    sub = subs(broker.port, version, "cli/ret", 1)
    rc, msgs, lines = sub.finish()
    assert rc == 0, lines
    assert msgs == ["MSG|cli/ret|1|1|kept"], lines

    # Delete it with an empty retained message: a new subscriber then sees no retained message.
    mosquitto_pub(broker.port, version, "-t", "cli/ret", "-q", "1", "-r", "-n")
    sub = subs(broker.port, version, "cli/ret", 1, "--retained-only", count=5)
    mosquitto_pub(broker.port, version, "-t", "cli/ret", "-q", "1", "-m", "live")
    rc, msgs, lines = sub.finish()
    assert rc == 0, lines
    assert msgs == [], f"retained message not deleted: {lines}"


def test_v5_properties_from_mosquitto_pub_to_paho(broker, clients):
    c = clients(broker.port, version=V5).connect()
    c.subscribe("cli/props", 1)
    mosquitto_pub(
        broker.port, "5", "-t", "cli/props", "-q", "1", "-m", "{}",
        "-D", "publish", "user-property", "origin", "mosquitto_pub",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "response-topic", "cli/answer",
        "-D", "publish", "correlation-data", "abc123",
        "-D", "publish", "message-expiry-interval", "100",
    )  # fmt: skip
    m = c.expect()
    assert (m.topic, m.payload, m.qos) == ("cli/props", b"{}", 1)
    assert m.props.get("UserProperty") == [("origin", "mosquitto_pub")]
    assert m.props.get("ContentType") == "application/json"
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("ResponseTopic") == "cli/answer"
    assert m.props.get("CorrelationData") == b"abc123"
    assert 99 <= m.props.get("MessageExpiryInterval", -1) <= 100


def test_v5_properties_from_paho_to_mosquitto_sub(broker, subs, clients):
    sub = subs(
        broker.port, "5", "cli/p2m", 1, "-D", "subscribe", "subscription-identifier", "9",
        fmt="MSG|%t|%P|%C|%R|%S|%p",
    )  # fmt: skip
    pub = clients(broker.port, version=V5).connect()
    pub.publish(
        "cli/p2m",
        b"payload",
        qos=1,
        properties=props(
            PacketTypes.PUBLISH,
            UserProperty=[("k", "v")],
            ContentType="text/plain",
            ResponseTopic="cli/resp",
        ),
    )
    rc, msgs, lines = sub.finish()
    assert rc == 0, lines
    assert msgs == ["MSG|cli/p2m|k:v|text/plain|cli/resp|9|payload"], lines


def test_mosquitto_sub_persistent_session(broker, subs):
    """mosquitto_sub -c -i (clean session off) gets what was published while it was away."""
    for version in ("311", "5"):
        cid = f"cli-persist-{version}"
        extra = ["-c", "-i", cid] + (["-x", "60"] if version == "5" else [])
        sub = subs(broker.port, version, f"cli/persist/{version}", 1, *extra, "-E")
        rc, _, lines = sub.finish()
        assert rc == 0, lines
        mosquitto_pub(
            broker.port, version, "-t", f"cli/persist/{version}", "-q", "1", "-m", "while away"
        )
        sub = subs(broker.port, version, f"cli/persist/{version}", 1, *extra, count=1)
        rc, msgs, lines = sub.finish()
        assert rc == 0, lines
        assert msgs == [f"MSG|cli/persist/{version}|1|0|while away"], lines
        assert any("received CONNACK (0)" in x for x in lines), lines
