#!/usr/bin/env python3
"""Idle-connection memory: start a broker, open N MQTT 3.1.1 connections that CONNECT and then
stay silent, and report the broker's RSS growth per connection (from /proc/PID/status).

    python3 e2e/scripts/idle_rss.py N BROKER_BINARY [broker flags...]

Stop-gap until `rookery-bench idle` exists. Needs `ulimit -n` above N + 100.
"""
import re
import socket
import subprocess
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main():
    n = int(sys.argv[1])
    broker = subprocess.Popen([sys.argv[2], "--listen", "127.0.0.1:0", *sys.argv[3:]],
                              stderr=subprocess.PIPE, text=True)
    try:
        while True:
            line = broker.stderr.readline()
            if not line:
                sys.exit("broker exited before listening")
            m = re.search(r"listening on [0-9.]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        time.sleep(0.3)
        before = rss_kb(broker.pid)
        socks = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            cid = f"idle-{i:07d}".encode()
            body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
            s.sendall(bytes([0x10, len(body)]) + body)
            socks.append(s)
        for s in socks:
            assert s.recv(4) == b"\x20\x02\x00\x00", "CONNACK expected"
        time.sleep(0.5)
        after = rss_kb(broker.pid)
        print(f"{n} idle connections: RSS {before} kB -> {after} kB, "
              f"{(after - before) * 1024 / n:.0f} B per connection")
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
