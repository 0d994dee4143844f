"""The edge bridge (`[[bridge]]` sections of the config file) against real upstreams: Debian's
Mosquitto broker (MQTT 5.0 and 3.1.1, anonymous or with a password file) and a second
rookery-broker process. Covers prefix remapping both ways, the retain flag, loop prevention
when both sides carry the same topics, queueing in the durable store while the upstream is
down (also across a restart of the edge broker), credentials, config errors and the metrics.

Mosquitto runs from a generated config on a free port; stopping it (SIGTERM, which also writes
its persistence file) and starting it again on the same port plays the unreachable upstream.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BROKER_BIN, Broker
from mqtt_util import HOST, V5, V311, WAIT, Client, Msg

# Bridges in these tests reconnect quickly, so that "the upstream is back" is seen at once.
FAST_RECONNECT = {"reconnect_min_ms": 100, "reconnect_max_ms": 500}
# How long queued messages may take to get through once the upstream is back.
DELIVERY_WAIT = 20.0
# How long a test listens for a duplicate after the last expected message (see test 3).
ECHO_QUIET = 2.0
METRICS_RE = re.compile(r"metrics on http://([0-9.]+:\d+)/metrics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- Mosquitto as the upstream ---------------------------------------------------------------


def mosquitto_bin() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
    )
    if found is None:
        pytest.fail("mosquitto missing: install the mosquitto package (scripts/test does)")
    return found


class Mosquitto:
    """One Mosquitto broker on a fixed port, which may be stopped and started again (same
    port, same persistence directory). Shaped like conftest's Broker (log_path, port, log(),
    stop()) so that its log is attached to the report of a failing test."""

    def __init__(
        self, dir: Path, name: str, *, passwords: Path | None = None, persistence: bool = True
    ) -> None:
        self.dir = dir
        self.port = free_port()
        self.log_path = dir / f"{name}.log"
        self.conf = dir / f"{name}.conf"
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if passwords else 'true'}",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        if passwords is not None:
            lines.append(f"password_file {passwords}")
        if persistence:
            store = dir / f"{name}.persist"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/"]
        if os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to `mosquitto`, who cannot write here
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        with open(self.log_path, "ab") as log:
            log.write(f"$ mosquitto -c {self.conf}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [mosquitto_bin(), "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto not listening on {self.port} in {WAIT}s:\n{self.log()}")
                time.sleep(0.02)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@pytest.fixture
def mosquitto_factory(
    request: pytest.FixtureRequest, tmp_path: Path, broker_factory
) -> Iterator[Callable[..., Mosquitto]]:
    """make(passwords=None, persistence=True) -> a running Mosquitto, stopped after the test.
    Registered with conftest's broker list (which broker_factory creates) so that a failing
    test's report carries its log too."""
    made: list[Mosquitto] = []

    def make(**kw: Any) -> Mosquitto:
        m = Mosquitto(tmp_path, f"mosquitto-{len(made)}", **kw)
        made.append(m)
        request.node._rookery_brokers.append(m)
        return m.start()

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def mosquitto(mosquitto_factory) -> Mosquitto:
    return mosquitto_factory()


# -- bridge configuration and waits ----------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[\n  " + ",\n  ".join(toml_value(x) for x in v) + ",\n]"
    return json.dumps(str(v))  # a TOML basic string


def bridge_section(name: str, address: str, topics: list[dict[str, Any]], **opts: Any) -> str:
    fields = {"name": name, "address": address, **opts, "topics": topics}
    return "[[bridge]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())


def write_config(path: Path, *sections: str) -> Path:
    path.write_text("\n".join(sections))
    return path


def wait_log(b: Broker, text: str, count: int = 1, timeout: float = WAIT) -> str:
    """Waits until `text` appears `count` times in the broker's log; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = b.log()
        if log.count(text) >= count:
            return log
        if b.proc is not None and b.proc.poll() is not None:
            pytest.fail(f"broker exited with {b.proc.returncode} waiting for {text!r}:\n{log}")
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged {count} time(s) within {timeout}s:\n{log[-6000:]}")
        time.sleep(0.02)


def collect_distinct(c: Client, want: set[bytes], timeout: float) -> list[Msg]:
    """Receives until every payload in `want` was seen (duplicates allowed); fails at the
    deadline naming what is missing."""
    got: list[Msg] = []
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = sorted(want - seen)
            raise AssertionError(
                f"{len(missing)} of {len(want)} messages never arrived, e.g. {missing[:10]}"
            )
        try:
            m = c.messages.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        got.append(m)
        seen.add(m.payload)
    return got


OUT_SENSORS = {"pattern": "sensors/#", "direction": "out", "qos": 1, "remote_prefix": "site1/"}
IN_CMD = {"pattern": "cmd/#", "direction": "in", "qos": 1, "remote_prefix": "site1/"}


# -- 1, 2: one direction each, with prefixes -------------------------------------------------


def test_out_to_mosquitto_with_prefix_and_retain(broker_factory, clients, mosquitto, tmp_path):
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [OUT_SENSORS], **FAST_RECONNECT),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")

    up = clients(mosquitto.port, version=V5).connect()
    assert up.subscribe("site1/sensors/#", 1) == [1]
    pub = clients(edge.port).connect()
    assert pub.publish("sensors/t1", b"21.5", qos=1) == 0
    m = up.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("site1/sensors/t1", b"21.5", 1, False)

    # Retained locally -> retained upstream: a later subscriber on Mosquitto gets it retained.
    assert pub.publish("sensors/t2", b"kept", qos=1, retain=True) == 0
    m = up.expect()  # the live copy: it has reached Mosquitto
    assert (m.topic, m.payload) == ("site1/sensors/t2", b"kept")
    late = clients(mosquitto.port, version=V5).connect()
    late.subscribe("site1/sensors/t2", 1)
    m = late.expect()
    assert (m.topic, m.payload, m.retain) == ("site1/sensors/t2", b"kept", True)
    # Other topics do not go out.
    pub.publish("other/t", b"no", qos=1)
    up.expect_none()


def test_in_from_mosquitto_with_prefix(broker_factory, clients, mosquitto, tmp_path):
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [IN_CMD], **FAST_RECONNECT),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")

    local = clients(edge.port).connect()
    local.subscribe("#", 1)
    up = clients(mosquitto.port, version=V311).connect()
    up.publish("site1/cmd/x", b"reboot", qos=1)
    m = local.expect()
    assert (m.topic, m.payload, m.qos) == ("cmd/x", b"reboot", 1)
    up.publish("site2/cmd/x", b"not ours", qos=1)
    local.expect_none()


# -- 3: both ways on the same topics over MQTT 3.1.1 (the echo filter) -----------------------


def test_both_ways_with_mosquitto_over_311_no_echo(broker_factory, clients, mosquitto, tmp_path):
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section(
            "mosq", mosquitto.address,
            [{"pattern": "shared/#", "direction": "both", "qos": 1}],
            protocol="3.1.1", **FAST_RECONNECT,
        ),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")

    local_sub = clients(edge.port).connect()
    local_sub.subscribe("shared/#", 1)
    up_sub = clients(mosquitto.port, version=V311).connect()
    up_sub.subscribe("shared/#", 1)
    local_pub = clients(edge.port).connect()
    up_pub = clients(mosquitto.port, version=V311).connect()

    local_pub.publish("shared/a", b"from-edge", qos=1)
    assert [(m.topic, m.payload) for m in up_sub.expect_n(1)] == [("shared/a", b"from-edge")]
    assert [(m.topic, m.payload) for m in local_sub.expect_n(1)] == [("shared/a", b"from-edge")]

    up_pub.publish("shared/b", b"from-mosquitto", qos=1)
    assert [(m.topic, m.payload) for m in local_sub.expect_n(1)] == [
        ("shared/b", b"from-mosquitto")
    ]
    assert [(m.topic, m.payload) for m in up_sub.expect_n(1)] == [("shared/b", b"from-mosquitto")]

    # A waiting for absence: an echo loop would bring each message back within milliseconds
    # (Mosquitto returns the bridge's own 3.1.1 publish to it), so 2 s of silence on both
    # subscribers shows that none comes back, not just that none came back yet.
    assert local_sub.drain(ECHO_QUIET) == []
    assert up_sub.drain(ECHO_QUIET) == []


# -- 4, 5: the upstream is down: the edge queues in its durable store -------------------------


def queued_for_bridge(puback: int | None) -> None:
    """The PUBACK of a local publish meant for the upstream while it is down: 0x00, as the
    bridge's offline session matches it; 0x10 means no session took it."""
    assert puback == 0, (
        f"PUBACK reason {puback if puback is None else hex(puback)}"
        + (" (no matching subscribers): the bridge's local session is not there to queue "
           "the message for the upstream" if puback == 0x10 else "")
    )


def persistent_upstream_subscriber(clients, mosquitto: Mosquitto, cid: str) -> Client:
    """A clean-session-0 subscriber on Mosquitto: with Mosquitto's persistence, its session
    (and what is queued for it) survives the restart of Mosquitto, so messages the bridge
    delivers before this client is back are not lost to the test."""
    c = clients(mosquitto.port, cid, V311, clean_session=False).connect()
    return c


def test_queued_while_upstream_down_then_delivered(broker_factory, clients, mosquitto, tmp_path):
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-q")
    sub.subscribe("site1/sensors/#", 1)
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [OUT_SENSORS], **FAST_RECONNECT),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")

    mosquitto.stop()
    sub.wait_disconnected()
    wait_log(edge, "bridge link down")
    pub = clients(edge.port).connect()
    for n in range(50):
        queued_for_bridge(pub.publish(f"sensors/q/{n}", f"q{n}".encode(), qos=1))

    mosquitto.start()
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-q")
    assert sub.session_present, "Mosquitto lost the subscriber's session (persistence)"
    got = collect_distinct(sub, {f"q{n}".encode() for n in range(50)}, DELIVERY_WAIT)
    wait_log(edge, "bridge connected", count=2)
    assert {(m.topic, m.payload) for m in got} == {
        (f"site1/sensors/q/{n}", f"q{n}".encode()) for n in range(50)
    }


def test_queued_before_the_first_connection(broker_factory, clients, mosquitto, tmp_path):
    """The edge starts (fresh data dir) while the upstream is unreachable: what is published
    for the upstream meanwhile is queued too, not only after a first connection."""
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-f")
    sub.subscribe("site1/sensors/#", 1)
    mosquitto.stop()
    sub.wait_disconnected()
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [OUT_SENSORS], **FAST_RECONNECT),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge cannot connect")
    pub = clients(edge.port).connect()
    for n in range(50):
        queued_for_bridge(pub.publish(f"sensors/q/{n}", f"q{n}".encode(), qos=1))

    mosquitto.start()
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-f")
    assert sub.session_present, "Mosquitto lost the subscriber's session (persistence)"
    collect_distinct(sub, {f"q{n}".encode() for n in range(50)}, DELIVERY_WAIT)


@pytest.mark.timeout(60)
def test_queue_survives_edge_restart_while_upstream_down(
    broker_factory, clients, mosquitto, tmp_path
):
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-r")
    sub.subscribe("site1/sensors/#", 1)
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [OUT_SENSORS], **FAST_RECONNECT),
    )
    args = ["--config", str(cfg), "--data-dir", str(tmp_path / "edge-data")]
    edge = broker_factory(*args)
    wait_log(edge, "bridge connected")

    mosquitto.stop()
    sub.wait_disconnected()
    wait_log(edge, "bridge link down")
    pub = clients(edge.port).connect()
    before = [f"before-{n}".encode() for n in range(50)]
    for n, payload in enumerate(before):
        queued_for_bridge(pub.publish(f"sensors/q/{n}", payload, qos=1))
    pub.close()

    assert edge.stop() == 0, f"edge did not stop cleanly:\n{edge.log()}"
    edge = broker_factory(*args)
    wait_log(edge, "bridge cannot connect")
    # Published after the restart, the upstream never reachable in this process: the restored
    # offline session queues these too.
    pub = clients(edge.port).connect()
    after = [f"after-{n}".encode() for n in range(10)]
    for n, payload in enumerate(after):
        queued_for_bridge(pub.publish(f"sensors/r/{n}", payload, qos=1))

    mosquitto.start()
    sub = persistent_upstream_subscriber(clients, mosquitto, "site-sub-r")
    assert sub.session_present, "Mosquitto lost the subscriber's session (persistence)"
    collect_distinct(sub, set(before) | set(after), DELIVERY_WAIT)


# -- 6: two Rookery brokers bridging to each other, both ways, MQTT 5.0 ----------------------


def test_rookery_to_rookery_both_ways_no_echo(broker_factory, clients, tmp_path):
    """MQTT 5 between two Rookery brokers, the same topics bridged both ways: No Local on both
    sides keeps each message from coming back, so every subscriber gets it exactly once."""
    cloud = broker_factory("--node-id", "cloud")
    topics = [{"pattern": "loop/#", "direction": "both", "qos": 1}]
    edge_cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("cloud", f"{HOST}:{cloud.port}", topics, **FAST_RECONNECT),
    )
    edge = broker_factory("--node-id", "edge", "--config", str(edge_cfg))
    wait_log(edge, "bridge connected")

    edge_sub = clients(edge.port).connect()
    edge_sub.subscribe("loop/#", 1)
    cloud_sub = clients(cloud.port).connect()
    cloud_sub.subscribe("loop/#", 1)

    clients(edge.port).connect().publish("loop/a", b"from-edge", qos=1)
    assert [(m.topic, m.payload) for m in cloud_sub.expect_n(1)] == [("loop/a", b"from-edge")]
    assert [(m.topic, m.payload) for m in edge_sub.expect_n(1)] == [("loop/a", b"from-edge")]
    # Waiting for absence: a duplicate or a loop would show within milliseconds.
    assert cloud_sub.drain(ECHO_QUIET) == [], "duplicates at the cloud subscriber"
    assert edge_sub.drain(ECHO_QUIET) == [], "duplicates at the edge subscriber"

    clients(cloud.port).connect().publish("loop/b", b"from-cloud", qos=1)
    assert [(m.topic, m.payload) for m in edge_sub.expect_n(1)] == [("loop/b", b"from-cloud")]
    assert [(m.topic, m.payload) for m in cloud_sub.expect_n(1)] == [("loop/b", b"from-cloud")]
    assert edge_sub.drain(ECHO_QUIET) == [], "duplicates at the edge subscriber"
    assert cloud_sub.drain(ECHO_QUIET) == [], "duplicates at the cloud subscriber"


def test_mutual_bridges_do_not_loop_forever(broker_factory, clients, tmp_path):
    """Each broker bridges to the other, both ways, on the same topics: two bridges serve each
    direction, so a message arrives more than once (docs/bridge.md says to configure one
    bridge per pair), but the hops property stops every copy after one round: the copies are
    few and then nothing more comes."""
    edge_port, cloud_port = free_port(), free_port()
    topics = [{"pattern": "loop/#", "direction": "both", "qos": 1}]
    edge_cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("cloud", f"{HOST}:{cloud_port}", topics, **FAST_RECONNECT),
    )
    cloud_cfg = write_config(
        tmp_path / "cloud.toml",
        bridge_section("edge", f"{HOST}:{edge_port}", topics, **FAST_RECONNECT),
    )
    edge = broker_factory(
        "--node-id", "edge", "--listen", f"{HOST}:{edge_port}", "--config", str(edge_cfg)
    )
    cloud = broker_factory(
        "--node-id", "cloud", "--listen", f"{HOST}:{cloud_port}", "--config", str(cloud_cfg)
    )
    wait_log(edge, "bridge connected")
    wait_log(cloud, "bridge connected")
    edge_sub = clients(edge_port).connect()
    edge_sub.subscribe("loop/#", 1)
    cloud_sub = clients(cloud_port).connect()
    cloud_sub.subscribe("loop/#", 1)

    clients(edge_port).connect().publish("loop/a", b"from-edge", qos=1)
    assert cloud_sub.expect_n(1)[0].payload == b"from-edge"
    first_cloud = 1 + len(cloud_sub.drain(ECHO_QUIET))
    first_edge = len(edge_sub.drain(ECHO_QUIET))
    # At most one copy per path: the original and one per bridge hop.
    assert 1 <= first_cloud <= 3, first_cloud
    assert 1 <= first_edge <= 3, first_edge
    # Waiting for absence: a loop would keep copies coming.
    assert cloud_sub.drain(ECHO_QUIET) == [], "copies keep coming at the cloud: a loop"
    assert edge_sub.drain(ECHO_QUIET) == [], "copies keep coming at the edge: a loop"


# -- 7: credentials --------------------------------------------------------------------------


@pytest.fixture
def password_mosquitto(mosquitto_factory, tmp_path) -> Mosquitto:
    pw = tmp_path / "mosquitto.passwd"
    r = subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pw), "edge1", "s3cret"],
        capture_output=True, text=True, timeout=20,
    )
    assert r.returncode == 0, r.stderr
    pw.chmod(0o600)
    return mosquitto_factory(passwords=pw)


def test_bridge_with_password_reaches_mosquitto(
    broker_factory, clients, password_mosquitto, tmp_path
):
    secret = tmp_path / "bridge.pw"
    secret.write_text("s3cret\nignored second line\n")
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section(
            "mosq", password_mosquitto.address, [OUT_SENSORS],
            username="edge1", password_file=str(secret), **FAST_RECONNECT,
        ),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")
    up = clients(password_mosquitto.port, username="edge1", password="s3cret").connect()
    up.subscribe("site1/sensors/#", 1)
    clients(edge.port).connect().publish("sensors/auth", b"ok", qos=1)
    m = up.expect()
    assert (m.topic, m.payload) == ("site1/sensors/auth", b"ok")
    assert "s3cret" not in edge.log()


def test_bridge_with_wrong_password_does_not_connect(
    broker_factory, password_mosquitto, tmp_path
):
    secret = tmp_path / "bridge.pw"
    secret.write_text("wrong\n")
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section(
            "mosq", password_mosquitto.address, [OUT_SENSORS],
            username="edge1", password_file=str(secret), **FAST_RECONNECT,
        ),
    )
    edge = broker_factory("--config", str(cfg))
    log = wait_log(edge, "bridge cannot connect")
    assert "bridge connected" not in log
    # Mosquitto saw the attempt and refused it (not merely a connection that failed).
    deadline = time.monotonic() + WAIT
    while "not authorised" not in password_mosquitto.log().lower():
        assert time.monotonic() < deadline, password_mosquitto.log()
        time.sleep(0.05)


# -- 8: config errors ------------------------------------------------------------------------


def test_bad_bridge_section_exits_2_naming_the_field(tmp_path):
    cfg = write_config(
        tmp_path / "bad.toml",
        bridge_section(
            "cloud", "127.0.0.1:1883",
            [{"pattern": "a/#/b", "direction": "out", "qos": 1}],
        ),
    )
    r = subprocess.run(
        [str(BROKER_BIN), "--listen", f"{HOST}:0", "--config", str(cfg),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert (
        'rookery-broker: invalid value for `bridge`: bridge[cloud].topics[0].pattern: '
        '"a/#/b" is not a topic filter'
    ) in r.stderr, r.stderr


# -- 9: metrics ------------------------------------------------------------------------------


def metric(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def wait_metric(url: str, name: str, want: float, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while (v := metric(url, name)) != want:
        assert time.monotonic() < deadline, f"{name} is {v}, expected {want} (after {timeout}s)"
        time.sleep(0.05)


def test_bridges_up_metric(broker_factory, mosquitto, tmp_path):
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section("mosq", mosquitto.address, [OUT_SENSORS], **FAST_RECONNECT),
    )
    edge = broker_factory("--config", str(cfg), "--metrics-listen", f"{HOST}:0")
    m = METRICS_RE.search(edge.log())
    assert m, f"no metrics address in the first log line:\n{edge.log()}"
    url = f"http://{m.group(1)}/metrics"
    wait_log(edge, "bridge connected")
    wait_metric(url, "rookery_bridges_up", 1)
    assert metric(url, "rookery_bridges") == 1
    mosquitto.stop()
    wait_metric(url, "rookery_bridges_up", 0)
    assert metric(url, "rookery_bridges") == 1
    mosquitto.start()
    wait_metric(url, "rookery_bridges_up", 1)


# -- TLS ---------------------------------------------------------------------------------------


def test_bridge_over_mutual_tls_to_a_rookery_upstream(broker_factory, clients, tmp_path):
    """The upstream requires a client certificate and takes its CN as the username; the bridge
    verifies the upstream against the CA only it was given. A bridge given another CA does not
    connect."""
    from test_security import Pki

    (tmp_path / "pki").mkdir()
    pki = Pki(tmp_path / "pki")
    server_cert, server_key = pki.leaf("server", "localhost", server=True)
    cloud = broker_factory(
        "--tls-listen", f"{HOST}:0", "--cert", str(server_cert), "--key", str(server_key),
        "--ca", str(pki.ca_file), "--require-client-cert", "--cert-identity", "cn",
        # For the test's plain subscriber; the TLS listener still demands a certificate.
        "--allow-anonymous",
    )
    edge_cert, edge_key = pki.leaf("edge", "edge-7", server=False)
    cfg = write_config(
        tmp_path / "edge.toml",
        bridge_section(
            "cloud", f"{HOST}:{cloud.ports['mqtts']}", [OUT_SENSORS],
            ca=str(pki.ca_file), cert=str(edge_cert), key=str(edge_key),
            server_name="localhost", **FAST_RECONNECT,
        ),
    )
    edge = broker_factory("--config", str(cfg))
    wait_log(edge, "bridge connected")
    up = clients(cloud.port).connect()
    up.subscribe("site1/sensors/#", 1)
    clients(edge.port).connect().publish("sensors/tls", b"encrypted", qos=1)
    m = up.expect()
    assert (m.topic, m.payload) == ("site1/sensors/tls", b"encrypted")
    # The certificate identity became the bridge's username on the upstream.
    assert "edge-7" in cloud.log()

    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")
    bad = write_config(
        tmp_path / "bad.toml",
        bridge_section(
            "cloud", f"{HOST}:{cloud.ports['mqtts']}", [OUT_SENSORS],
            ca=str(other.ca_file), cert=str(edge_cert), key=str(edge_key),
            server_name="localhost", **FAST_RECONNECT,
        ),
    )
    stranger = broker_factory("--config", str(bad))
    log = wait_log(stranger, "bridge cannot connect")
    assert "TLS" in log, log[-2000:]
