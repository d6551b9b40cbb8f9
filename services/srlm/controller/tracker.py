"""What the controller knows of the data plane, rebuilt from the topics.

The tracker reads the stage topics from the beginning and then follows them, keeping per
(run, iteration) the unique ids seen: a record replayed after a crash has the same id and
is counted once. A restarted controller rebuilds the same view by reading again.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from srlm.v1 import records_pb2


@dataclass
class IterationView:
    prompts_total: int | None = None  # from promptgen's "prompts done" event
    prompts: set[str] = field(default_factory=set)
    candidate_sets: set[str] = field(default_factory=set)
    judgment_sets: dict[str, records_pb2.JudgmentSet] = field(default_factory=dict)
    pairs: dict[str, records_pb2.PreferencePair] = field(default_factory=dict)
    duplicates: int = 0

    def kept_pair_ids(self) -> list[str]:
        return sorted(j.pair_id for j in self.judgment_sets.values() if j.decision == records_pb2.PAIR_DECISION_KEPT)

    def scored_group_ids(self) -> list[str]:
        """Judgment sets (PPO's rollouts) with at least one reward."""
        return sorted(key for key, j in self.judgment_sets.items() if any(c.HasField("reward") for c in j.candidates))

    def rewarded_group_ids(self) -> list[str]:
        """Judgment sets (GRPO groups) with at least two different rewards: the others have zero
        advantages throughout and teach nothing."""
        return sorted(key for key, j in self.judgment_sets.items()
                      if len({c.reward for c in j.candidates if c.HasField("reward")}) >= 2)


class Tracker:
    """Thread-safe view; ``apply`` is fed by a consumer of the stage topics."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._iterations: dict[tuple[str, int], IterationView] = defaultdict(IterationView)
        self.models: dict[str, records_pb2.ModelVersion] = {}
        self.runs: dict[str, records_pb2.RunState] = {}
        self.events: dict[str, list[records_pb2.RunEvent]] = defaultdict(list)

    def apply(self, what: str, msg) -> None:
        with self._lock:
            if what == "models":
                self.models[msg.version_id] = msg
            elif what == "runs":
                self.runs[msg.run_id] = msg
            elif what == "events":
                self.events[msg.run_id].append(msg)
                if msg.stage == records_pb2.STAGE_PROMPTS and "prompts_done" in msg.progress:
                    self._iterations[(msg.run_id, msg.iteration)].prompts_total = int(msg.progress["prompts"])
            else:
                view = self._iterations[(msg.meta.run_id, msg.meta.iteration)]
                key = msg.meta.id
                seen = {"prompts": view.prompts, "candidates": view.candidate_sets}.get(what)
                if seen is not None:
                    view.duplicates += key in seen
                    seen.add(key)
                elif what == "judgments":
                    view.duplicates += key in view.judgment_sets
                    view.judgment_sets.setdefault(key, msg)  # the first one wins
                elif what == "pairs":
                    view.duplicates += key in view.pairs
                    view.pairs.setdefault(key, msg)
            self._lock.notify_all()

    def iteration(self, run_id: str, iteration: int) -> IterationView:
        with self._lock:
            return self._iterations[(run_id, iteration)]

    def wait(self, timeout: float) -> None:
        """Sleep until the next record arrives (or ``timeout``)."""
        with self._lock:
            self._lock.wait(timeout)

    def progress(self, run_id: str, iteration: int) -> dict[str, float]:
        with self._lock:
            v = self._iterations[(run_id, iteration)]
            out = {"prompts": float(len(v.prompts)), "candidate_sets": float(len(v.candidate_sets)),
                   "judgment_sets": float(len(v.judgment_sets)), "pairs": float(len(v.kept_pair_ids())),
                   "duplicates_seen": float(v.duplicates)}
            if v.prompts_total is not None:
                out["prompts_total"] = float(v.prompts_total)
            samples = [s for j in v.judgment_sets.values() for c in j.candidates for s in c.samples]
            if samples:  # the judge's own verdicts: free-text parses, not forced ones
                out["judge_parse_rate"] = sum(s.parsed and not s.forced for s in samples) / len(samples)
                scores = [c.mean_score for j in v.judgment_sets.values() for c in j.candidates if c.num_parsed]
                if scores:
                    out["judge_mean_score"] = sum(scores) / len(scores)
            return out
