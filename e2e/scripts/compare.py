#!/usr/bin/env python3
"""Side-by-side load comparison: Rookery against Mosquitto (and rumqttd when installed).

Each round starts every broker fresh, in turn (A B C A B C ...), pins the broker to CPU 0 and
rookery-bench to CPU 1 with taskset, and runs the same scenario. The table shows medians per
broker and the ratio Rookery / peer.

    python3 e2e/scripts/compare.py [--rounds 3] [--duration 5] [--rumqttd PATH]

Builds nothing: run `cargo build --release -p rookery-broker -p rookery-e2e` first. Mosquitto
comes from Debian's package; rumqttd from `cargo install rumqttd --version 0.20.0` (without
--locked). Same limits for all: 100 messages in flight per client, 1000 queued.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(ROOT, "target", "release")

SCENARIOS = [
    # name, bench arguments
    ("fan-in QoS 1, 10 publishers", ["--scenario", "fan-in", "--clients", "10", "--qos", "1"]),
    ("fan-in QoS 1, 100 publishers", ["--scenario", "fan-in", "--clients", "100", "--qos", "1"]),
    ("pairs QoS 1, 50 pairs", ["--scenario", "pairs", "--clients", "50", "--qos", "1"]),
    ("pairs QoS 1, 500 pairs", ["--scenario", "pairs", "--clients", "500", "--qos", "1"]),
    ("pairs QoS 1, 50 pairs at 64k msg/s in all (half of Mosquitto's maximum)", ["--scenario", "pairs", "--clients", "50", "--qos", "1", "--rate", "1280"]),
    ("pairs QoS 2, 10 pairs", ["--scenario", "pairs", "--clients", "10", "--qos", "2"]),
    ("fan-out QoS 0, 50 subscribers, 10k msg/s in", ["--scenario", "fan-out", "--clients", "50", "--qos", "0", "--rate", "10000"]),
    ("fan-out QoS 0, 1000 subscribers, as fast as possible", ["--scenario", "fan-out", "--clients", "1000", "--qos", "0"]),
    ("shared QoS 1, 10 publishers into a group of 4", ["--scenario", "shared", "--clients", "10", "--group", "4", "--qos", "1"]),
    ("retained, a tree of 500 topics, 4 subscribers fetching it again and again", ["--scenario", "retained", "--retained", "500", "--clients", "4", "--qos", "0"]),
    ("connect-storm, 16 clients connecting and disconnecting", ["--scenario", "connect-storm", "--clients", "16"]),
    ("idle, 10000 connections", ["--scenario", "idle", "--clients", "10000"]),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not listen in time")


def start(kind, port, workdir, rumqttd):
    pin = ["taskset", "-c", "0"]
    if kind == "rookery":
        cmd = [os.path.join(RELEASE, "rookery-broker"), "--listen", f"127.0.0.1:{port}",
               "--log-level", "warn", "--max-inflight", "100", "--max-queued-messages", "1000",
               # In memory, like Mosquitto without `persistence true` and like rumqttd.
               "--durability", "none"]
    elif kind == "mosquitto":
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_inflight_messages 100\nmax_queued_messages 1000\npersistence false\n")
        cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf]
    else:
        conf = os.path.join(workdir, "rumqttd.toml")
        with open(conf, "w") as f:
            f.write(f"""id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
""")
        cmd = [rumqttd, "-c", conf]
    proc = subprocess.Popen(pin + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def stop(proc):
    """Terminates a broker, killing it if it does not go within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench(port, pid, args, duration):
    cmd = ["taskset", "-c", "1", os.path.join(RELEASE, "rookery-bench"), "--broker", f"127.0.0.1:{port}",
           "--broker-pid", str(pid), "--duration", str(duration), "--warmup", "1", "--json", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return None
    if not out.stdout.strip():
        return None
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rumqttd", default=shutil.which("rumqttd"))
    ap.add_argument("--only", help="run only scenarios whose name contains this")
    a = ap.parse_args()
    brokers = ["rookery", "mosquitto"] + (["rumqttd"] if a.rumqttd else [])
    print(f"brokers: {', '.join(brokers)}; {a.rounds} rounds of {a.duration}s; broker on CPU 0, bench on CPU 1")
    with tempfile.TemporaryDirectory() as workdir:
        for name, args in SCENARIOS:
            if a.only and a.only not in name:
                continue
            results = {b: [] for b in brokers}
            for _ in range(a.rounds):
                for b in brokers:
                    port = free_port()
                    proc = start(b, port, workdir, a.rumqttd)
                    try:
                        r = bench(port, proc.pid, args, a.duration)
                    finally:
                        stop(proc)
                    if r:
                        results[b].append(r)
            print(f"\n## {name}\n")
            if "--scenario" in args and args[args.index("--scenario") + 1] == "idle":
                print("| broker | RSS per connection, bytes | RSS KiB |")
                print("|---|---|---|")
                med = {}
                for b in brokers:
                    rs = results[b]
                    if not rs:
                        print(f"| {b} | failed | |")
                        continue
                    med[b] = statistics.median(r["rss_bytes_per_connection"] for r in rs)
                    rss = statistics.median(r["broker_peak_rss_kib"] or 0 for r in rs)
                    print(f"| {b} | {med[b]:.0f} | {rss:.0f} |")
                for b in brokers[1:]:
                    if "rookery" in med and b in med and med[b] > 0:
                        print(f"\nrookery / {b}: {med['rookery'] / med[b]:.2f}x bytes per idle connection")
                sys.stdout.flush()
                continue
            unit = "connects/s" if "connect-storm" in args else "delivered msg/s"
            print(f"| broker | {unit} | p50 us | p99 us | lost | dup | peak RSS KiB | syscalls/msg | bench CPU s |")
            print("|---|---|---|---|---|---|---|---|---|")
            med = {}
            for b in brokers:
                rs = results[b]
                if not rs:
                    print(f"| {b} | failed | | | | | | | |")
                    continue
                m = {
                    "rate": statistics.median(r.get("connects_per_sec") or r["delivered_per_sec"] for r in rs),
                    "p50": statistics.median(r["latency_us"][0] for r in rs),
                    "p99": statistics.median(r["latency_us"][1] for r in rs),
                    "lost": max(r["lost"] for r in rs),
                    "dup": max(r["duplicated"] for r in rs),
                    "rss": statistics.median(r["broker_peak_rss_kib"] or 0 for r in rs),
                    "sys": statistics.median(r["broker_syscalls_per_msg"] or 0 for r in rs),
                    "bench": statistics.median(r["bench_cpu_secs"] for r in rs),
                }
                med[b] = m
                print(f"| {b} | {m['rate']:.0f} | {m['p50']:.0f} | {m['p99']:.0f} | {m['lost']} | {m['dup']} "
                      f"| {m['rss']:.0f} | {m['sys']:.2f} | {m['bench']:.2f} |")
            if "rookery" in med:
                for b in brokers[1:]:
                    if b in med and med[b]["rate"] > 0:
                        print(f"\nrookery / {b}: {med['rookery']['rate'] / med[b]['rate']:.2f}x {unit}, "
                              f"p99 {med['rookery']['p99']:.0f} vs {med[b]['p99']:.0f} us, "
                              f"RSS {med['rookery']['rss']:.0f} vs {med[b]['rss']:.0f} KiB")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
