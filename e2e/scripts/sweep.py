#!/usr/bin/env python3
"""Throughput and p99 latency against the number of clients, for Rookery, Mosquitto and
rumqttd, plotted to a PNG.

    python3 e2e/scripts/sweep.py --out docs/img/pairs-qos1.png [--clients 10,50,200,500]
        [--rounds 1] [--duration 4] [--rumqttd PATH] [--scenario pairs] [--qos 1]

Reuses compare.py's broker setup (fresh broker per point, broker on CPU 0, bench on CPU 1).
Needs matplotlib (pip install -r e2e/scripts/requirements.txt).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", default="10,50,200,500")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--scenario", default="pairs")
    ap.add_argument("--qos", default="1")
    ap.add_argument("--rumqttd", default=shutil.which("rumqttd"))
    a = ap.parse_args()
    brokers = ["rookery", "mosquitto"] + (["rumqttd"] if a.rumqttd else [])
    sizes = [int(c) for c in a.clients.split(",")]
    points = {b: [] for b in brokers}
    with tempfile.TemporaryDirectory() as workdir:
        for n in sizes:
            args = ["--scenario", a.scenario, "--clients", str(n), "--qos", a.qos]
            for b in brokers:
                runs = []
                for _ in range(a.rounds):
                    port = compare.free_port()
                    proc = compare.start(b, port, workdir, a.rumqttd)
                    try:
                        r = compare.bench(port, proc.pid, args, a.duration)
                    finally:
                        proc.terminate()
                        proc.wait(timeout=10)
                    if r:
                        runs.append(r)
                if runs:
                    rate = statistics.median(r["delivered_per_sec"] for r in runs)
                    p99 = statistics.median(r["latency_us"][1] for r in runs)
                    lost = max(r["lost"] for r in runs)
                    points[b].append((n, rate, p99, lost))
                    print(f"{b:10} {n:5} clients: {rate:10.0f} msg/s, p99 {p99:9.0f} us, lost {lost}")
                    sys.stdout.flush()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"scenario": a.scenario, "qos": a.qos, "points": points}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for b in brokers:
        xs = [p[0] for p in points[b]]
        left.plot(xs, [p[1] / 1000 for p in points[b]], marker="o", label=b)
        right.plot(xs, [p[2] / 1000 for p in points[b]], marker="o", label=b)
    left.set(xscale="log", xlabel="clients", ylabel="delivered, thousand msg/s",
             title=f"{a.scenario} QoS {a.qos}: throughput")
    right.set(xscale="log", yscale="log", xlabel="clients", ylabel="p99 latency, ms",
              title=f"{a.scenario} QoS {a.qos}: p99 publish-to-delivery")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
