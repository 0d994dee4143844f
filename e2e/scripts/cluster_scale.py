#!/usr/bin/env python3
"""Cluster throughput: three nodes against one, on loopback, alternating round by round.

One node: three rookery-bench processes, each running its own pairs against the node. Three
nodes: the same three processes, bench i publishing on node i and subscribing on node i+1, so
every message crosses a link. On a 2-core machine the brokers share CPU 0 and the load tools
CPU 1: with three nodes on the same core this measures what clustering costs, not what
scaling out gains (that needs a core per node). In memory; figures are sums over the three
load tools, medians over the rounds.

    cargo build --release -p rookery-broker -p rookery-e2e
    python3 e2e/scripts/cluster_scale.py --rounds 3 --duration 5

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

LOAD = ["--scenario", "pairs", "--clients", "10", "--qos", "1"]
SCENARIOS = [
    ("pairs QoS 1, 3 x 10 pairs, as fast as acknowledged", LOAD),
    ("pairs QoS 1, 3 x 10 pairs at 1k msg/s each", LOAD + ["--rate", "1000"]),
]


def start_node(i: int, mqtt: int, link: int | None, peers: str | None) -> subprocess.Popen:
    cmd = ["taskset", "-c", "0", os.path.join(RELEASE, "rookery-broker"),
           "--listen", f"127.0.0.1:{mqtt}", "--log-level", "warn", "--durability", "none",
           "--threads", "1", "--max-inflight", "100", "--max-queued-messages", "1000",
           "--node-id", f"scale-{i}"]
    if link is not None and peers is not None:
        cmd += ["--cluster-listen", f"127.0.0.1:{link}", "--peers", peers]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mqtt, proc)
    return proc


def load(pairs: list[tuple[int, int]], args: list[str], duration: float) -> list[dict]:
    """Runs one rookery-bench per (publish port, subscribe port) at once."""
    procs = []
    for i, (pub, sub) in enumerate(pairs):
        cmd = ["taskset", "-c", "1", os.path.join(RELEASE, "rookery-bench"), "--tag", f"t{i}-",
               "--broker", f"127.0.0.1:{pub}", "--subscriber-broker", f"127.0.0.1:{sub}",
               "--duration", str(duration), "--warmup", "1", "--json", *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=duration + 60)
        if stdout.strip():
            out.append(json.loads(stdout))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    a = ap.parse_args()
    print(f"{a.rounds} rounds of {a.duration}s; brokers on CPU 0, load tools on CPU 1\n")
    print("| scenario | brokers | delivered msg/s (sum) | p50 us | p99 us | lost | dup | 3 nodes / 1 node |")
    print("|---|---|---|---|---|---|---|---|")
    for name, args in SCENARIOS:
        runs: dict[str, list[list[dict]]] = {"1 node": [], "3 nodes": []}
        for _ in range(a.rounds):
            # One node.
            port = free_port()
            node = start_node(0, port, None, None)
            try:
                runs["1 node"].append(load([(port, port)] * 3, args, a.duration))
            finally:
                stop(node)
            # Three nodes, every message across a link.
            mqtt = [free_port() for _ in range(3)]
            link = [free_port() for _ in range(3)]
            peers = ",".join(f"127.0.0.1:{p}" for p in link)
            nodes = [start_node(i, mqtt[i], link[i], peers) for i in range(3)]
            try:
                time.sleep(2)  # the links come up
                runs["3 nodes"].append(load([(mqtt[i], mqtt[(i + 1) % 3]) for i in range(3)], args, a.duration))
            finally:
                for n in nodes:
                    stop(n)
        rates = {}
        for label, rounds in runs.items():
            complete = [r for r in rounds if len(r) == 3]
            if not complete:
                print(f"| {name} | {label} | failed | | | | | |")
                continue
            rate = statistics.median(sum(x["delivered_per_sec"] for x in r) for r in complete)
            p50 = statistics.median(max(x["latency_us"][0] for x in r) for r in complete)
            p99 = statistics.median(max(x["latency_us"][1] for x in r) for r in complete)
            lost = max(x["lost"] for r in complete for x in r)
            dup = max(x["duplicated"] for r in complete for x in r)
            rates[label] = rate
            ratio = f"{rates['3 nodes'] / rates['1 node']:.2f}" if len(rates) == 2 else ""
            print(f"| {name} | {label} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {lost} | {dup} | {ratio} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
