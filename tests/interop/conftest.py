"""Fixtures for the interop suite: a fresh rookery-broker process per test.

The broker binary comes from $ROOKERY_BROKER_BIN (default: <repo>/target/debug/rookery-broker,
built by `cargo build -p rookery-broker`). Each broker listens on 127.0.0.1 port 0; the port is
read from its first JSON log line. Its stderr goes to a file under the test's tmp dir and is
attached to the report of a failing test. Teardown sends SIGTERM and waits.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqtt_util import Client

REPO = Path(__file__).resolve().parents[2]
BROKER_BIN = Path(
    os.environ.get("ROOKERY_BROKER_BIN", REPO / "target" / "debug" / "rookery-broker")
)
LOG_LEVEL = os.environ.get("ROOKERY_TEST_LOG_LEVEL", "debug")
PORT_RE = re.compile(r"listening on [0-9.]+:(\d+)")
LISTENER_RE = re.compile(r"[0-9.]+:(\d+) \((mqtt|mqtts|ws|wss|coap|coaps)\)")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class Broker:
    """One rookery-broker process."""

    def __init__(self, log_path: Path, args: list[str]) -> None:
        self.log_path = log_path
        self.args = args
        self.port: int = 0
        # Port of the first listener of each kind ("mqtt", "mqtts", "ws", "wss", and "coap": UDP).
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        if not BROKER_BIN.is_file():
            pytest.fail(
                f"broker binary {BROKER_BIN} not found: run `cargo build -p rookery-broker` "
                "or set ROOKERY_BROKER_BIN"
            )
        cmd = [
            str(BROKER_BIN),
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            LOG_LEVEL,
            *self.args,
        ]
        if "--data-dir" not in self.args and "--durability" not in self.args:
            cmd += ["--data-dir", str(self.log_path.with_suffix(".data"))]
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.log_path.parent
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = PORT_RE.search(text)
            if m:
                self.port = int(m.group(1))
                for port, kind in LISTENER_RE.findall(text):
                    self.ports.setdefault(kind, int(port))
                return self
            if self.proc.poll() is not None:
                pytest.fail(
                    f"broker exited with {self.proc.returncode} before listening:\n{self.log()}"
                )
            time.sleep(0.005)
        pytest.fail(f"broker did not report its port within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not go. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                with open(self.log_path, "a") as log:
                    log.write(f"\n[conftest] broker ignored SIGTERM for {STOP_TIMEOUT}s: killed\n")
        return self.proc.returncode


@pytest.fixture
def broker_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Broker]]:
    """start_broker(*extra_flags) -> a running Broker; all are stopped after the test."""
    brokers: list[Broker] = []
    request.node._rookery_brokers = brokers

    def start(*args: str) -> Broker:
        b = Broker(tmp_path / f"broker-{len(brokers)}.log", list(args))
        brokers.append(b)
        return b.start()

    yield start
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A broker with the default configuration."""
    return broker_factory()


@pytest.fixture
def clients(broker_factory: Callable[..., Broker]) -> Iterator[Callable[..., Client]]:
    """make_client(port, client_id=None, version=5, **kw) -> Client, closed after the test
    (before the brokers stop)."""
    made: list[Client] = []

    def make(port: int, client_id: str | None = None, version: int = 5, **kw) -> Client:
        c = Client(port, client_id, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - teardown must reach every client
            pass


@pytest.fixture(scope="session")
def mosquitto_clients() -> None:
    """The Debian mosquitto-clients commands; their absence is a failure, not a skip."""
    missing = [c for c in ("mosquitto_pub", "mosquitto_sub", "stdbuf") if shutil.which(c) is None]
    if missing:
        pytest.fail(f"missing commands {missing}: install mosquitto-clients (scripts/test does)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for b in getattr(item, "_rookery_brokers", []):
            rep.sections.append((f"broker log {b.log_path.name} (port {b.port})", b.log()))
