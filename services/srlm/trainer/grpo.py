"""GRPO: M_t -> M_{t+1} on the iteration's scored candidate groups (``run.objective: grpo``).

TRL's GRPOTrainer does the maths (group-normalised advantages, the clipped ratio, the KL to
M_t, token aggregation); srlm only hands it the groups that the sampler drew and the scoring
service rewarded on the bus, through TRL's ``rollout_func``: the trainer generates nothing.
The sampler recorded each token's log-probability under the version that sampled it; with
``importance_correction`` those are the clipped ratio's denominator (the behaviour policy),
so a group sampled by an older version than the one being trained is corrected for, as in
asynchronous RL systems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from srlm.config import GRPOConfig
from srlm.models.engines.base import chat_prompt_ids
from srlm.models.store import Manifest, ModelStore
from srlm.trainer.data import TrainingDataError, grpo_groups, sampling_temperature
from srlm.trainer.job import (ProgressFn, configure_fused_lm_head, load_model, lora_config, run_round,
                              training_arguments, training_dataset)

# TRL's per-step logs averaged into the manifest ("kl" only when beta > 0).
SUMMARY_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/region_mean",
                   "completions/mean_length")


def recorded_reward(prompts, completions, reward, **kwargs) -> list[float | None]:
    """The rewards the scoring service gave (TRL reward function; None: unscored)."""
    return list(reward)


class GroupGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts are candidate groups sampled and scored elsewhere.

    TRL repeats each prompt ``num_generations`` times in a row and, over all processes, treats
    consecutive runs of that length as one group; the candidate of a position is therefore its
    global position modulo the group size."""

    def __init__(self, *args, groups: dict[str, list[dict[str, Any]]], importance_correction: bool, **kwargs):
        self.groups = groups
        self.importance_correction = importance_correction
        super().__init__(*args, reward_funcs=[recorded_reward], rollout_func=self._rollout, **kwargs)

    def _rollout(self, prompts: list, trainer: GRPOTrainer) -> dict[str, list]:
        tok = self.processing_class
        start = self.accelerator.process_index * len(prompts)
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "reward": []}
        for i, prompt in enumerate(prompts):
            candidate = self.groups[prompt[-1]["content"]][(start + i) % self.num_generations]
            token_ids = candidate["token_ids"] or tok(candidate["text"], add_special_tokens=False)["input_ids"]
            out["prompt_ids"].append(chat_prompt_ids(tok, prompt))
            out["completion_ids"].append(token_ids)
            out["logprobs"].append(candidate["logprobs"] or [None] * len(token_ids))
            out["reward"].append(candidate["reward"])
        return out

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        sampled = out.get("sampling_per_token_logps")
        # Only when every candidate of the batch has its log-probs: otherwise TRL's own (the
        # trained weights before this batch's updates) for all, rather than a mix.
        if self.importance_correction and sampled is not None and not torch.isnan(sampled).any():
            out["old_per_token_logps"] = sampled * out["completion_mask"]
        return out


def grpo_examples(rows: list[dict], cfg: GRPOConfig) -> tuple[list[dict], dict[str, list[dict]], float]:
    """The trainer's examples (one conversational prompt per group), the groups by prompt, and
    the temperature they were sampled at (the trainer scores the tokens at the same one)."""
    groups = grpo_groups(rows, drop_uniform=cfg.drop_uniform_groups)
    if not groups:
        raise TrainingDataError(f"none of the {len(rows)} groups has rewards that differ: nothing to learn from")
    return [{"prompt": [{"role": "user", "content": prompt}]} for prompt in groups], groups, sampling_temperature(rows)


def build_grpo_trainer(model_dir: Path, examples: list[dict], groups: dict[str, list[dict]], cfg: GRPOConfig, *,
                       temperature: float, output_dir: Path, seed: int,
                       callbacks: Sequence[TrainerCallback] = ()) -> GroupGRPOTrainer:
    configure_fused_lm_head(cfg)
    model, tokenizer = load_model(model_dir, cfg)
    group_size = len(next(iter(groups.values())))
    if cfg.batch_size % group_size:
        raise TrainingDataError(f"grpo.batch_size {cfg.batch_size} is not a whole number of groups of {group_size}")
    common = training_arguments(cfg, output_dir=output_dir, seed=seed)
    common.pop("max_length")  # GRPO bounds the completion, which the sampler already did
    # GRPO counts its prompt and completion tokens itself (num_input_tokens_seen); the Trainer's
    # count looks for input_ids, which a GRPO batch has not
    common["include_num_input_tokens_seen"] = "no"
    args = TRLGRPOConfig(
        **common, num_generations=group_size, temperature=temperature or 1.0,
        max_completion_length=max(len(c["token_ids"]) or 1 for g in groups.values() for c in g),
        beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, num_iterations=cfg.num_iterations, disable_dropout=cfg.dropout == 0,
        log_completions=False)
    return GroupGRPOTrainer(model=model, args=args, train_dataset=training_dataset(examples, output_dir),
                            processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=list(callbacks),
                            groups=groups, importance_correction=cfg.importance_correction)


def grpo_round(rows: list[dict], cfg: GRPOConfig):
    """What a GRPO round trains on and with: the examples, the trainer builder, the summary metrics."""
    examples, groups, temperature = grpo_examples(rows, cfg)

    def build(model_dir, examples, *, output_dir, seed, callbacks):
        return build_grpo_trainer(model_dir, examples, groups, cfg, temperature=temperature, output_dir=output_dir,
                                  seed=seed, callbacks=callbacks)

    return examples, build, SUMMARY_METRICS


def train_grpo(store: ModelStore, base_version: str, out_version: str, rows: list[dict], cfg: GRPOConfig, *,
               run_id: str | None, iteration: int, work_dir: Path, seed: int,
               progress_cb: ProgressFn | None = None, callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Train ``base_version`` on scored groups ``rows`` in this process and publish ``out_version``
    (idempotent, resumable)."""
    examples, build, summary_keys = grpo_round(rows, cfg)
    return run_round(store, kind="grpo", base_version=base_version, out_version=out_version, rows=rows,
                     examples=examples, cfg=cfg, build_trainer=build, summary_keys=summary_keys,
                     run_id=run_id, iteration=iteration, work_dir=work_dir, seed=seed, progress_cb=progress_cb,
                     callbacks=callbacks)
