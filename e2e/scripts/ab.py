#!/usr/bin/env python3
"""A/B two rookery-broker binaries (say, main before and after a change) on the same scenarios:
each round starts A then B fresh, the broker pinned to CPU 0 and rookery-bench to CPU 1, and the
table shows medians with the B/A ratio. Both run in memory (`--durability none`) with the limits
compare.py gives every broker.

    cargo build --release -p rookery-broker -p rookery-e2e          # B, and the bench tool
    git worktree add /tmp/ab-old <commit>
    (cd /tmp/ab-old && CARGO_TARGET_DIR=/tmp/ab-target cargo build --release -p rookery-broker)
    python3 e2e/scripts/ab.py --a /tmp/ab-target/release/rookery-broker \\
        --b target/release/rookery-broker --rounds 3 --duration 5

Builds nothing itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from compare import RELEASE, bench, free_port, stop, wait_port

SCENARIOS = [
    ("fan-in QoS 1, 10 publishers", ["--scenario", "fan-in", "--clients", "10", "--qos", "1"]),
    ("pairs QoS 1, 50 pairs", ["--scenario", "pairs", "--clients", "50", "--qos", "1"]),
    ("fan-out QoS 0, 1000 subscribers", ["--scenario", "fan-out", "--clients", "1000", "--qos", "0"]),
    ("idle, 10000 connections", ["--scenario", "idle", "--clients", "10000"]),
]


def start(binary: str, port: int) -> subprocess.Popen:
    cmd = ["taskset", "-c", "0", binary, "--listen", f"127.0.0.1:{port}", "--log-level", "warn",
           "--max-inflight", "100", "--max-queued-messages", "1000", "--durability", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="the baseline broker binary")
    ap.add_argument("--b", default=os.path.join(RELEASE, "rookery-broker"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--only", help="run only scenarios whose name contains this")
    a = ap.parse_args()
    print(f"A = {a.a}\nB = {a.b}\n{a.rounds} rounds of {a.duration}s, A and B alternating\n")
    print("| scenario | figure | A | B | B/A |")
    print("|---|---|---|---|---|")
    for name, args in SCENARIOS:
        if a.only and a.only not in name:
            continue
        runs: dict[str, list[dict]] = {"A": [], "B": []}
        for _ in range(a.rounds):
            for label, binary in (("A", a.a), ("B", a.b)):
                port = free_port()
                proc = start(binary, port)
                try:
                    r = bench(port, proc.pid, args, a.duration)
                finally:
                    stop(proc)
                if r:
                    runs[label].append(r)
        if not runs["A"] or not runs["B"]:
            print(f"| {name} | failed | | | |")
            continue
        if "idle" in name:
            figures = [("bytes per idle connection", lambda r: r["rss_bytes_per_connection"])]
        else:
            figures = [
                ("delivered msg/s", lambda r: r["delivered_per_sec"]),
                ("p99 us", lambda r: r["latency_us"][1]),
                ("lost", lambda r: r["lost"]),
            ]
        for figure, get in figures:
            ma = statistics.median(get(r) for r in runs["A"])
            mb = statistics.median(get(r) for r in runs["B"])
            ratio = f"{mb / ma:.2f}" if ma else "-"
            print(f"| {name} | {figure} | {ma:.0f} | {mb:.0f} | {ratio} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
