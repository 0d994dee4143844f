#!/usr/bin/env python3
"""Runs a broker, a Prometheus scraping it and a minute of MQTT load, then draws the dashboard
with the data into docs/img/dashboard.png (with monitoring/render_dashboard.py: our rendering of
the dashboard's queries, not a Grafana screenshot).

    .venv/bin/python monitoring/demo.py                      # ~60 s of load, then the PNG
    .venv/bin/python monitoring/demo.py --seconds 120 --output /tmp/dashboard.png --keep

Needs: the broker binary (--broker, else $ROOKERY_BROKER_BIN, else target/release, else
target/debug), the Debian package prometheus, and paho-mqtt + matplotlib (the interop venv has
both). Everything listens on 127.0.0.1 on free ports; the load is bounded in time and stops by
itself; every process started here is stopped at the end (--keep leaves Prometheus and the broker
running until Enter is pressed, to look at them).

The load, chosen so that most panels have something to show:
  - publishers: sensor readings at QoS 0 and 1 (~150 msg/s), alerts at QoS 2, retained status;
  - subscribers: MQTT 5.0 and 3.1.1, one of them slow (it sleeps in its message callback), so
    its queue fills and deliveries are dropped for queue_full;
  - an offline persistent session that collects QoS 1 messages until its queue is full;
  - connection churn, a session takeover every few seconds, and now and then a socket that
    sends garbage instead of CONNECT (a protocol error);
  - CoAP devices: readings POSTed over plain CoAP, commands to a device that never answers
    (they time out), and, when libcoap's `coap-client-gnutls` is installed (Debian's
    libcoap3-bin), readings over DTLS with a pre-shared key and now and then a wrong key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RULES = HERE / "prometheus" / "rookery-rules.yaml"
RENDER = HERE / "render_dashboard.py"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError) as e:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: no answer from {url} within {timeout}s ({e})")
            time.sleep(0.1)


def broker_binary(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("ROOKERY_BROKER_BIN"),
                  REPO / "target" / "release" / "rookery-broker",
                  REPO / "target" / "debug" / "rookery-broker"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise SystemExit("no broker binary: build it (cargo build --release -p rookery-broker) "
                     "or pass --broker")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -----------------------------------------------------------------------------------------


PSK_IDENTITY, PSK_KEY = "demo-dtls", "demo-dtls-secret"


def coap_post(device: str, path: str, payload: bytes, mid: int) -> bytes:
    """A confirmable CoAP POST to /{device}/{path} (RFC 7252, hand-encoded)."""
    out = bytearray([0x40, 0x02, (mid >> 8) & 0xFF, mid & 0xFF])
    delta = 11  # Uri-Path
    for segment in [device, *path.split("/")]:
        data = segment.encode()
        assert len(data) < 13
        out.append((delta << 4) | len(data))
        out += data
        delta = 0
    return bytes(out + b"\xff" + payload)


class Load:
    def __init__(self, port: int, seconds: float, coap_port: int = 0, coaps_port: int = 0) -> None:
        self.port = port
        self.coap_port = coap_port
        self.coaps_port = coaps_port
        self.until = time.monotonic() + seconds
        self.stopping = threading.Event()
        self.clients: list[mqtt.Client] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def client(self, client_id: str, v5: bool = True, clean: bool = True,
               expiry: int | None = None, on_message=None) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **({} if v5 else {"clean_session": clean}),
        )
        if on_message is not None:
            c.on_message = on_message
        connected = threading.Event()
        c.on_connect = lambda *_a: connected.set()
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            c.connect(HOST, self.port, keepalive=30, clean_start=clean, properties=props)
        else:
            c.connect(HOST, self.port, keepalive=30)
        c.loop_start()
        if not connected.wait(5):
            raise SystemExit(f"{client_id}: no CONNACK")
        with self.lock:
            self.clients.append(c)
        return c

    def running(self) -> bool:
        return time.monotonic() < self.until and not self.stopping.is_set()

    def every(self, period: float, fn) -> None:
        def loop() -> None:
            while self.running():
                t = time.monotonic()
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - a demo keeps going
                    print(f"load: {fn.__name__}: {e}", file=sys.stderr)
                self.stopping.wait(max(0.0, period - (time.monotonic() - t)))

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        self.threads.append(th)

    def start(self) -> None:
        # Subscribers.
        s1 = self.client("demo-dashboard", v5=True)
        s1.subscribe("demo/#", qos=1)
        s2 = self.client("demo-legacy", v5=False)
        s2.subscribe("demo/sensors/#", qos=0)
        s3 = self.client("demo-alerting", v5=True)
        s3.subscribe("demo/alerts/#", qos=2)
        slow = self.client("demo-slow", v5=True,
                           on_message=lambda *_a: time.sleep(0.05))
        slow.subscribe("demo/sensors/#", qos=1)
        # A persistent session that goes offline: its queue fills up.
        away = self.client("demo-away", v5=True, clean=True, expiry=600)
        away.subscribe("demo/sensors/#", qos=1)
        time.sleep(0.2)
        away.disconnect()
        away.loop_stop()

        pub = self.client("demo-sensors", v5=True)
        seq = [0]

        def sensors() -> None:
            for i in range(15):
                seq[0] += 1
                pub.publish(f"demo/sensors/{i % 5}/temp", f"{20 + i % 7}.{seq[0] % 10}",
                            qos=seq[0] % 2)

        self.every(0.1, sensors)
        alerts = self.client("demo-alerts", v5=True)
        self.every(0.5, lambda: alerts.publish("demo/alerts/high", b"too hot", qos=2))
        status = self.client("demo-status", v5=False)
        n = [0]

        def retained() -> None:
            n[0] += 1
            status.publish(f"demo/status/{n[0] % 20}", b"online", qos=1, retain=True)

        self.every(1.0, retained)

        def churn() -> None:
            c = self.client(f"demo-churn-{time.monotonic_ns()}", v5=bool(int(time.time()) % 2))
            c.disconnect()
            c.loop_stop()
            with self.lock:
                self.clients.remove(c)

        self.every(0.5, churn)

        def takeover() -> None:
            # Each call connects with the same id and takes the previous one's session over.
            self.client("demo-twin", v5=True)

        self.every(3.0, takeover)

        def garbage() -> None:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(b"\x10\xff\xff\xff\xff\x7fnot mqtt")
                try:
                    s.recv(16)
                except OSError:
                    pass

        self.every(5.0, garbage)

        if self.coap_port:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            mid = [0]

            def coap_readings() -> None:
                for d in range(3):
                    mid[0] = (mid[0] + 1) & 0xFFFF
                    sock.sendto(coap_post(f"demo-coap-{d}", "temp", b"21.5", mid[0]),
                                (HOST, self.coap_port))
                try:  # the piggybacked 2.04s
                    while sock.recv(1500):
                        pass
                except OSError:
                    pass

            self.every(0.2, coap_readings)
            commander = self.client("demo-commander", v5=True)
            # demo-coap-0 never answers a command: each one ends as a timeout.
            self.every(4.0, lambda: commander.publish("commands/demo-coap-0/led", b"on", qos=1))
        dtls_client = shutil.which("coap-client-gnutls")
        if self.coaps_port and dtls_client:
            attempts = [0]

            def dtls_reading() -> None:
                attempts[0] += 1
                key = "wrong-key" if attempts[0] % 5 == 0 else PSK_KEY
                subprocess.run(
                    [dtls_client, "-m", "post", "-u", PSK_IDENTITY, "-k", key, "-B", "2",
                     "-e", "19.0", f"coaps://{HOST}:{self.coaps_port}/temp"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=10, check=False,
                )

            self.every(1.0, dtls_reading)

    def wait(self) -> None:
        try:
            while self.running():
                time.sleep(0.5)
        finally:
            self.stopping.set()
            for th in self.threads:
                th.join(5)

    def close(self) -> None:
        self.stopping.set()
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:  # noqa: BLE001
                pass


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", help="rookery-broker binary")
    ap.add_argument("--seconds", type=float, default=60, help="how long the load runs (default 60)")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    ap.add_argument("--keep", action="store_true",
                    help="leave broker and Prometheus running until Enter is pressed")
    args = ap.parse_args()

    broker_bin = broker_binary(args.broker)
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        raise SystemExit("no prometheus: apt-get install -y prometheus")
    work = Path(tempfile.mkdtemp(prefix="rookery-demo-"))
    mqtt_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    coap_port, coaps_port = free_udp_port(), free_udp_port()
    (work / "psk").write_text(f"{PSK_IDENTITY}:{PSK_KEY.encode().hex()}\n")
    broker = prometheus = None
    load = None
    try:
        broker_log = open(work / "broker.log", "wb")
        broker = subprocess.Popen(
            [str(broker_bin), "--listen", f"{HOST}:{mqtt_port}",
             "--metrics-listen", f"{HOST}:{metrics_port}", "--data-dir", str(work / "data"),
             "--coap-listen", f"{HOST}:{coap_port}", "--coaps-listen", f"{HOST}:{coaps_port}",
             "--psk-file", str(work / "psk"), "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=broker_log, stderr=broker_log,
        )
        wait_http(f"http://{HOST}:{metrics_port}/metrics", 15, broker, "broker")
        (work / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: rookery\n    static_configs:\n"
            f"      - targets: ['{HOST}:{metrics_port}']\n"
        )
        prom_log = open(work / "prometheus.log", "wb")
        prometheus = subprocess.Popen(
            [prometheus_bin, f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address={HOST}:{prom_port}"],
            stdin=subprocess.DEVNULL, stdout=prom_log, stderr=prom_log,
        )
        prom_url = f"http://{HOST}:{prom_port}"
        wait_http(f"{prom_url}/-/ready", 30, prometheus, "prometheus")
        print(f"broker mqtt://{HOST}:{mqtt_port}, metrics http://{HOST}:{metrics_port}/metrics, "
              f"prometheus {prom_url}, files in {work}")
        time.sleep(6)  # Prometheus starts scraping ~5 s after it is ready
        start = time.time() - 5
        load = Load(mqtt_port, args.seconds, coap_port, coaps_port)
        print(f"load for {args.seconds:.0f} s ...")
        load.start()
        load.wait()
        load.close()
        time.sleep(3)  # the last scrapes
        cmd = [sys.executable, str(RENDER), "--prometheus", prom_url, "--from", f"{start:.0f}",
               "--to", "now", "--scrape-interval", "1s", "--job", "rookery",
               "--output", str(args.output)]
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
        if args.keep:
            input(f"Prometheus at {prom_url}; press Enter to stop everything ")
        return rc
    finally:
        if load is not None:
            load.close()
        stop(prometheus)
        stop(broker)
        if args.keep:
            print(f"logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
