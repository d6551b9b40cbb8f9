"""DPO: M_t -> M_{t+1} on the iteration's preference pairs, reference model M_t (paper 2.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

from srlm.config import DPOConfig
from srlm.models.store import Manifest, ModelStore
from srlm.trainer.data import dpo_examples
from srlm.trainer.job import (ProgressFn, configure_fused_lm_head, load_model, lora_config, run_round,
                              training_arguments, training_dataset)

REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def trl_loss(cfg: DPOConfig) -> dict:
    """srlm's loss names -> TRL's: DPO+NLL (iterative RPO) is the sigmoid loss plus TRL's 'sft' term."""
    if cfg.loss_type == "sigmoid+nll":
        return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.nll_weight]}
    return {"loss_type": [cfg.loss_type]}


def build_dpo_trainer(model_dir: Path, examples: list[dict], cfg: DPOConfig, *, output_dir: Path, seed: int,
                      callbacks: Sequence[TrainerCallback] = ()) -> DPOTrainer:
    """TRL's DPOTrainer with M_t as the reference.

    The reference log-probs come from M_t itself before any update (``precompute_ref_log_probs``,
    in eval mode: no dropout), from a frozen copy of M_t, or with LoRA from M_t with the adapter off.
    """
    configure_fused_lm_head(cfg)
    model, tokenizer = load_model(model_dir, cfg)
    peft_config = lora_config(cfg)
    separate_ref = not (peft_config or cfg.precompute_ref_log_probs)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32) if separate_ref else None
    args = TRLDPOConfig(**training_arguments(cfg, output_dir=output_dir, seed=seed), beta=cfg.beta,
                        disable_dropout=cfg.dropout == 0, precompute_ref_log_probs=cfg.precompute_ref_log_probs,
                        **trl_loss(cfg))
    return DPOTrainer(model=model, ref_model=ref_model, args=args,
                      train_dataset=training_dataset(examples, output_dir), processing_class=tokenizer,
                      peft_config=peft_config, callbacks=list(callbacks))


def dpo_round(rows: list[dict], cfg: DPOConfig):
    """What a DPO round trains on and with: the examples, the trainer builder, the summary metrics."""
    def build(model_dir, examples, *, output_dir, seed, callbacks):
        return build_dpo_trainer(model_dir, examples, cfg, output_dir=output_dir, seed=seed, callbacks=callbacks)

    return dpo_examples(rows), build, REWARD_METRICS


def train_dpo(store: ModelStore, base_version: str, out_version: str, rows: list[dict], cfg: DPOConfig, *,
              run_id: str | None, iteration: int, work_dir: Path, seed: int,
              progress_cb: ProgressFn | None = None, callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Train ``base_version`` on preference ``rows`` in this process and publish ``out_version``
    (idempotent, resumable)."""
    examples, build, summary_keys = dpo_round(rows, cfg)
    return run_round(store, kind="dpo", base_version=base_version, out_version=out_version, rows=rows,
                     examples=examples, cfg=cfg, build_trainer=build, summary_keys=summary_keys,
                     run_id=run_id, iteration=iteration, work_dir=work_dir, seed=seed, progress_cb=progress_cb,
                     callbacks=callbacks)
