#!/usr/bin/env python3
"""Durable throughput: the same broker with each store and durability mode, against itself with
`--durability none`.

Each round starts every configuration fresh on a new data directory, in turn, pins the broker
to CPU 0 and rookery-bench to CPU 1, and runs a QoS 1 fan-in whose subscriber keeps a
persistent session (so every delivery goes through the store). Prints medians and the ratio to
the in-memory broker.

    python3 e2e/scripts/durable.py [--rounds 3] [--duration 8] [--clients 10] [--inflight 64]

Redis + PostgreSQL rows run when ROOKERY_TEST_REDIS_URL and ROOKERY_TEST_POSTGRES_URL are set
(`scripts/test-servers > env; . env` starts both). Builds nothing: run
`cargo build --release -p rookery-broker -p rookery-e2e` first.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

# The same port and start-up helpers as the peer comparison (this directory is on sys.path).
from compare import RELEASE, free_port, wait_port


def configs():
    out = [
        ("memory (durability none)", ["--durability", "none"]),
        ("embedded, sync", ["--durability", "sync"]),
        ("embedded, async 10 ms", ["--durability", "async"]),
    ]
    redis = os.environ.get("ROOKERY_TEST_REDIS_URL")
    postgres = os.environ.get("ROOKERY_TEST_POSTGRES_URL")
    if redis and postgres:
        for mode in ["sync", "async"]:
            out.append((f"redis + postgres, {mode}", ["--durability", mode, "--redis-url", redis,
                                                      "--postgres-url", postgres]))
    return out


def run_one(args, extra, n):
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        cmd = ["taskset", "-c", "0", os.path.join(RELEASE, "rookery-broker"), "--listen",
               f"127.0.0.1:{port}", "--log-level", "warn", "--data-dir", data,
               "--cluster-name", f"durable-bench-{os.getpid()}-{n}", *extra]
        broker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, broker)
            bench = ["taskset", "-c", "1", os.path.join(RELEASE, "rookery-bench"), "--broker",
                     f"127.0.0.1:{port}", "--broker-pid", str(broker.pid), "--json",
                     "--scenario", "fan-in", "--clients", str(args.clients), "--qos", "1",
                     "--persistent", "--inflight", str(args.inflight),
                     "--duration", str(args.duration), "--warmup", "2"]
            out = subprocess.run(bench, capture_output=True, text=True, timeout=args.duration + 60)
            report = json.loads(out.stdout)
            if report["lost"] or report["duplicated"]:
                raise RuntimeError(f"loss in a benchmark run: {report}")
            return report
        finally:
            broker.terminate()
            broker.wait(30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--inflight", type=int, default=64)
    args = p.parse_args()
    results = {name: [] for name, _ in configs()}
    n = 0
    for _ in range(args.rounds):
        for name, extra in configs():
            n += 1
            results[name].append(run_one(args, extra, n))
    base = statistics.median(r["delivered_per_sec"] for r in results["memory (durability none)"])
    print(f"fan-in QoS 1, {args.clients} publishers, {args.inflight} in flight each, persistent "
          f"subscriber; medians of {args.rounds} rounds")
    print(f"| configuration | delivered msg/s | of memory | p50 / p99 latency ms | broker CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        rate = statistics.median(r["delivered_per_sec"] for r in runs)
        p50 = statistics.median(r["latency_us"][0] for r in runs) / 1000
        p99 = statistics.median(r["latency_us"][1] for r in runs) / 1000
        cpu = statistics.median(r["broker_cpu_secs"] or 0 for r in runs)
        rss = statistics.median((r["broker_peak_rss_kib"] or 0) for r in runs) / 1024
        print(f"| {name} | {rate:,.0f} | {rate / base:.0%} | {p50:.2f} / {p99:.1f} | {cpu:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
