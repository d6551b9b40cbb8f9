"""Failpoints: named places in the code where a crash test can hold a process, so that the
kill it sends provably lands there (as etcd's gofail and TiKV's fail-rs do).

Off unless the process starts with ``SRLM_FAILPOINTS``, a comma-separated list of
``name=pause(SECONDS)`` or ``name=pause(SECONDS)@HIT`` (hold on the HIT-th time the place is
reached; the first by default). Reaching an armed failpoint writes ``failpoint <name> reached``
to stderr, flushed, before holding: the test waits for that line, then kills.

    SRLM_FAILPOINTS="worker.before_commit=pause(120)@2"
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass

ENV = "SRLM_FAILPOINTS"
_SPEC = re.compile(r"^(?P<name>[\w.]+)=pause\((?P<seconds>\d+(\.\d+)?)\)(@(?P<hit>\d+))?$")


@dataclass
class _Failpoint:
    seconds: float
    hit: int
    reached: int = 0


def parse(spec: str) -> dict[str, _Failpoint]:
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = _SPEC.match(item)
        if not m:
            raise ValueError(f"{ENV}: {item!r} is not name=pause(SECONDS) or name=pause(SECONDS)@HIT")
        points[m["name"]] = _Failpoint(float(m["seconds"]), int(m["hit"] or 1))
    return points


_armed = parse(os.environ.get(ENV, ""))
_lock = threading.Lock()


def armed(name: str) -> bool:
    return name in _armed


def failpoint(name: str) -> None:
    """Hold here if the failpoint ``name`` is armed and this is its hit (no-op otherwise)."""
    point = _armed.get(name)
    if point is None:
        return
    with _lock:
        point.reached += 1
        due = point.reached == point.hit
    if due:
        print(f"failpoint {name} reached", file=sys.stderr, flush=True)
        time.sleep(point.seconds)
