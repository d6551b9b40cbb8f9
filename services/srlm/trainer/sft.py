"""SFT: M0 -> M1 on IFT + EFT chat examples, the loss on the answer tokens only (paper 2.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from transformers import TrainerCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from srlm.config import SFTConfig
from srlm.models.store import Manifest, ModelStore
from srlm.trainer.data import sft_examples
from srlm.trainer.job import (ProgressFn, configure_fused_lm_head, load_model, lora_config, run_round,
                              training_arguments, training_dataset)


def fitting_examples(examples: list[dict], tokenizer, max_length: int) -> list[dict]:
    """The examples whose prompt and completion fit ``max_length`` tokens. TRL truncates the end
    of a longer one, which is its target: an EFT example would lose its verdict and teach the
    judge to stop before the score."""
    fit = [e for e in examples
           if len(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=True, return_dict=True)
                  ["input_ids"]) <= max_length]
    if not fit:
        raise ValueError(f"no SFT example fits sft.max_length {max_length}")
    return fit


def build_sft_trainer(model_dir: Path, examples: list[dict], cfg: SFTConfig, *, output_dir: Path, seed: int,
                      callbacks: Sequence[TrainerCallback] = ()) -> SFTTrainer:
    """TRL's SFTTrainer on prompt-completion examples: prompt tokens are masked out of the labels."""
    configure_fused_lm_head(cfg)
    model, tokenizer = load_model(model_dir, cfg)
    examples = fitting_examples(examples, tokenizer, cfg.max_length)
    args = TRLSFTConfig(**training_arguments(cfg, output_dir=output_dir, seed=seed), completion_only_loss=True)
    return SFTTrainer(model=model, args=args, train_dataset=training_dataset(examples, output_dir),
                      processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=list(callbacks))


def sft_round(rows: list[dict], cfg: SFTConfig):
    """What an SFT round trains on and with: the examples, the trainer builder, the summary metrics."""
    def build(model_dir, examples, *, output_dir, seed, callbacks):
        return build_sft_trainer(model_dir, examples, cfg, output_dir=output_dir, seed=seed, callbacks=callbacks)

    return sft_examples(rows), build, ("mean_token_accuracy",)


def train_sft(store: ModelStore, base_version: str, out_version: str, rows: list[dict], cfg: SFTConfig, *,
              run_id: str | None, iteration: int = 1, work_dir: Path, seed: int,
              progress_cb: ProgressFn | None = None, data_metrics: Mapping[str, float] | None = None,
              callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Fine-tune ``base_version`` on chat ``rows`` in this process and publish ``out_version``
    (idempotent, resumable)."""
    examples, build, summary_keys = sft_round(rows, cfg)
    return run_round(store, kind="sft", base_version=base_version, out_version=out_version, rows=rows,
                     examples=examples, cfg=cfg, build_trainer=build, summary_keys=summary_keys,
                     run_id=run_id, iteration=iteration, work_dir=work_dir, seed=seed, progress_cb=progress_cb,
                     data_metrics=data_metrics, callbacks=callbacks)
