"""What a stage lets reach its engine: records of a run the controller knows, in the iteration
that run is in, with fields within the configured limits. Anything else is refused before any
handler runs (``RejectRecord``: a dead letter with the reason), so a forged or stray record
costs a lookup, not a generation."""

from __future__ import annotations

import threading
import time

import yaml
from google.protobuf.message import Message

from srlm.bus import RejectRecord
from srlm.bus.envelope import Record
from srlm.config import ConfigError, SRLMConfig
from srlm.runtime.pipeline import TopicFollower
from srlm.runtime.runconfig import from_yaml
from srlm.runtime.validation import InvalidRequest, require
from srlm.v1 import records_pb2 as pb

FINISHED = {pb.STAGE_DONE: "done", pb.STAGE_FAILED: "failed"}
RESYNC_S = 1.0  # an unknown run is looked up again at most this often


class AdmissionUnavailable(RuntimeError):
    """The runs topic could not be read: no decision now (the batch is retried, not refused)."""


class LiveRuns:
    """The controller's runs as the ``runs`` topic has them (stage and iteration per run)."""

    def __init__(self, service: str, config: SRLMConfig) -> None:
        self._runs: dict[str, tuple[int, int]] = {}
        self._looked_up: dict[str, float] = {}  # unknown run -> when it was last looked up
        self._lock = threading.Lock()
        self._follower = TopicFollower(service, config, ["runs"], self._apply)

    def _apply(self, _what: str, state: pb.RunState) -> None:
        with self._lock:
            self._runs[state.run_id] = (state.stage, state.iteration)

    def start(self) -> None:
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def reachable(self, timeout_s: float) -> bool:
        """Whether the runs topic can be read to its end now (the broker answers)."""
        return self._follower.sync(timeout_s)

    def get(self, run_id: str, iteration: int) -> tuple[int, int] | None:
        """The run's (stage, iteration), read up to now when it looks older than ``iteration``:
        the controller writes a run's state before any record that names it."""
        with self._lock:
            known = self._runs.get(run_id)
            if known is not None and known[1] >= iteration:
                return known
            if time.monotonic() - self._looked_up.get(run_id, float("-inf")) < RESYNC_S:
                return known  # a flood naming the same unknown run is refused at once
            self._looked_up[run_id] = time.monotonic()
        if not self._follower.sync():
            raise AdmissionUnavailable("the runs topic could not be read to its end")
        with self._lock:
            return self._runs.get(run_id)


def check_run(record: Record, runs: LiveRuns) -> None:
    meta = record.value.meta
    require(bool(meta.run_id), "meta.run_id is empty")
    known = runs.get(meta.run_id, meta.iteration)
    require(known is not None, f"run {meta.run_id!r} is unknown to the controller")
    stage, iteration = known
    require(stage not in FINISHED, f"run {meta.run_id!r} is {FINISHED.get(stage)}")
    require(meta.iteration == iteration,
            f"iteration {meta.iteration} of run {meta.run_id!r}, which is in iteration {iteration}")


def check_limits(msg: Message, config: SRLMConfig) -> None:
    """Sizes a handler would otherwise spend an engine on: the gRPC requests' limits."""
    max_chars, max_n = config.services.max_prompt_chars, config.services.max_n
    if isinstance(msg, pb.Prompt):
        require(bool(msg.text.strip()), "text is empty")
        require(len(msg.text) <= max_chars, f"text has {len(msg.text)} characters; the limit is {max_chars}")
        for name in ("sampling", "judging"):
            n = getattr(msg, name).n
            require(n <= max_n, f"{name}.n is {n}; the limit is services.max_n={max_n}")
    elif isinstance(msg, pb.CandidateSet):
        require(len(msg.prompt) <= max_chars, f"prompt has {len(msg.prompt)} characters; the limit is {max_chars}")
        require(0 < len(msg.candidates) <= max_n,
                f"{len(msg.candidates)} candidates; 1 to services.max_n={max_n} are allowed")
        require(msg.judging.n <= max_n, f"judging.n is {msg.judging.n}; the limit is services.max_n={max_n}")
        for c in msg.candidates:
            require(len(c.text) <= max_chars, f"candidate {c.index} has {len(c.text)} characters; the limit is {max_chars}")
    elif isinstance(msg, pb.IterationCommand):
        require(msg.kind != pb.COMMAND_KIND_UNSPECIFIED, "kind is unspecified")
        try:
            from_yaml(msg.config_yaml, config)  # the run's parameters, which the stage will use
        except (ConfigError, yaml.YAMLError) as err:
            raise InvalidRequest(f"config_yaml: {err}") from None


class Admission:
    """``Worker``'s ``admit`` for a stage: the run check and the limits."""

    def __init__(self, service: str, config: SRLMConfig) -> None:
        self.config = config
        self.runs = LiveRuns(service, config)

    def __call__(self, record: Record) -> None:
        try:
            check_limits(record.value, self.config)
            check_run(record, self.runs)
        except InvalidRequest as err:
            raise RejectRecord(str(err)) from None
