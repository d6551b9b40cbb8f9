"""A run as a state machine: M0 -> SFT -> (prompts -> candidates -> judgments -> DPO ->
eval gate -> promote) per iteration -> done. With ``run.groups_per_version`` an online
objective also trains step versions while candidates and judgments arrive, each on the next K
groups and served to the sampler at once; the iteration's last round starts from the last one.

Every step is idempotent and its outcome is saved to the compacted topic ``srlm.runs``
before the next one starts, so a restarted controller resumes a run at the step it was
in: commands are re-sent with the same ids (their consumers recognise them), and versions
and datasets have deterministic names in the store.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from srlm.config import SRLMConfig
from srlm.controller.gate import GateResult, evaluate, stored_result
from srlm.controller.tracker import Tracker
from srlm.evaluation.suite import EvaluationSuite
from srlm.judge.stage import Judge
from srlm.models.importer import import_base_model
from srlm.models.store import ModelStore
from srlm.runtime.records import meta, model_version_record
from srlm.runtime.runconfig import from_yaml
from srlm.runtime.tracking import RunLog
from srlm.v1 import records_pb2

log = logging.getLogger(__name__)

S = records_pb2
TERMINAL = (S.STAGE_DONE, S.STAGE_FAILED)
STAGE_NAMES = {v: k.removeprefix("STAGE_").lower() for k, v in S.Stage.items()}
# run.objective: (its round's command, the iteration view's method listing what it trains on, how
# the progress line names that, the reason when there is nothing)
OBJECTIVES = {
    "dpo": (S.COMMAND_KIND_TRAIN_DPO, "kept_pair_ids", "pairs; DPO",
            "no preference pairs: every prompt's candidates tied or were unscored"),
    "grpo": (S.COMMAND_KIND_TRAIN_GRPO, "rewarded_group_ids", "groups with differing rewards; GRPO",
             "no group with differing rewards: every prompt's candidates scored alike or were unscored"),
    "ppo": (S.COMMAND_KIND_TRAIN_PPO, "scored_group_ids", "scored groups; PPO",
            "no scored group: no candidate of any prompt got a reward"),
}


class Publisher(Protocol):
    def send(self, topic: str, key: str, msg) -> None: ...
    def flush(self) -> None: ...


class Promoter(Protocol):
    def promote(self, version_id: str) -> float:
        """Make the inference services serve ``version_id``; returns the seconds it took."""


def version_id(run_id: str, index: int) -> str:
    """M_index of a run: ``<run>.m0`` (base), ``.m1`` (SFT), ``.m2``, ``.m3`` (DPO)."""
    return f"{run_id}.m{index}"


class RunDriver:
    def __init__(self, config: SRLMConfig, store: ModelStore, tracker: Tracker, publisher: Publisher,
                 promoter: Promoter, judge_factory: Callable[[], Judge],
                 trainer_launcher: Callable[[records_pb2.IterationCommand], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.tracker = tracker
        self.publisher = publisher
        self.promoter = promoter
        self._judge_factory = judge_factory
        self._judge: Judge | None = None
        # Kubernetes mode runs DPO as a Job; locally the trainer service takes the command.
        self.trainer_launcher = trainer_launcher or (lambda cmd: self._send("commands", cmd.meta.run_id, cmd))
        self._last_progress: dict[tuple[str, int], dict[str, float]] = {}
        self.run_log = RunLog(config)

    # ------------------------------------------------------------------ plumbing

    def _send(self, topic: str, key: str, msg) -> None:
        self.publisher.send(topic, key, msg)
        self.publisher.flush()

    def save(self, state: records_pb2.RunState, message: str, **progress: float) -> None:
        """Persist the state, then announce the step (WatchRun streams these events)."""
        state.updated_at.GetCurrentTime()
        last = state.stage_starts[-1] if state.stage_starts else None
        if last is None or (last.iteration, last.stage) != (state.iteration, state.stage):
            state.stage_starts.add(iteration=state.iteration, stage=state.stage, at=state.updated_at)
            if last is not None:
                seconds = state.updated_at.ToMilliseconds() / 1000 - last.at.ToMilliseconds() / 1000
                self.run_log.scalars(state.run_id, "stage_seconds", {STAGE_NAMES[last.stage]: seconds}, last.iteration)
        self.run_log.scalars(state.run_id, "run", progress, state.iteration)  # counts, judge and gate figures
        if state.stage in TERMINAL:
            self.run_log.finish(state.run_id, failed=state.stage == S.STAGE_FAILED)
        self._send("runs", state.run_id, state)
        event = records_pb2.RunEvent(run_id=state.run_id, iteration=state.iteration, stage=state.stage,
                                     message=message, progress=progress)
        event.time.GetCurrentTime()
        self._send("events", state.run_id, event)
        log.info("run %s: [%s] %s", state.run_id, STAGE_NAMES[state.stage], message)

    def _report_progress(self, state: records_pb2.RunState) -> None:
        """While a stage waits on the data plane: an event whenever its counts move."""
        key = (state.run_id, state.iteration)
        progress = self.tracker.progress(*key)
        if progress != self._last_progress.get(key):
            self._last_progress[key] = progress
            event = records_pb2.RunEvent(run_id=state.run_id, iteration=state.iteration, stage=state.stage,
                                         message="progress", progress=progress)
            event.time.GetCurrentTime()
            self._send("events", state.run_id, event)

    def _command(self, state: records_pb2.RunState, kind: int, suffix: str, **fields) -> records_pb2.IterationCommand:
        cmd = records_pb2.IterationCommand(
            meta=meta(state.run_id, state.iteration, state.serving_version, f"{state.run_id}.i{state.iteration}.{suffix}"),
            kind=kind, config_yaml=state.config_yaml, **fields)
        return cmd

    def _current(self, state: records_pb2.RunState) -> records_pb2.IterationState:
        for it in state.iterations:
            if it.iteration == state.iteration:
                return it
        return state.iterations.add(iteration=state.iteration, input_version=state.serving_version)

    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = self._judge_factory()
        return self._judge

    # ------------------------------------------------------------------ the machine

    def start(self, run_id: str, run_config: SRLMConfig) -> records_pb2.RunState:
        from srlm.runtime.runconfig import to_yaml

        state = records_pb2.RunState(run_id=run_id, config_yaml=to_yaml(run_config), stage=S.STAGE_BASE)
        state.started_at.GetCurrentTime()
        self.run_log.run_config(run_id, state.config_yaml)
        self.save(state, "run started")
        return state

    def advance(self, state: records_pb2.RunState) -> bool:
        """Take the next step if it can be taken now; True when the state changed."""
        if state.stage in TERMINAL:
            return False
        cfg = from_yaml(state.config_yaml, self.config)
        try:
            step = {
                S.STAGE_BASE: self._base, S.STAGE_SFT: self._sft, S.STAGE_PROMPTS: self._prompts,
                S.STAGE_CANDIDATES: self._candidates, S.STAGE_JUDGMENTS: self._judgments,
                S.STAGE_TRAINING: self._training, S.STAGE_EVAL: self._eval, S.STAGE_PROMOTE: self._promote,
            }[state.stage]
            return step(state, cfg)
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, the controller goes on
            log.exception("run %s failed in %s", state.run_id, STAGE_NAMES[state.stage])
            state.error = f"{STAGE_NAMES[state.stage]}: {type(err).__name__}: {err}"
            state.stage = S.STAGE_FAILED
            self.save(state, f"failed: {state.error}")
            return True

    def _base(self, state, cfg: SRLMConfig) -> bool:
        m0 = version_id(state.run_id, 0)
        import_base_model(self.store, source=cfg.base_model.source, version_id=m0, gguf_file=cfg.base_model.gguf_file,
                          run_id=state.run_id)
        self.run_log.lineage(state.run_id, self.store)
        state.serving_version = m0
        if cfg.run.skip_sft:
            return self._serve(state, cfg, m0, "base model (no SFT)")
        state.stage = S.STAGE_SFT
        self.save(state, f"{m0} imported; SFT to {version_id(state.run_id, 1)}")
        self.trainer_launcher(self._command(state, S.COMMAND_KIND_TRAIN_SFT, "sft", base_version=m0,
                                            output_version=version_id(state.run_id, 1)))
        return True

    def _published(self, version: str) -> bool:
        return version in self.tracker.models or self.store.exists(version)

    def _sft(self, state, cfg: SRLMConfig) -> bool:
        m1 = version_id(state.run_id, 1)
        if not self._published(m1):
            return False
        return self._serve(state, cfg, m1, "SFT model (M1) serves without a gate")

    def _serve(self, state, cfg: SRLMConfig, version: str, reason: str) -> bool:
        """Promote ``version`` outside an iteration (M0 or M1) and start iteration 1."""
        seconds = self.promoter.promote(version)
        self.publish_status(version, "promoted", reason)
        state.serving_version = version
        return self._next_iteration(state, cfg, f"{version} promoted ({reason}) in {seconds:.1f}s")

    def _next_iteration(self, state, cfg: SRLMConfig, message: str) -> bool:
        if state.iteration >= cfg.run.iterations:
            state.stage = S.STAGE_DONE
            self.save(state, message + "; run done")
            return True
        state.iteration += 1
        state.stage = S.STAGE_PROMPTS
        it = self._current(state)
        it.stage = S.STAGE_PROMPTS
        self.save(state, message + f"; iteration {state.iteration} starts with {state.serving_version}")
        self._send("commands", state.run_id, self._command(
            state, S.COMMAND_KIND_GENERATE_PROMPTS, "prompts", num_prompts=cfg.self_instruct.num_prompts))
        return True

    def resume(self, state: records_pb2.RunState) -> None:
        """After a controller restart: re-send the command of the step the run is in."""
        cfg = from_yaml(state.config_yaml, self.config)
        if state.stage == S.STAGE_PROMPTS:
            self._send("commands", state.run_id, self._command(
                state, S.COMMAND_KIND_GENERATE_PROMPTS, "prompts", num_prompts=cfg.self_instruct.num_prompts))
        elif state.stage == S.STAGE_SFT:
            self.trainer_launcher(self._command(state, S.COMMAND_KIND_TRAIN_SFT, "sft",
                                                base_version=version_id(state.run_id, 0),
                                                output_version=version_id(state.run_id, 1)))
        elif state.stage == S.STAGE_TRAINING:
            if self._examples(state, cfg):
                self.trainer_launcher(self._training_command(state, cfg))
        elif state.stage == S.STAGE_EVAL and self._gate_in_a_job(cfg):
            self.trainer_launcher(self._gate_command(state))
        elif state.stage in (S.STAGE_CANDIDATES, S.STAGE_JUDGMENTS):
            it = self._current(state)
            if it.step_versions and it.step_versions[-1] != it.sampling_version:  # a step round in flight
                k, n = cfg.run.groups_per_version, len(it.step_versions)
                self.trainer_launcher(self._round_command(state, cfg, n, it.step_versions[-1],
                                                          list(it.trained_group_ids[-k:])))

    def _prompts(self, state, cfg) -> bool:
        view = self.tracker.iteration(state.run_id, state.iteration)
        if view.prompts_total is None:
            return False
        it = self._current(state)
        it.prompts = view.prompts_total
        state.stage = it.stage = S.STAGE_CANDIDATES
        self.save(state, f"{it.prompts} prompts written", **self.tracker.progress(state.run_id, state.iteration))
        return True

    def _candidates(self, state, cfg) -> bool:
        if self._step_round(state, cfg):
            return True
        view = self.tracker.iteration(state.run_id, state.iteration)
        it = self._current(state)
        if len(view.candidate_sets) < it.prompts:
            self._report_progress(state)
            return False
        it.candidate_sets = len(view.candidate_sets)
        state.stage = it.stage = S.STAGE_JUDGMENTS
        self.save(state, f"{it.candidate_sets} candidate sets sampled", **self.tracker.progress(state.run_id, state.iteration))
        return True

    def _examples(self, state, cfg) -> list[str]:
        """The ids of what ``run.objective`` trains on (pairs or groups) that no step round took."""
        taken = set(self._current(state).trained_group_ids)
        ids = getattr(self.tracker.iteration(state.run_id, state.iteration), OBJECTIVES[cfg.run.objective][1])()
        return [i for i in ids if i not in taken]

    def _round_command(self, state, cfg, n: int, output: str, ids: list[str]) -> records_pb2.IterationCommand:
        """The iteration's training round ``n`` (1-based: its step rounds, then the last one) on
        ``ids``, from the version before it (M_t, or step version n - 1) to ``output``."""
        objective = cfg.run.objective
        it = self._current(state)
        base = it.step_versions[n - 2] if n >= 2 else it.input_version
        suffix = f".s{n}" if n <= len(it.step_versions) else ""
        return self._command(state, OBJECTIVES[objective][0], objective + suffix, base_version=base,
                             output_version=output, **{"pair_ids" if objective == "dpo" else "group_ids": ids})

    def _training_command(self, state, cfg) -> records_pb2.IterationCommand:
        """The iteration's last round: to M_{t+1} on what it produced that no step round took."""
        it = self._current(state)
        return self._round_command(state, cfg, len(it.step_versions) + 1, version_id(state.run_id, state.iteration + 1),
                                   self._examples(state, cfg))

    def _step_round(self, state, cfg) -> bool:
        """run.groups_per_version: serve a step version once it is published, and while none is
        in flight start the next one on K groups that no round took yet (unless they are the
        iteration's last). True when the state changed."""
        k = cfg.run.groups_per_version
        it = self._current(state)
        if not k:
            return False
        if it.step_versions and it.step_versions[-1] != it.sampling_version:
            version = it.step_versions[-1]
            if not self._published(version):
                return False  # its round is still training
            seconds = self.promoter.promote(version)
            it.sampling_version = version
            self.save(state, f"{version} published; the sampler draws from it (switched in {seconds:.1f}s)")
            return True
        pending = self._examples(state, cfg)
        judged_all = len(self.tracker.iteration(state.run_id, state.iteration).judgment_sets) >= it.prompts
        if len(pending) < k or (judged_all and len(pending) == k):  # the last ones make M_{t+1} itself
            return False
        groups = pending[:k]
        n = len(it.step_versions) + 1
        version = f"{version_id(state.run_id, state.iteration + 1)}.s{n}"
        it.step_versions.append(version)
        it.trained_group_ids.extend(groups)
        cmd = self._round_command(state, cfg, n, version, groups)
        self.save(state, f"{k} groups to step version {version} (from {cmd.base_version})")
        self.trainer_launcher(cmd)
        return True

    def _judgments(self, state, cfg) -> bool:
        if self._step_round(state, cfg):
            return True
        view = self.tracker.iteration(state.run_id, state.iteration)
        it = self._current(state)
        if len(view.judgment_sets) < it.prompts:
            self._report_progress(state)
            return False
        if it.step_versions and it.step_versions[-1] != it.sampling_version:
            return False  # a step round is still training
        it.judgment_sets = len(view.judgment_sets)
        it.pairs = len(view.kept_pair_ids())
        _, ids, what, none = OBJECTIVES[cfg.run.objective]
        examples = len(getattr(view, ids)())
        if cfg.run.objective != "dpo":
            it.metrics[ids.removesuffix("_ids") + "s"] = examples  # rewarded_groups, scored_groups
        if it.step_versions:
            it.metrics["step_versions"] = len(it.step_versions)
        if examples == 0:
            it.gate_reason = none
            state.stage = it.stage = S.STAGE_PROMOTE
            self.save(state, it.gate_reason, **self.tracker.progress(state.run_id, state.iteration))
            return True
        state.stage = it.stage = S.STAGE_TRAINING
        left = self._examples(state, cfg)
        # Every group went into a step round: the last step version is the iteration's.
        it.output_version = version_id(state.run_id, state.iteration + 1) if left else it.step_versions[-1]
        self.save(state, f"{it.judgment_sets} prompts judged, {examples} {what} to {it.output_version}",
                  **self.tracker.progress(state.run_id, state.iteration))
        if left:
            self.trainer_launcher(self._training_command(state, cfg))
        return True

    def _training(self, state, cfg) -> bool:
        it = self._current(state)
        if not self._published(it.output_version):
            return False
        self.run_log.lineage(state.run_id, self.store)
        state.stage = it.stage = S.STAGE_EVAL
        self.save(state, f"{it.output_version} published")
        if self._gate_in_a_job(cfg):
            self.trainer_launcher(self._gate_command(state))
        return True

    def _gate_in_a_job(self, cfg: SRLMConfig) -> bool:
        """On Kubernetes the gate's engine does not fit the controller's pod (a 70B model on a CPU):
        it runs as a Job of its own (``srlm train gate``), which leaves its decision in the store."""
        return cfg.eval_gate.enabled and self.config.services.mode == "kubernetes"

    def _gate_command(self, state) -> records_pb2.IterationCommand:
        it = self._current(state)
        return self._command(state, S.COMMAND_KIND_EVAL_GATE, "gate", base_version=it.input_version,
                             output_version=it.output_version)

    def _eval(self, state, cfg: SRLMConfig) -> bool:
        it = self._current(state)
        if self._gate_in_a_job(cfg):
            result = stored_result(self.store, it.output_version, it.input_version)
            if result is None:
                return False  # the gate's Job is still at work
        elif cfg.eval_gate.enabled:
            suite = EvaluationSuite(cfg, self.store, self.judge().host, base_version=version_id(state.run_id, 0))
            result = evaluate(suite, it.output_version, it.input_version, cfg.eval_gate)
        else:
            result = GateResult(True, "promoted: eval gate disabled")
        it.promoted = result.promote
        it.gate_reason = result.reason
        it.metrics.update(result.metrics)
        state.stage = it.stage = S.STAGE_PROMOTE
        self.save(state, result.reason, **result.metrics)
        return True

    def _promote(self, state, cfg: SRLMConfig) -> bool:
        it = self._current(state)
        if it.output_version and it.promoted:
            seconds = self.promoter.promote(it.output_version)
            it.metrics["promotion_seconds"] = seconds
            self.publish_status(it.output_version, "promoted", it.gate_reason)
            state.serving_version = it.output_version
            message = f"{it.output_version} serves (switched in {seconds:.1f}s)"
        else:
            if it.output_version:
                self.publish_status(it.output_version, "rejected", it.gate_reason)
            message = f"{state.serving_version} keeps serving: {it.gate_reason}"
            if it.sampling_version:  # a step version served the sampler: M_t again
                self.promoter.promote(state.serving_version)
                message = f"{state.serving_version} serves again: {it.gate_reason}"
        it.stage = S.STAGE_DONE
        return self._next_iteration(state, cfg, message)

    def publish_status(self, version: str, status: str, reason: str) -> None:
        """Record a version's new status in the store and announce it on srlm.models."""
        self.store.set_status(version, status, reason)
        record = model_version_record(self.store, version)
        self._send("models", version, record)
        if record.run_id:
            self.run_log.text(record.run_id, "lineage", f"{version} (parent {record.parent_id or '-'}): {status}: {reason}",
                              record.iteration)
            self.run_log.lineage(record.run_id, self.store)

