"""Experiment tracking: live TensorBoard event files per srlm run (``tracking`` config).

Training rounds log through transformers' own ``TensorBoardCallback`` (``train/loss``,
``train/rewards/margins``... per optimizer step); the controller logs what it learns of the
run (stage counts, judge statistics, gate results, stage times) with ``RunLog``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from srlm.config import SRLMConfig


def _writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), flush_secs=10)


def training_callbacks(config: SRLMConfig, run_id: str | None, version: str) -> list:
    """Callbacks that log a training round of ``version``: TensorBoard to ``<run dir>/<version>``,
    and transformers' MLflow / W&B integrations when ``tracking.report_to`` names them."""
    from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

    callbacks = [{"mlflow": MLflowCallback, "wandb": WandbCallback}[name]() for name in config.tracking.report_to]
    if config.tracking.tensorboard:
        run_dir = config.tracking.run_dir(config.model_store.root, run_id)
        callbacks.append(TensorBoardCallback(tb_writer=_writer(run_dir / version)))
    return callbacks


class RunLog:
    """The controller's view of its runs as scalars (step = iteration) and text, one writer per run."""

    def __init__(self, config: SRLMConfig) -> None:
        self.config = config
        self._writers: dict[str, object] = {}

    def _for(self, run_id: str):
        if not self.config.tracking.tensorboard:
            return None
        if run_id not in self._writers:
            self._writers[run_id] = _writer(self.config.tracking.run_dir(self.config.model_store.root, run_id) / "controller")
        return self._writers[run_id]

    def scalars(self, run_id: str, prefix: str, values: Mapping[str, float], step: int) -> None:
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

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir`` as ``{tag: [(step, value)]}``, read with
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
