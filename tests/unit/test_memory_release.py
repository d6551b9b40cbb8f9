"""release_freed_memory(): what a process freed goes back to the OS (glibc keeps it otherwise).

Measured in a fresh interpreter: in the test process, heaps that earlier tests freed would
hold the blocks without growing."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, os
from srlm.local import tree_rss
from srlm.runtime.memory import release_freed_memory

rss_mib = lambda: tree_rss(os.getpid()) / 2**20
before = rss_mib()
blocks = [bytearray(8192) for _ in range(40_000)]  # ~310 MiB of malloc'd (not mmap'd) blocks
keep = blocks[::64]  # the live blocks pin the heap: malloc cannot shrink it from the top
del blocks
held = rss_mib()
release_freed_memory()
print(json.dumps({"before": before, "held": held, "released": rss_mib(), "kept": len(keep)}))
"""


def test_freed_heap_memory_goes_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout.splitlines()[-1])
    assert rss["held"] - rss["before"] > 200, rss  # glibc kept the freed blocks
    assert rss["held"] - rss["released"] > 200, rss
    assert rss["kept"] == 625
