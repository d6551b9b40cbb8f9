"""Experiment tracking: live TensorBoard event files per srlm run (``tracking`` config), and one
MLflow and/or W&B run per srlm run when ``tracking.report_to`` names them.

Training rounds log through transformers' own ``TensorBoardCallback`` (``train/loss``,
``train/rewards/margins``... per optimizer step) and ``ExternalTrackingCallback``; the controller
logs what it learns of the run (config, stage counts, judge statistics, gate results, stage
times, the model lineage) with ``RunLog``.

MLflow and W&B are not the source of truth (the store's manifests and ``srlm.runs`` are): a
tracker that cannot be reached is warned about once and skipped, never failing a round or a run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import yaml

from srlm.config import SRLMConfig

if TYPE_CHECKING:
    from srlm.models.store import ModelStore

log = logging.getLogger(__name__)

SRLM_RUN_TAG = "srlm.run_id"
RETRY_AFTER_S = 300.0  # an unreachable tracker is tried again after this long, not at every step


def _writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), flush_secs=10)


def version_label(run_id: str | None, version: str) -> str:
    """The short name a version's metrics are prefixed with: ``m2`` for ``<run>.m2``."""
    return version.removeprefix(f"{run_id}.") if run_id else version


def lineage_entries(store: ModelStore, run_id: str) -> list[dict[str, Any]]:
    """The run's versions as the store knows them, oldest first: parent, iteration, kind, the gate's
    status and reason, the training data and the manifest's sha256 (which pins every file)."""
    entries = []
    for manifest in store.list(run_id):
        status, reason = store.status(manifest.version_id)
        entries.append({"version": manifest.version_id, "label": version_label(run_id, manifest.version_id),
                        "parent": manifest.parent_id, "iteration": manifest.iteration, "kind": manifest.kind,
                        "status": status, "reason": reason, "created_at": manifest.created_at,
                        "training_data": manifest.training_data,
                        "training_data_sha256": manifest.training_data_sha256,
                        "manifest_sha256": store.manifest_sha256(manifest.version_id)})
    return entries


# --------------------------------------------------------------------------- MLflow / W&B


class _ExternalRun:
    """One srlm run in an external tracker, as seen by one process (``role``: ``controller`` or the
    version a training round makes). Attaches lazily; every call is best effort."""

    name = ""

    def __init__(self, config: SRLMConfig, run_id: str, role: str) -> None:
        self.config, self.run_id, self.role = config, run_id, role
        self._handle = None
        self._down_until = 0.0
        self._warned = False

    def _guarded(self, what: str, call: Callable[[Any], None]) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            if self._handle is None:
                self._handle = self._attach()
            call(self._handle)
        except Exception as err:  # noqa: BLE001 - tracking must not fail a round or a run
            self._down_until = time.monotonic() + RETRY_AFTER_S
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "%s tracking of run %s (%s) failed to %s: %s: %s; going on without it, retrying in %.0f s",
                    self.name, self.run_id, self.role, what, type(err).__name__, err, RETRY_AFTER_S)

    def _attach(self):
        raise NotImplementedError

    def log_config(self, config_yaml: str) -> None:
        raise NotImplementedError

    def log_metrics(self, values: Mapping[str, float], step: int, axis: str) -> None:
        """``axis``: the name of the step's quantity (W&B plots against it; MLflow has its own step)."""
        raise NotImplementedError

    def log_lineage(self, entries: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self, status: str | None = None) -> None:
        """Let go of the run; ``status`` (FINISHED, FAILED): the srlm run ended so."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_SECRET_KEY = re.compile(r"password|secret|credential", re.IGNORECASE)


def redacted(tree: Any) -> Any:
    """The config without its secrets (Kafka SASL passwords...), fit to leave the cluster."""
    if isinstance(tree, Mapping):
        return {k: "<redacted>" if _SECRET_KEY.search(str(k)) and v is not None else redacted(v)
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redacted(v) for v in tree]
    return tree


_METRIC_KEY = re.compile(r"[^\w\-. :/]")  # what MLflow accepts in a metric name


class MlflowRun(_ExternalRun):
    """The MLflow run tagged ``srlm.run_id=<run>`` in ``tracking.mlflow.experiment``: found by that
    tag, so every process attaches to the same one; created by whichever process comes first."""

    name = "MLflow"

    def _attach(self):
        from mlflow import MlflowClient
        from mlflow.entities import RunStatus

        # MLflow retries an unreachable server 7 times over minutes by default: a training step
        # would wait that long. Bounded here unless its own variables say otherwise.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        settings = self.config.tracking.mlflow
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        experiment_id = self._experiment(client, settings.experiment)
        run_ids = self._find(client, experiment_id)
        if not run_ids:
            mine = client.create_run(experiment_id, run_name=self.run_id, tags={SRLM_RUN_TAG: self.run_id}).info.run_id
            run_ids = self._find(client, experiment_id)
            # Two processes that both found none both created one: all agree on the oldest, the
            # others are deleted by their creators.
            if run_ids and run_ids[0] != mine:
                client.delete_run(mine)
            run_ids = run_ids or [mine]
        elif client.get_run(run_ids[0]).info.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run_ids[0], status="RUNNING")  # a resumed run logs again
        return client, run_ids[0]

    @staticmethod
    def _experiment(client, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:  # created by another process meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _find(self, client, experiment_id: str) -> list[str]:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{SRLM_RUN_TAG}` = '{self.run_id}'",
                                  max_results=100)
        return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]

    def log_config(self, config_yaml: str) -> None:
        def call(handle):
            from mlflow.entities import Param
            from mlflow.utils.validation import (MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH,
                                                 MAX_PARAMS_TAGS_PER_BATCH)

            client, mlflow_run = handle
            client.log_text(mlflow_run, config_yaml, "config.yaml")
            flat = _flatten(yaml.safe_load(config_yaml) or {})
            params = [Param(key[:MAX_ENTITY_KEY_LENGTH],
                            (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_VAL_LENGTH])
                      for key, value in sorted(flat.items())]
            for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(mlflow_run, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

        self._guarded("log the config", call)

    def log_metrics(self, values: Mapping[str, float], step: int, axis: str) -> None:
        def call(handle):
            from mlflow.entities import Metric

            client, mlflow_run = handle
            now = int(time.time() * 1000)
            client.log_batch(mlflow_run, metrics=[Metric(_METRIC_KEY.sub("_", key), float(value), now, step)
                                                  for key, value in values.items()])

        if values:
            self._guarded("log metrics", call)

    def log_lineage(self, entries: list[dict[str, Any]]) -> None:
        def call(handle):
            from mlflow.entities import RunTag
            from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

            client, mlflow_run = handle
            client.log_dict(mlflow_run, entries, "lineage.json")
            tags = [RunTag(f"srlm.lineage.{e['label']}.{field}",
                           ("-" if e[field] is None else str(e[field]))[:MAX_TAG_VAL_LENGTH])
                    for e in entries for field in ("version", "parent", "iteration", "kind", "status", "reason")]
            client.log_batch(mlflow_run, tags=tags)

        self._guarded("log the lineage", call)

    def close(self, status: str | None = None) -> None:
        if status is not None:
            self._guarded(f"mark the run {status}", lambda handle: handle[0].set_terminated(handle[1], status))


def wandb_run_id(run_id: str) -> str:
    """The W&B run id of an srlm run: derived, so every process resumes the same W&B run."""
    return "srlm-" + hashlib.sha256(run_id.encode()).hexdigest()[:16]


class WandbRun(_ExternalRun):
    """The W&B run ``wandb_run_id(run)`` in ``tracking.wandb.project``. Online, processes write to it
    concurrently in W&B's shared mode (the controller is its primary writer); offline each writes
    its own files of that run id, which ``wandb sync`` merges."""

    name = "W&B"

    def _attach(self):
        import wandb

        mode = os.environ.get("WANDB_MODE", "online")
        shared = mode in ("online", "run")
        primary = self.role == "controller"
        settings = wandb.Settings(mode="shared" if shared else mode, x_label=self.role, reinit="create_new",
                                  silent=True, **({"x_primary": primary, "x_update_finish_state": primary}
                                                  if shared else {}))
        settings_wandb = self.config.tracking.wandb
        run = wandb.init(id=wandb_run_id(self.run_id), name=self.run_id, project=settings_wandb.project,
                         entity=settings_wandb.entity, resume=None if shared else "allow",
                         tags=[f"{SRLM_RUN_TAG}={self.run_id}"], settings=settings)
        self._axes: set[str] = set()
        return run

    def log_config(self, config_yaml: str) -> None:
        self._guarded("log the config", lambda run: run.config.update(yaml.safe_load(config_yaml) or {},
                                                                      allow_val_change=True))

    def log_metrics(self, values: Mapping[str, float], step: int, axis: str) -> None:
        def call(run):
            # Processes share the run, so no global step: each group of metrics is plotted
            # against its own axis (the controller's iteration, a round's global step).
            for group in {key.split("/", 1)[0] for key in values} - self._axes:
                run.define_metric(f"{group}/*", step_metric=axis)
                self._axes.add(group)
            run.log({**{key: float(value) for key, value in values.items()}, axis: step})

        if values:
            self._guarded("log metrics", call)

    def log_lineage(self, entries: list[dict[str, Any]]) -> None:
        self._guarded("log the lineage", lambda run: run.summary.update({"lineage": {e["label"]: e for e in entries}}))

    def close(self, status: str | None = None) -> None:
        if self._handle is not None:
            run, self._handle = self._handle, None
            try:
                run.finish(exit_code=1 if status == "FAILED" else 0)
            except Exception as err:  # noqa: BLE001
                log.warning("W&B run of %s did not finish cleanly: %s", self.run_id, err)


def external_runs(config: SRLMConfig, run_id: str, role: str) -> list[_ExternalRun]:
    """The srlm run ``run_id`` in every tracker ``tracking.report_to`` names."""
    return [{"mlflow": MlflowRun, "wandb": WandbRun}[name](config, run_id, role) for name in config.tracking.report_to]


@functools.cache  # transformers is imported only by processes that train
def _callback_class():
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs

    class ExternalTrackingCallback(TrainerCallback):
        """A training round's per-step logs (what ``TensorBoardCallback`` gets) into the srlm run's
        MLflow / W&B run, keys prefixed by the version (``m2/train/loss``), step = global step.

        The srlm run itself rather than a nested run per round: every process finds it by one tag,
        the lineage and the rounds' curves sit side by side, and W&B (no nested runs) has the same
        shape."""

        def __init__(self, runs: list[_ExternalRun], label: str) -> None:
            self.runs, self.label = runs, label

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            values = {f"{self.label}/{key}": value for key, value in rewrite_logs(logs).items()
                      if isinstance(value, (int, float))}
            for run in self.runs:
                run.log_metrics(values, state.global_step, f"global_step/{self.label}")

        def on_train_end(self, args, state, control, **kwargs):
            for run in self.runs:
                run.close()

    return ExternalTrackingCallback


def training_callbacks(config: SRLMConfig, run_id: str | None, version: str) -> list:
    """Callbacks that log a training round of ``version``: TensorBoard to ``<run dir>/<version>``,
    and the srlm run's MLflow / W&B run when ``tracking.report_to`` names them."""
    from transformers.integrations import TensorBoardCallback

    callbacks = []
    if config.tracking.report_to:
        callbacks.append(_callback_class()(external_runs(config, run_id or "no-run", version),
                                           version_label(run_id, version)))
    if config.tracking.tensorboard:
        run_dir = config.tracking.run_dir(config.model_store.root, run_id)
        callbacks.append(TensorBoardCallback(tb_writer=_writer(run_dir / version)))
    return callbacks


class RunLog:
    """The controller's view of its runs as scalars (step = iteration), text, config and lineage: one
    TensorBoard writer per run, and the run in each tracker ``tracking.report_to`` names."""

    def __init__(self, config: SRLMConfig) -> None:
        self.config = config
        self._writers: dict[str, object] = {}
        self._external: dict[str, list[_ExternalRun]] = {}

    def _for(self, run_id: str):
        if not self.config.tracking.tensorboard:
            return None
        if run_id not in self._writers:
            self._writers[run_id] = _writer(self.config.tracking.run_dir(self.config.model_store.root, run_id) / "controller")
        return self._writers[run_id]

    def _runs(self, run_id: str) -> list[_ExternalRun]:
        if run_id not in self._external:
            self._external[run_id] = external_runs(self.config, run_id, "controller")
        return self._external[run_id]

    def scalars(self, run_id: str, prefix: str, values: Mapping[str, float], step: int) -> None:
        for run in self._runs(run_id):
            run.log_metrics({f"{prefix}/{key}": value for key, value in values.items()}, step, "iteration")
        writer = self._for(run_id)
        if writer is None:
            return
        for key, value in values.items():
            writer.add_scalar(f"{prefix}/{key}", float(value), step)
        writer.flush()

    def text(self, run_id: str, tag: str, text: str, step: int = 0) -> None:
        writer = self._for(run_id)
        if writer is not None:
            # TensorBoard renders text as markdown: indent to keep YAML's layout.
            writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)
            writer.flush()

    def run_config(self, run_id: str, config_yaml: str) -> None:
        """The run's resolved config: TensorBoard text, MLflow ``config.yaml`` and params, W&B config."""
        self.text(run_id, "config", config_yaml)
        if self.config.tracking.report_to:
            public = yaml.safe_dump(redacted(yaml.safe_load(config_yaml) or {}), sort_keys=False)
            for run in self._runs(run_id):
                run.log_config(public)

    def lineage(self, run_id: str, store: ModelStore) -> None:
        """The run's versions and the gate's decisions so far (MLflow ``lineage.json`` and tags, W&B
        summary); called whenever a version appears or changes status."""
        if self.config.tracking.report_to:
            entries = lineage_entries(store, run_id)
            for run in self._runs(run_id):
                run.log_lineage(entries)

    def finish(self, run_id: str, failed: bool) -> None:
        for run in self._external.pop(run_id, []):
            run.close("FAILED" if failed else "FINISHED")

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        for runs in self._external.values():
            for run in runs:
                run.close()
        self._external.clear()


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir`` as ``{tag: [(step, value)]}``, read with
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
