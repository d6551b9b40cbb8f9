"""One training round (SFT, DPO, GRPO, a reward model): a base version and rows in, a published version out.

What both stages share lives here: idempotent replay (a published ``out_version`` is returned
without training), the training set stored beside the models, checkpoints in ``work_dir`` and
resume from the last complete one, progress reports, merging a LoRA adapter, and publishing
the model with its metrics. ``sft.py`` and ``dpo.py`` only build their TRL trainer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
import transformers
import trl
from datasets import Dataset, load_from_disk
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, Trainer, TrainerCallback

from srlm.config import TrainingSection
from srlm.models.adapters import ADAPTER_CONFIG, adapter_config, concat_adapters, merge_into_folder
from srlm.models.store import ADAPTER_BASE, Manifest, ModelStore
from srlm.runtime import metrics as prom
from srlm.runtime.precision import training_precision
from srlm.trainer.schedule import gradient_accumulation_steps, lr_scheduler_args

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict[str, float]], None]
JOB_FILE = "srlm-job.json"
# A distributed round's spec and rank 0's progress lines (distributed.py), removed with the work dir.
SPEC_FILE = "srlm-round.json"
PROGRESS_FILE = "srlm-progress.jsonl"
SHARED_DATA_DIR = "train-data"
MERGED_PARENT_DIR = "parent-merged"  # an adapter parent's merged weights (merged_parent)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Per-step metrics in the manifest are the mean of the last logged steps, not one noisy step.
SUMMARY_LOGS = 10
# Config fields through which Hugging Face models read their dropout probabilities.
DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                  "hidden_dropout_prob", "attention_probs_dropout_prob")


class WorkDirMismatch(RuntimeError):
    """``work_dir`` holds the checkpoints of a different training job."""


class TrainerBuilder(Protocol):
    def __call__(self, model_dir: Path, examples: list[dict], *, output_dir: Path, seed: int,
                 callbacks: Sequence[TrainerCallback]) -> Trainer: ...


# --------------------------------------------------------------------------- building blocks


def training_arguments(cfg: TrainingSection, *, output_dir: Path, seed: int) -> dict[str, Any]:
    """Keywords common to TRL's SFTConfig and DPOConfig, from the srlm config section."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, int(os.environ.get("WORLD_SIZE", "1"))),
        "learning_rate": cfg.learning_rate,
        **lr_scheduler_args(cfg),
        "num_train_epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps,
        "max_length": cfg.max_length,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "logging_steps": cfg.logging_steps,
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not torch.cuda.is_available(),  # TRL's bf16 fails on a CPU unless use_cpu is set
        "bf16": training_precision(cfg.precision) == "bf16",
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False,
                                          "every_n_layers": cfg.gradient_checkpointing_every_n_layers},
        "include_num_input_tokens_seen": "non_padding",
        "report_to": [],
        "disable_tqdm": True,
    }


def training_dataset(examples: list[dict], output_dir: Path) -> Dataset:
    """The examples as a Dataset. In a round of several processes it is a file-backed copy in the
    work dir, written by rank 0: TRL caches derived columns (DPO's precomputed reference log-probs)
    beside a dataset's files, and another rank reads that cache by path, which for an in-memory
    dataset would be a temporary folder of rank 0's own."""
    dataset = Dataset.from_list(examples)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return dataset
    from accelerate import PartialState

    path = output_dir / SHARED_DATA_DIR
    with PartialState().main_process_first():
        if PartialState().is_main_process:
            shutil.rmtree(path, ignore_errors=True)  # a failed attempt's caches
            dataset.save_to_disk(path)
        return load_from_disk(path)


def load_model(model_dir: Path, cfg: TrainingSection, auto_class=AutoModelForCausalLM,
               **model_kwargs) -> tuple[PreTrainedModel, Any]:
    """The model to train (fp32 weights, the config's dropout) and its tokenizer; ``auto_class``
    and ``model_kwargs`` for another head (the reward model's one-output classifier)."""
    config = AutoConfig.from_pretrained(model_dir)
    dropout = {name: cfg.dropout for name in DROPOUT_FIELDS if hasattr(config, name)}
    if cfg.dropout and not dropout:
        log.warning("%s has none of the dropout fields %s: training without dropout", config.model_type,
                    DROPOUT_FIELDS)
    model = auto_class.from_pretrained(model_dir, dtype=torch.float32, **dropout, **model_kwargs)
    if cfg.gradient_checkpointing:
        keep_every_n_layers(model, cfg.gradient_checkpointing_every_n_layers)
    return model, AutoTokenizer.from_pretrained(model_dir)


def keep_every_n_layers(model: PreTrainedModel, every_n_layers: int) -> None:
    """Make every (re-)enabling of gradient checkpointing on ``model`` checkpoint every n-th layer.

    The Trainer passes ``every_n_layers`` from ``gradient_checkpointing_kwargs``, but TRL turns
    checkpointing off around each reference forward (LoRA, or no precomputed reference) and back
    on with those kwargs as the checkpoint function's arguments: every layer again."""
    enable = model.gradient_checkpointing_enable

    def enable_every_n(gradient_checkpointing_kwargs=None, every_n_layers=every_n_layers, **kwargs):
        checkpoint_kwargs = {k: v for k, v in (gradient_checkpointing_kwargs or {}).items() if k != "every_n_layers"}
        return enable(checkpoint_kwargs or None, every_n_layers=every_n_layers, **kwargs)

    model.gradient_checkpointing_enable = enable_every_n


def configure_fused_lm_head(cfg: TrainingSection) -> None:
    """TRL's fused LM head as srlm trains with it (process-wide: TRL 1.16 reads both settings
    from its module at each call):

    - it scores ``cfg.logprob_tile`` vocabulary columns at a time. TRL's default tile (32768
      columns) keeps several fp32 ``[tokens, 32768]`` temporaries alive in its CPU fallback:
      ~2 GiB at batch 2 x 512 tokens, a third of the DPO step's peak;
    - on a CPU too it projects only the positions that have a label, as it does on CUDA. TRL
      projects every position elsewhere because a varying count recompiles XLA graphs (Neuron);
      on a CPU that is pure waste: an EFT example is a 400-770-token judge prompt and a ~50-token
      target, so the head ran 10-15x the positions the loss needs (bench/sft.py: a step x1.36).
    """
    import trl.trainer.utils as trl_utils

    if not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE") or not hasattr(trl_utils, "_use_triton"):
        log.warning("this TRL (%s) has no _CHUNKED_LOGPROB_CHUNK_SIZE or _use_triton: logprob_tile is ignored and "
                    "the fused LM head scores every position on a CPU", trl.__version__)
        return
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = cfg.logprob_tile
    if not getattr(trl_utils._use_triton, "srlm_compact_on_cpu", False):
        trl_utils._use_triton = _compact_on_cpu(trl_utils._use_triton)


def _compact_on_cpu(use_triton: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """TRL's "compact" test (score only the labelled positions; Triton's devices) with the CPU
    added. In ``trl.trainer.utils`` it decides nothing else: the kernels read their own."""
    def compact(device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.srlm_compact_on_cpu = True
    compact.__wrapped__ = use_triton
    return compact


def lora_config(cfg: TrainingSection, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig when ``use_lora``; merged into the weights before publishing. For
    ``SEQ_CLS`` peft also trains the new classification head in full."""
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type=task_type)


class ProgressCallback(TrainerCallback):
    """Forwards each log to ``progress_cb(step, total_steps, logs)``; notes where this session began."""

    def __init__(self, progress_cb: ProgressFn | None, version: str = ""):
        self.progress_cb = progress_cb
        self.version = version  # labels the training gauges on /metrics
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # Called after a checkpoint's state is loaded: a resumed run starts at its step.
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {k: float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log.info("step %d/%d %s", state.global_step, state.max_steps,
                 " ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
        if self.version:
            prom.record_training_logs(self.version, state.global_step, numbers)
        if self.progress_cb is not None:
            try:
                self.progress_cb(state.global_step, state.max_steps, numbers)
            except Exception:  # a failing status reporter must not stop a training run
                log.exception("progress callback failed at step %d", state.global_step)


# --------------------------------------------------------------------------- work dir


def bind_work_dir(work_dir: Path, job: dict[str, Any]) -> None:
    """Claim ``work_dir`` for ``job``; refuse checkpoints that another job left there."""
    path = work_dir / JOB_FILE
    job = json.loads(json.dumps(job, sort_keys=True))
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != job:
            differ = sorted(k for k in existing.keys() | job.keys() if existing.get(k) != job.get(k))
            raise WorkDirMismatch(f"{work_dir} holds checkpoints of another training job (it differs in "
                                  f"{differ}); remove the folder to start this one from scratch")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=2, sort_keys=True))
    os.replace(tmp, path)


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint; ones a crash cut short (no trainer_state.json) are removed.

    transformers writes ``trainer_state.json`` last, so its presence marks a complete save.
    """
    for path in work_dir.glob("checkpoint-*"):
        if CHECKPOINT_RE.match(path.name) and path.is_dir() and not (path / "trainer_state.json").is_file():
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return complete_checkpoint(work_dir)


def complete_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint, removing nothing (the ranks of a distributed round)."""
    complete = [(int(m.group(1)), path) for path in work_dir.glob("checkpoint-*")
                if (m := CHECKPOINT_RE.match(path.name)) and (path / "trainer_state.json").is_file()]
    return max(complete)[1] if complete else None


def clear_work_dir(work_dir: Path) -> None:
    """Remove what training put in ``work_dir`` (checkpoints, TRL's model card, job file), then the
    folder if nothing else is there."""
    if not (work_dir / JOB_FILE).is_file():
        return
    for path in work_dir.glob("checkpoint-*"):
        if CHECKPOINT_RE.match(path.name):
            shutil.rmtree(path, ignore_errors=True)
    for name in (SHARED_DATA_DIR, MERGED_PARENT_DIR):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    for name in ("README.md", SPEC_FILE, PROGRESS_FILE, JOB_FILE):
        (work_dir / name).unlink(missing_ok=True)
    try:
        work_dir.rmdir()
    except OSError:
        pass  # something else lives there


# --------------------------------------------------------------------------- the round


def save_trained_model(trainer: Trainer, model_dir: Path, out_dir: Path, state_dict: dict | None = None) -> None:
    """A full Hugging Face folder: LoRA merged, the base's config values the training changed restored.
    ``state_dict``: the full weights gathered from the ranks of a sharded round."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model = model.merge_and_unload()
        state_dict = None
    base = AutoConfig.from_pretrained(model_dir)
    for name in (*DROPOUT_FIELDS, "use_cache"):
        if hasattr(base, name):
            setattr(model.config, name, getattr(base, name))
    model.save_pretrained(out_dir, state_dict=state_dict)
    trainer.processing_class.save_pretrained(out_dir)


def save_adapter(trainer: Trainer, out_dir: Path, parent_adapter: Path | None, base_id: str) -> None:
    """The trained LoRA adapter alone, applying to the full version ``base_id``: when the round
    started from an adapter version (``parent_adapter``), that adapter and this one combined."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if parent_adapter is None:
        model.save_pretrained(out_dir)
        config = adapter_config(out_dir)
        (out_dir / ADAPTER_CONFIG).write_text(json.dumps(dict(config, base_model_name_or_path=base_id), indent=2))
    else:
        new = out_dir / ".round-adapter"
        model.save_pretrained(new)
        concat_adapters(parent_adapter, new, out_dir, base_name=base_id)
        shutil.rmtree(new)
    trainer.processing_class.save_pretrained(out_dir)


def merged_parent(store: ModelStore, version: str, base: str, work_dir: Path) -> Path:
    """A full folder of the adapter version ``version`` merged into its base, kept in the work dir
    (a resumed round reuses it; every rank of a round may write it, the first rename wins)."""
    final = work_dir / MERGED_PARENT_DIR
    if not final.is_dir():
        staged = work_dir / f".{MERGED_PARENT_DIR}.{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        merge_into_folder(store.path(base), store.path(version), staged)
        try:
            os.rename(staged, final)
        except OSError:  # another rank was first
            shutil.rmtree(staged, ignore_errors=True)
    return final


def summarize(trainer: Trainer, train_metrics: dict[str, float], progress: ProgressCallback,
              summary_keys: Sequence[str]) -> dict[str, float]:
    """The manifest's metrics: final loss, speed, and ``summary_keys`` over the last logged steps."""
    state = trainer.state
    steps = [h for h in state.log_history if "loss" in h]  # includes steps before a resume
    last = steps[-SUMMARY_LOGS:]
    runtime = float(train_metrics.get("train_runtime", 0.0))
    tokens = state.num_input_tokens_seen - progress.start_tokens
    metrics = {
        "loss": float(steps[-1]["loss"]) if steps else float(train_metrics.get("train_loss", 0.0)),
        "train_runtime": runtime,
        "train_tokens": float(tokens),
        "train_tokens_per_second": tokens / runtime if runtime > 0 else 0.0,
        "global_step": float(state.global_step),
        "resumed_from_step": float(progress.start_step),
        "epoch": float(state.epoch or 0.0),
    }
    for key in summary_keys:
        values = [float(h[key]) for h in last if key in h]
        if values:
            metrics[key] = statistics.fmean(values)
    return metrics


def step_logs(log_history: list[dict]) -> list[dict[str, float]]:
    """The trainer's per-step logs (loss, learning rate, DPO rewards and margins...) as numbers,
    for the manifest and the run report's training plot; the closing summary is left out."""
    return [{k: float(v) for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for h in log_history if "loss" in h]


def run_round(store: ModelStore, *, kind: str, base_version: str, out_version: str, rows: list[dict],
              examples: list[dict], cfg: TrainingSection, build_trainer: TrainerBuilder, summary_keys: Sequence[str],
              run_id: str | None, iteration: int, work_dir: Path, seed: int,
              progress_cb: ProgressFn | None = None, data_metrics: Mapping[str, float] | None = None,
              callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Train ``base_version`` on ``examples`` in this process and publish ``out_version`` (its parent:
    the base). ``data_metrics`` (how the training set was made) join the training metrics in the
    manifest; ``callbacks`` (experiment tracking) see every logged step.

    ``rows`` (as given, already validated into ``examples``) are stored as the training set.
    A process killed mid-way and started again with the same arguments resumes from the last
    checkpoint in ``work_dir``; one started after publishing gets the published manifest.
    """
    work_dir = Path(work_dir)
    if store.exists(out_version):
        log.info("%s is already published: nothing to train", out_version)
        if not cfg.keep_checkpoints:
            clear_work_dir(work_dir)
        return store.get(out_version)
    dataset, data_sha256, checkpoint = prepare_round(store, kind=kind, base_version=base_version,
                                                     out_version=out_version, rows=rows, cfg=cfg, work_dir=work_dir,
                                                     seed=seed)
    manifest = train_and_publish(store, kind=kind, base_version=base_version, out_version=out_version,
                                 examples=examples, cfg=cfg, build_trainer=build_trainer, summary_keys=summary_keys,
                                 run_id=run_id, iteration=iteration, work_dir=work_dir, seed=seed, dataset=dataset,
                                 data_sha256=data_sha256, checkpoint=checkpoint,
                                 progress_cb=progress_cb, data_metrics=data_metrics, callbacks=callbacks)
    assert manifest is not None  # one process is the main process
    return manifest


def prepare_round(store: ModelStore, *, kind: str, base_version: str, out_version: str, rows: list[dict],
                  cfg: TrainingSection, work_dir: Path, seed: int) -> tuple[str, str, Path | None]:
    """Store the training set beside the models and claim ``work_dir`` for this round (once, before
    any rank trains); returns the data set's name and checksum and the checkpoint to resume from
    (incomplete ones are removed)."""
    dataset = f"{out_version}.{kind}"
    data_sha256 = store.put_dataset(dataset, rows)
    bind_work_dir(work_dir, {"kind": kind, "base_version": base_version, "out_version": out_version,
                             "training_data_sha256": data_sha256, "seed": seed,
                             "config": cfg.model_dump(mode="json")})
    return dataset, data_sha256, last_checkpoint(work_dir)


def train_and_publish(store: ModelStore, *, kind: str, base_version: str, out_version: str, examples: list[dict],
                      cfg: TrainingSection, build_trainer: TrainerBuilder, summary_keys: Sequence[str],
                      run_id: str | None, iteration: int, work_dir: Path, seed: int, dataset: str, data_sha256: str,
                      checkpoint: Path | None, progress_cb: ProgressFn | None = None,
                      data_metrics: Mapping[str, float] | None = None,
                      callbacks: Sequence[TrainerCallback] = ()) -> Manifest | None:
    """Train (from ``checkpoint`` if given) and publish: one process, or every rank of a distributed
    round, of which the main process alone writes the version (None on the others)."""
    log.info("%s %s -> %s on %d examples%s", kind.upper(), base_version, out_version, len(examples),
             f", resuming from {checkpoint.name}" if checkpoint else "")
    model_dir = store.path(base_version)  # checksums verified
    adapter_of = store.adapter_base(base_version)
    if adapter_of:  # an adapter version: train from its merged weights
        model_dir = merged_parent(store, base_version, adapter_of, work_dir)
    progress = ProgressCallback(progress_cb, version=out_version)
    trainer = build_trainer(model_dir, examples, output_dir=work_dir, seed=seed, callbacks=[progress, *callbacks])
    dropped = len(examples) - len(trainer.train_dataset)
    if dropped:  # examples that do not fit max_length (their target would be cut) are left out
        log.warning("%d of %d examples do not fit max_length %d and are not trained on",
                    dropped, len(examples), cfg.max_length)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    # Figures a trainer measures once trained (the reward model's held-out accuracy); every rank
    # computes them, since a sharded model's forward is a collective.
    final_metrics = trainer.final_metrics() if hasattr(trainer, "final_metrics") else {}
    accelerator = trainer.accelerator
    # Under FSDP / ZeRO-3 the full weights exist only once gathered: a collective of every rank.
    state_dict = accelerator.get_state_dict(trainer.model) if accelerator.num_processes > 1 else None
    manifest = None
    if accelerator.is_main_process:
        metrics = summarize(trainer, result.metrics, progress, summary_keys)
        metrics.update(examples=float(len(examples)), examples_dropped=float(dropped), **(data_metrics or {}),
                       **final_metrics)
        as_adapter = cfg.use_lora and cfg.lora_publish == "adapter"
        extra = {"config": cfg.model_dump(mode="json"), "seed": seed, "lora_merged": cfg.use_lora and not as_adapter,
                 "world_size": accelerator.num_processes,
                 "log_history": step_logs(trainer.state.log_history),
                 "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                              "torch": torch.__version__}}
        if as_adapter:
            extra[ADAPTER_BASE] = adapter_of or base_version
        with store.staging(out_version) as staged:
            if as_adapter:
                save_adapter(trainer, staged, store.path(base_version) if adapter_of else None, extra[ADAPTER_BASE])
            else:
                save_trained_model(trainer, model_dir, staged, state_dict)
            manifest = store.publish(staged, version_id=out_version, parent_id=base_version, run_id=run_id,
                                     iteration=iteration, kind=kind, training_data=dataset,
                                     training_data_sha256=data_sha256, metrics=metrics, extra=extra)
    accelerator.wait_for_everyone()  # no rank ends (and no work dir goes) before the version is written
    if accelerator.is_main_process and not cfg.keep_checkpoints:
        clear_work_dir(work_dir)
    return manifest
