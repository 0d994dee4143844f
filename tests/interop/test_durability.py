"""Durable state under `kill -9`, with paho-mqtt clients and sequence numbers.

A persistent subscriber (clean session 0) receives while a publisher sends numbered QoS 1 or 2
messages as fast as they are acknowledged. The broker is killed with SIGKILL mid-stream and
started again on the same stores; the subscriber reconnects (the same paho client object, so
its own QoS 2 state survives too). Every message the publisher saw acknowledged must arrive;
at QoS 2 none may arrive twice. Run for each store: the embedded one, and Redis + PostgreSQL
when the suite has them (scripts/test starts both; see `store_args`).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from mqtt_util import HOST

# Acknowledged messages before the kill; the publisher keeps going until the broker dies.
KILL_AFTER = 1500
DELIVERY_WAIT = 30.0


def store_args(kind: str, tmp_path) -> list[str]:
    data = ["--data-dir", str(tmp_path / "data")]
    if kind == "embedded":
        return data
    redis = os.environ.get("ROOKERY_TEST_REDIS_URL")
    postgres = os.environ.get("ROOKERY_TEST_POSTGRES_URL")
    if not redis or not postgres:
        pytest.fail(
            "ROOKERY_TEST_REDIS_URL and ROOKERY_TEST_POSTGRES_URL are not set: run the suite "
            "through scripts/test, which starts Redis and PostgreSQL"
        )
    return [*data, "--redis-url", redis, "--postgres-url", postgres,
            "--cluster-name", f"kill{os.getpid()}{time.monotonic_ns()}"]


class Subscriber:
    def __init__(self, client_id: str, qos: int) -> None:
        self.qos = qos
        self.counts: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.c.max_inflight_messages_set(100)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set()

    def _on_message(self, c, u, m) -> None:
        seq = int(m.payload.split(b" ", 1)[0])
        with self.lock:
            self.counts[seq] += 1

    def connect(self, port: int) -> None:
        self.connected.clear()
        self.c.connect(HOST, port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(5), "subscriber did not connect"

    def received(self) -> collections.Counter[int]:
        with self.lock:
            return collections.Counter(self.counts)


def publish_until_killed(port: int, qos: int, acked: set[int], stop: threading.Event) -> None:
    """Publishes numbered messages, each once, until `stop`; records acknowledged ones (PUBACK,
    or PUBCOMP at QoS 2) in `acked`. Acknowledgements are read from paho's message infos, not
    from a callback: paho calls `on_publish` under a lock that `publish` needs too."""
    pub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"kill-pub-{qos}", protocol=mqtt.MQTTv311
    )
    pub.max_inflight_messages_set(50)
    pub.connect(HOST, port)
    pub.loop_start()
    waiting: collections.deque[tuple[int, mqtt.MQTTMessageInfo]] = collections.deque()
    seq = 0
    while not stop.is_set():
        while waiting and waiting[0][1].is_published():
            acked.add(waiting.popleft()[0])
        if len(waiting) >= 200:
            # Acknowledgements may come out of order: look further than the head.
            for s, info in list(waiting):
                if info.is_published():
                    acked.add(s)
            time.sleep(0.001)
            continue
        info = pub.publish("kill/t", f"{seq} {'x' * 64}".encode(), qos=qos)
        waiting.append((seq, info))
        seq += 1
    for s, info in waiting:
        if info.is_published():
            acked.add(s)
    pub.loop_stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["embedded", "redis+postgres"])
@pytest.mark.parametrize("qos", [1, 2])
def test_kill_9_under_load_loses_no_acknowledged_message(broker_factory, tmp_path, qos, kind):
    args = store_args(kind, tmp_path)
    first = broker_factory(*args)
    sub = Subscriber(f"kill-sub-{qos}", qos)
    sub.connect(first.port)
    result, _ = sub.c.subscribe("kill/t", qos)
    assert result == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.2)

    acked: set[int] = set()
    stop = threading.Event()
    publisher = threading.Thread(
        target=publish_until_killed, args=(first.port, qos, acked, stop), daemon=True
    )
    publisher.start()
    deadline = time.monotonic() + 30
    while len(acked) < KILL_AFTER:
        assert time.monotonic() < deadline, f"only {len(acked)} acknowledged:\n{first.log()}"
        time.sleep(0.005)
    first.signal(signal.SIGKILL)
    first.wait(10)
    stop.set()
    publisher.join(10)
    sub.c.loop_stop()
    acknowledged = set(acked)
    assert len(acknowledged) >= KILL_AFTER

    second = broker_factory(*args)
    sub.connect(second.port)
    deadline = time.monotonic() + DELIVERY_WAIT
    while True:
        got = sub.received()
        missing = acknowledged - set(got)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    sub.c.loop_stop()
    sub.c.disconnect()
    assert not missing, (
        f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:10]}\n{second.log()}"
    )
    if qos == 2:
        twice = sorted(s for s, n in got.items() if n > 1)
        assert not twice, f"QoS 2 delivered twice: {twice[:10]}"
