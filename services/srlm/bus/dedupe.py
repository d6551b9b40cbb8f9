"""The idempotent-consumer side: recognise a replayed record by its deterministic id.

Every srlm record carries ``meta.id`` (the same inputs give the same id), read from its
value (``Record.id``). With transactions (``kafka.exactly_once``) a read_committed consumer
sees each output once; in at-least-once mode, or when a stage is re-run, a record can arrive
again, and whoever accumulates records (the trainer collecting pairs, the controller
counting progress) keeps them by id through ``SeenIds``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from srlm.bus.envelope import Record


class SeenIds:
    """A set of ids, optionally bounded (oldest forgotten first). ``add`` says whether it is new."""

    def __init__(self, capacity: int | None = None, ids: Iterable[str] = ()) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be >= 1 or None")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        for rid in ids:
            self.add(rid)

    def add(self, rid: str) -> bool:
        """Remember ``rid``; True if it was not seen before, False for a replay."""
        if not rid:
            raise ValueError("a record without an id cannot be deduplicated")
        if rid in self._ids:
            self._ids.move_to_end(rid)
            self.duplicates += 1
            return False
        self._ids[rid] = None
        if self.capacity is not None and len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def fresh(self, records: Iterable[Record]) -> list[Record]:
        """The records whose id was not seen before (first occurrence wins)."""
        return [r for r in records if self.add(r.id)]


def unique_by_id(records: Iterable[Record]) -> list[Record]:
    """``records`` without replays, in order."""
    return SeenIds().fresh(records)
