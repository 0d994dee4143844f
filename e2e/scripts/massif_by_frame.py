#!/usr/bin/env python3
"""Heap per connection at massif's peak, grouped by the first stack frame that matches a pattern.

    valgrind --tool=massif --threshold=0.5 --depth=40 --massif-out-file=out \\
        target/release/rookery-broker --listen 127.0.0.1:18840 --threads 1 ...
    (hold N connections with `rookery-bench --scenario idle --clients N`, then SIGINT the broker)
    python3 e2e/scripts/massif_by_frame.py out N 'rookery_broker::|rookery_auth|sharded_slab'

Each leaf of the peak snapshot's allocation tree is charged to the first frame on its stack that
matches the pattern (otherwise to a frame near the allocator, marked OTHER), then divided by N.
"""
import collections
import re
import sys

NODE = re.compile(r"^(\s*)n(\d+): (\d+) (.*)$")
ADDRESS = re.compile(r"^0x[0-9A-Fa-f]+: ")


def peak_tree(lines):
    """The lines of the peak snapshot's heap tree, and its heap and extra-heap bytes."""
    start = None
    heap = extra = 0
    for i, line in enumerate(lines):
        if line.startswith("snapshot="):
            if start is not None:
                return lines[start:i], heap, extra
            heap = extra = 0
        elif line.startswith("mem_heap_B="):
            heap = int(line.split("=")[1])
        elif line.startswith("mem_heap_extra_B="):
            extra = int(line.split("=")[1])
        elif line == "heap_tree=peak":
            start = i + 1
    if start is None:
        sys.exit("no peak snapshot in the file")
    return lines[start:], heap, extra


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, connections = sys.argv[1], int(sys.argv[2])
    pattern = re.compile(sys.argv[3] if len(sys.argv) > 3 else "rookery_")
    with open(path) as f:
        tree, heap, extra = peak_tree(f.read().split("\n"))
    print(f"peak heap {heap} B, extra {extra} B: {(heap + extra) / connections:.0f} B per connection")
    totals = collections.Counter()
    stack = []
    for line in tree:
        m = NODE.match(line)
        if not m:
            continue
        indent, children, size, frame = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, ADDRESS.sub("", frame)))
        if children:
            continue
        frames = [f for _, f in stack[1:]]
        key = next((f for f in frames if pattern.search(f)), None)
        if key is None:
            key = "OTHER " + (frames[min(3, len(frames) - 1)] if frames else "")
        totals[key[:160]] += size
    for key, size in totals.most_common(40):
        print(f"{size / connections:8.0f} B  {key}")


if __name__ == "__main__":
    main()
