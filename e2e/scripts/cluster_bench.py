#!/usr/bin/env python3
"""What the extra hop between cluster nodes costs: the same scenario with publishers and
subscribers on one node, then with publishers on node 0 and subscribers on node 1 of a
two-node cluster, alternating round by round. Both nodes are pinned to CPU 0 (they share it,
as a worst case), rookery-bench to CPU 1; in memory.

    cargo build --release -p rookery-broker -p rookery-e2e
    python3 e2e/scripts/cluster_bench.py --rounds 3 --duration 5

Builds nothing itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from compare import RELEASE, free_port, stop, wait_port

SCENARIOS = [
    ("pairs QoS 1, 10 pairs at 1k msg/s each", ["--scenario", "pairs", "--clients", "10", "--qos", "1", "--rate", "1000"]),
    ("fan-in QoS 1, 10 publishers, as fast as acknowledged", ["--scenario", "fan-in", "--clients", "10", "--qos", "1"]),
    ("fan-out QoS 0, 100 subscribers, 1k msg/s in", ["--scenario", "fan-out", "--clients", "100", "--qos", "0", "--rate", "1000"]),
]  # fmt: skip


def start_node(i: int, mqtt: int, link: int, peers: str) -> subprocess.Popen:
    cmd = ["taskset", "-c", "0", os.path.join(RELEASE, "rookery-broker"),
           "--listen", f"127.0.0.1:{mqtt}", "--log-level", "warn", "--durability", "none",
           "--max-inflight", "100", "--max-queued-messages", "1000",
           "--node-id", f"bench-{i}", "--cluster-listen", f"127.0.0.1:{link}", "--peers", peers]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mqtt, proc)
    return proc


def bench(pub: int, sub: int | None, args: list[str], duration: float) -> dict | None:
    cmd = ["taskset", "-c", "1", os.path.join(RELEASE, "rookery-bench"),
           "--broker", f"127.0.0.1:{pub}", "--duration", str(duration), "--warmup", "1", "--json", *args]
    if sub is not None:
        cmd += ["--subscriber-broker", f"127.0.0.1:{sub}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    return json.loads(out.stdout) if out.stdout.strip() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    a = ap.parse_args()
    print(f"{a.rounds} rounds of {a.duration}s; both nodes on CPU 0, bench on CPU 1\n")
    print("| scenario | path | delivered msg/s | p50 us | p99 us | lost | dup |")
    print("|---|---|---|---|---|---|---|")
    for name, args in SCENARIOS:
        runs: dict[str, list[dict]] = {"one node": [], "across nodes": []}
        for _ in range(a.rounds):
            mqtt = [free_port(), free_port()]
            link = [free_port(), free_port()]
            peers = ",".join(f"127.0.0.1:{p}" for p in link)
            nodes = [start_node(i, mqtt[i], link[i], peers) for i in range(2)]
            try:
                time.sleep(1.5)  # the link comes up
                for label, sub in (("one node", None), ("across nodes", mqtt[1])):
                    r = bench(mqtt[0], sub, args, a.duration)
                    if r:
                        runs[label].append(r)
            finally:
                for n in nodes:
                    stop(n)
        for label, rs in runs.items():
            if not rs:
                print(f"| {name} | {label} | failed | | | | |")
                continue
            rate = statistics.median(r["delivered_per_sec"] for r in rs)
            p50 = statistics.median(r["latency_us"][0] for r in rs)
            p99 = statistics.median(r["latency_us"][1] for r in rs)
            lost = max(r["lost"] for r in rs)
            dup = max(r["duplicated"] for r in rs)
            print(f"| {name} | {label} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {lost} | {dup} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
