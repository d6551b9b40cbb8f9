"""A training round over several processes, launched by accelerate (torchrun underneath).

The process that asks for the round (the trainer service, or ``srlm train`` in a Kubernetes
pod) is the *parent*: on node 0 it stores the training set, claims the work dir and writes the
round's spec there; then, on every node, it runs ``accelerate launch`` of ``srlm.trainer.rank``
with the node's share of the processes and waits. Each rank joins the process group, reads the
spec and trains; global rank 0 writes the published version (see ``job.train_and_publish``).
A rank that dies makes torchrun end the others and the launch fail: the parent raises
``RoundFailed`` and a retry resumes from the last checkpoint in the work dir.

The topology comes from torchrun's own ``PET_*`` variables where a pod sets them (the chart's
Indexed Job; Kubeflow Trainer injects them), else ``distributed.num_processes`` on one node.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from srlm.config import DistributedConfig, SRLMConfig, TrainingSection, dump_config
from srlm.models.store import Manifest, ModelStore
from srlm.runtime import metrics as prom
from srlm.runtime.precision import training_precision
from srlm.trainer.job import PROGRESS_FILE, SPEC_FILE, ProgressFn, clear_work_dir, prepare_round

log = logging.getLogger(__name__)

LOCAL_MASTER = "127.0.0.1"


class RoundFailed(RuntimeError):
    """A rank of a distributed round failed; the launch ended (a retry resumes from a checkpoint)."""


@dataclass(frozen=True)
class Topology:
    nodes: int
    node_rank: int
    procs_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def distributed_round(cfg: DistributedConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a round runs under the launcher: a strategy is configured, or the pod's PET_*
    variables ask for more than one process (data parallel then). Otherwise it runs in the
    asking process."""
    return cfg.strategy != "none" or topology(cfg, environ).world_size > 1


def topology(cfg: DistributedConfig, environ: Mapping[str, str] = os.environ) -> Topology:
    """This node's place in the round: ``PET_*`` variables where set, else one node of
    ``cfg.num_processes``."""
    def number(name: str, default: int) -> int:
        raw = environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None

    topo = Topology(nodes=number("PET_NNODES", 1), node_rank=number("PET_NODE_RANK", 0),
                    procs_per_node=number("PET_NPROC_PER_NODE", cfg.num_processes),
                    master_addr=environ.get("PET_MASTER_ADDR") or LOCAL_MASTER,
                    master_port=number("PET_MASTER_PORT", cfg.main_process_port))
    if topo.nodes < 1 or topo.procs_per_node < 1 or not 0 <= topo.node_rank < topo.nodes:
        raise ValueError(f"impossible topology {topo}: node_rank must be in [0, nodes), counts >= 1")
    if topo.nodes > 1 and topo.master_addr == LOCAL_MASTER:
        raise ValueError("PET_MASTER_ADDR must name node 0's address when PET_NNODES > 1")
    return topo


def accelerate_config_file(cfg: DistributedConfig) -> Path:
    """The accelerate config of ``cfg.strategy``: the user's file, else the one shipped with srlm."""
    if cfg.config_file is not None:
        return cfg.config_file
    strategy = "ddp" if cfg.strategy == "none" else cfg.strategy  # PET_* without a strategy: data parallel
    return Path(str(resources.files("srlm.trainer") / "accelerate" / f"{strategy}.yaml"))


def launch_command(cfg: DistributedConfig, topo: Topology, spec: Path, precision: str,
                   python: str = sys.executable) -> list[str]:
    """``accelerate launch`` of this node's ranks; the topology on the command line wins over the
    config file's placeholders. Several nodes meet by c10d rendezvous at node 0."""
    command = [python, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_file(cfg)),
               "--num_processes", str(topo.world_size), "--num_machines", str(topo.nodes),
               "--machine_rank", str(topo.node_rank), "--main_process_ip", topo.master_addr,
               "--main_process_port", str(topo.master_port),
               "--mixed_precision", "bf16" if precision == "bf16" else "no", "--max_restarts", "0"]
    if topo.nodes > 1:
        command += ["--rdzv_backend", "c10d"]
    return command + ["--module", "srlm.trainer.rank", str(spec)]


def check_strategy(cfg: DistributedConfig, cuda_available: bool) -> None:
    """Refuse what cannot run here before any process starts, naming the field."""
    if cfg.strategy in ("fsdp", "deepspeed") and not cuda_available:
        raise ValueError(f"distributed.strategy: {cfg.strategy} needs GPUs (accelerate refuses it on a CPU); "
                         f"use ddp here")
    if cfg.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ValueError("distributed.strategy: deepspeed needs the deepspeed package "
                             "(pip install 'srlm[deepspeed]')") from None


# --------------------------------------------------------------------------- the parent


def run_distributed_round(store: ModelStore, config: SRLMConfig, *, kind: str, base_version: str, out_version: str,
                          rows: list[dict] | None, cfg: TrainingSection, run_id: str | None, iteration: int,
                          work_dir: Path, seed: int, progress_cb: ProgressFn | None = None,
                          data_metrics: Mapping[str, float] | None = None,
                          environ: Mapping[str, str] = os.environ) -> Manifest | None:
    """Run one round under the launcher; node 0 returns the published manifest, other nodes None.

    ``rows`` are needed on node 0 only (they become the stored training set).
    """
    import torch

    work_dir = Path(work_dir)
    dist = config.distributed
    check_strategy(dist, torch.cuda.is_available())
    topo = topology(dist, environ)
    spec_path = work_dir / SPEC_FILE
    if topo.node_rank == 0:
        if store.exists(out_version):
            log.info("%s is already published: nothing to train", out_version)
            if not cfg.keep_checkpoints:
                clear_work_dir(work_dir)
            return store.get(out_version)
        if rows is None:
            raise ValueError("node 0 of a distributed round needs the training rows")
        dataset, sha256, _ = prepare_round(store, kind=kind, base_version=base_version, out_version=out_version,
                                           rows=rows, cfg=cfg, work_dir=work_dir, seed=seed)
        write_spec(spec_path, {
            "kind": kind, "store_root": str(store.root), "base_version": base_version, "out_version": out_version,
            "dataset": dataset, "training_data_sha256": sha256, "run_id": run_id, "iteration": iteration,
            "seed": seed, "work_dir": str(work_dir), "data_metrics": dict(data_metrics or {}),
            "section": cfg.model_dump(mode="json"), "config_yaml": dump_config(config)})
        (work_dir / PROGRESS_FILE).unlink(missing_ok=True)
    command = launch_command(dist, topo, spec_path, training_precision(cfg.precision))
    log.info("%s %s -> %s on %d process(es) x %d node(s) (%s), node %d: %s", kind.upper(), base_version,
             out_version, topo.procs_per_node, topo.nodes, dist.strategy, topo.node_rank, " ".join(command))
    proc = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent)
    follower = _ProgressFollower(work_dir / PROGRESS_FILE, out_version, progress_cb) if topo.node_rank == 0 else None
    try:
        code = proc.wait()
    except BaseException:  # the parent is stopping: the ranks go with it (their checkpoints stay)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    finally:
        if follower is not None:
            follower.stop()
    if code != 0:
        raise RoundFailed(f"{kind} round {out_version}: the launcher exited with {code} (a rank failed; see its "
                          f"log above); a retry resumes from the last checkpoint in {work_dir}")
    if topo.node_rank != 0:
        return None
    if not store.exists(out_version):
        raise RoundFailed(f"{kind} round {out_version}: every rank ended but rank 0 published nothing")
    return store.get(out_version)


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM it when the parent dies (a killed trainer must not
    leave a round running that its restart would start again beside)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _ProgressFollower:
    """Reads rank 0's progress lines (``{"step", "total", "logs"}``) and reports them as an
    in-process round does: ``progress_cb`` and the training gauges on /metrics."""

    def __init__(self, path: Path, version: str, progress_cb: ProgressFn | None, interval_s: float = 1.0):
        self.path, self.version, self.progress_cb, self.interval_s = path, version, progress_cb, interval_s
        self._offset = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        try:
            with open(self.path) as fh:
                fh.seek(self._offset)
                while (line := fh.readline()).endswith("\n"):  # a line being written is read next time
                    self._offset = fh.tell()
                    self._report(json.loads(line))
        except FileNotFoundError:
            return

    def _report(self, entry: dict[str, Any]) -> None:
        prom.record_training_logs(self.version, entry["step"], entry["logs"])
        if self.progress_cb is not None:
            try:
                self.progress_cb(entry["step"], entry["total"], entry["logs"])
            except Exception:  # a failing status reporter must not stop the round
                log.exception("progress callback failed")

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.poll()


def progress_writer(path: Path) -> ProgressFn:
    """Rank 0's progress callback: one JSON line per log, read by the parent's follower."""
    def write(step: int, total: int, logs: dict[str, float]) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({"step": step, "total": total, "logs": logs}) + "\n")
    return write
