"""Memory given back after a burst (adapters/memory.py), in a fresh interpreter: glibc's real
allocator, no mocks."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from crashbroker.adapters import memory

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

assert memory.keep_large_buffers_out_of_the_heap()
base = anon_kib()
# What a large reply leaves: 600-byte blocks (glibc's heap, not Python's small-object arenas)
# and one 8 MB buffer, all freed but the last block, which pins the top of the heap.
blocks = [bytes(600) + str(i).encode() for i in range(60_000)]
big = bytearray(8 << 20)
del big
keep = blocks[-1]
del blocks
before = anon_kib()
assert memory.trim_heap()
after = anon_kib()
print(base, before, after)
"""


def test_a_trim_returns_the_heap_freed_by_a_burst() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    base, before, after = map(int, done.stdout.split())
    # 60,000 freed blocks (~37 MB) were still resident before the trim, not after it.
    assert before - base > 20_000, (base, before, after)
    assert after - base < 5_000, (base, before, after)
