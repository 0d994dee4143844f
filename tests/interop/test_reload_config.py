"""Configuration reload in a real broker process: SIGHUP re-reads the config file (with the same
flags and environment as at start), applies the live limits, says in one line what applied and
what needs a restart, and keeps everything in force when the new file is bad."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request

from mqtt_util import V5

WAIT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_log(broker, pattern: str, start: int = 0) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        log = broker.log()[start:]
        m = re.search(pattern, log)
        if m:
            return m.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n{broker.log()[-3000:]}")


def rate_limited(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r'^rookery_rate_limited_total\{limit="publish_rate"\} (\S+)$', text, re.M)
    assert m, "rookery_rate_limited_total not exported"
    return float(m.group(1))


def test_sighup_applies_live_limits_names_what_needs_a_restart_and_refuses_a_bad_file(
    broker_factory, clients, tmp_path
):
    conf = tmp_path / "rookery.toml"
    conf.write_text("publish_rate_limit = 0\nmax_inflight = 100\n")
    mport = free_port()
    broker = broker_factory(
        "--config", str(conf), "--reload-interval-secs", "0", "--metrics-listen", f"127.0.0.1:{mport}"
    )
    pub = clients(broker.port, version=V5).connect()
    for i in range(20):
        pub.publish("reload/t", b"x", qos=1)
    assert rate_limited(mport) == 0

    # A live key and a key that needs a restart.
    conf.write_text("publish_rate_limit = 5\nmax_inflight = 7\n")
    mark = len(broker.log())
    broker.signal(signal.SIGHUP)
    wait_for_log(broker, r"reload: applied publish_rate_limit; needs a restart: max_inflight", mark)
    started = time.monotonic()
    for i in range(15):
        pub.publish("reload/t", b"x", qos=1, timeout=10)
    # 15 messages at 5/s with a burst of 5: two seconds at least, and counted.
    assert time.monotonic() - started >= 1.5
    assert rate_limited(mport) >= 5

    # A bad file is refused, naming the key; the limit in force stays.
    conf.write_text('publish_rate_limit = "fast"\n')
    mark = len(broker.log())
    broker.signal(signal.SIGHUP)
    line = wait_for_log(broker, r"refused the new configuration[^\n]*", mark)
    assert "publish_rate_limit" in line, line
    wait_for_log(broker, r"reload: applied nothing; needs a restart: nothing", mark)
    before = rate_limited(mport)
    for i in range(10):
        pub.publish("reload/t", b"x", qos=1, timeout=10)
    assert rate_limited(mport) > before
    assert broker.proc.poll() is None
