"""PPO: M_t -> M_{t+1} on the iteration's scored candidates (``run.objective: ppo``).

The maths of TRL's PPOTrainer (TRL <= 1.14, ``trl.experimental.ppo``; TRL 1.16, which srlm runs
on, no longer has it), without its generation: the candidates were sampled by the serving
version and scored by the scoring service, so a round is one PPO batch of rollouts.

At the start of the round, for every candidate (response tokens r_1..r_T after its prompt):
- ``logprobs``: log pi_old(r_t), the rollout policy at the sampling temperature: the sampler's
  recorded ones with ``importance_correction`` (the behaviour policy), else the trainer's M_t;
- ``ref_logprobs``: the reference model's; ``kl_t = logprobs_t - ref_logprobs_t`` (k1);
- ``values``: the value head's V(s_t) (on the policy's last hidden state; it starts at zero);
- rewards ``-kl_coef * kl_t``, plus the scored reward at the last token; GAE(gamma, lambda)
  advantages (whitened over the batch) and returns = advantages + values.
Then ``num_epochs`` passes of minibatch updates of the clipped surrogate plus the clipped value
loss (``vf_coef``). The reference is the full version an adapter version applies to (PPO with
LoRA as in the literature: the KL to the base accumulates over iterations) and M_t itself
otherwise (then the KL at the rollout is 0 and the clipping alone bounds the step). With
``target_kl`` the KL coefficient is adaptive (Ziegler et al. 2019) from round to round: the
round's measured KL sets the next round's coefficient (``kl_coef_next`` in the manifest).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from srlm.config import PPOConfig
from srlm.models.engines.base import chat_prompt_ids
from srlm.models.store import Manifest, ModelStore
from srlm.trainer.data import TrainingDataError, grpo_groups, sampling_temperature
from srlm.trainer.job import ProgressFn, load_model, lora_config, run_round, training_arguments, training_dataset

VALUE_HEAD = "value_head.safetensors"  # in checkpoints only: the published version is the policy
SUMMARY_METRICS = ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "ratio", "score", "kl", "kl_coef")


# --------------------------------------------------------------------------- the maths (pure)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (TRL's masked_whiten, unbiased variance)."""
    mean = masked_mean(values, mask)
    centred = values - mean
    variance = masked_mean(centred ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    out = centred * torch.rsqrt(variance + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * kl at every response token, plus the sequence's score at its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (right-padded rows; 0 past each row's end)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def ppo_losses(new_logprobs, old_logprobs, advantages, vpred, old_values, returns, mask, *, cliprange: float,
               cliprange_value: float) -> dict[str, torch.Tensor]:
    """The clipped surrogate and the clipped value loss, with the statistics TRL logs."""
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    vclipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf = torch.max((vpred - returns) ** 2, (vclipped - returns) ** 2)
    return {
        "pg_loss": masked_mean(pg, mask),
        "vf_loss": 0.5 * masked_mean(vf, mask),
        "clipfrac": masked_mean((torch.abs(ratio - 1) > cliprange).float(), mask),
        "approx_kl": 0.5 * masked_mean(log_ratio ** 2, mask),
        "ratio": masked_mean(ratio, mask),
    }


def next_kl_coef(kl_coef: float, kl: float, target: float | None, horizon: int, samples: int) -> float:
    """Ziegler et al.'s adaptive controller: the coefficient moves towards the target KL."""
    if target is None:
        return kl_coef
    error = max(-0.2, min(0.2, kl / target - 1))
    return kl_coef * (1 + error * samples / horizon)


# --------------------------------------------------------------------------- rollouts


def ppo_examples(rows: list[dict], *, importance_correction: bool) -> tuple[list[dict], float]:
    """One example per scored, non-empty candidate: prompt, response (its sampled token ids when
    recorded), score, and the sampler's log-probs when ``importance_correction`` and every
    candidate has them. Returns the examples and their sampling temperature."""
    groups = grpo_groups(rows, drop_uniform=False)  # PPO's critic, not the group, is the baseline
    examples = [{"prompt": prompt, "text": c["text"], "response_ids": c["token_ids"], "score": float(c["reward"]),
                 "sampled_logprobs": c["logprobs"]}
                for prompt, candidates in groups.items() for c in candidates
                if c["reward"] is not None and (c["token_ids"] or c["text"])]
    if not examples:
        raise TrainingDataError(f"none of the {len(rows)} groups has a scored, non-empty candidate")
    if not (importance_correction and all(e["sampled_logprobs"] for e in examples)):
        for e in examples:
            e["sampled_logprobs"] = []
    return examples, sampling_temperature(rows)


def tokenized(examples: list[dict], tokenizer) -> list[dict]:
    """The examples with the chat-templated prompt's token ids (and the response's, where the
    sampler recorded none)."""
    return [dict(e, prompt_ids=chat_prompt_ids(tokenizer, [{"role": "user", "content": e["prompt"]}]),
                 response_ids=e["response_ids"] or tokenizer(e["text"], add_special_tokens=False)["input_ids"])
            for e in examples]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + response rows; per-token fields aligned with the response tokens."""
    lengths = [len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples]
    width, span = max(lengths), max(len(e["response_ids"]) for e in examples)
    batch: dict[str, Any] = {"input_ids": torch.full((len(examples), width), pad_id),
                             "attention_mask": torch.zeros(len(examples), width, dtype=torch.long),
                             "response_mask": torch.zeros(len(examples), span),
                             "prompt_lengths": torch.tensor([len(e["prompt_ids"]) for e in examples])}
    for i, e in enumerate(examples):
        ids = e["prompt_ids"] + e["response_ids"]
        batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, :len(ids)] = 1
        batch["response_mask"][i, :len(e["response_ids"])] = 1
    for key in ("logprobs", "values", "advantages", "returns"):
        if key in examples[0]:
            batch[key] = torch.zeros(len(examples), span)
            for i, e in enumerate(examples):
                batch[key][i, :len(e[key])] = torch.tensor(e[key])
    return batch


def response_logprobs_and_hidden(model, batch: dict[str, torch.Tensor], temperature: float):
    """Log-probs of each response token at ``temperature`` and the last hidden state before it."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    span, device = batch["response_mask"].shape[1], batch["input_ids"].device
    rows = torch.arange(len(batch["input_ids"]), device=device)[:, None]
    # the state before response token t sits at position prompt_length - 1 + t
    positions = (batch["prompt_lengths"][:, None] - 1 + torch.arange(span, device=device)[None, :]).clamp(
        max=batch["input_ids"].shape[1] - 1)
    logits = out.logits[rows, positions].float() / (temperature or 1.0)
    targets = batch["input_ids"][rows, (positions + 1).clamp(max=batch["input_ids"].shape[1] - 1)]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logprobs * batch["response_mask"], out.hidden_states[-1][rows, positions]


# --------------------------------------------------------------------------- the trainer


class PPORolloutTrainer(Trainer):
    """transformers' Trainer over one batch of rollouts: the loss is PPO's, the value head is a
    linear layer on the policy's last hidden state, trained with it and left out of the version."""

    def __init__(self, *args, temperature: float, ppo: PPOConfig, **kwargs):
        self.temperature, self.ppo = temperature, ppo
        self._stats: dict[str, list[float]] = defaultdict(list)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logprobs, hidden = response_logprobs_and_hidden(model, inputs, self.temperature)
        head = self.accelerator.unwrap_model(model).value_head
        vpred = head(hidden.to(head.weight.dtype)).squeeze(-1).float()
        losses = ppo_losses(logprobs, inputs["logprobs"], inputs["advantages"], vpred, inputs["values"],
                            inputs["returns"], inputs["response_mask"], cliprange=self.ppo.cliprange,
                            cliprange_value=self.ppo.cliprange_value)
        for key, value in losses.items():
            self._stats[key].append(float(value.detach()))
        loss = losses["pg_loss"] + self.ppo.vf_coef * losses["vf_loss"]
        return (loss, logprobs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # the step's means, and the round's rollout figures
            logs.update({k: sum(v) / len(v) for k, v in self._stats.items()}, **self.rollout_stats)
            self._stats.clear()
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        from safetensors.torch import save_file

        model = self.accelerator.unwrap_model(self.model)
        head = model._modules.pop("value_head")  # the policy is saved as it will be published
        try:
            super()._save(output_dir, state_dict)
        finally:
            model.value_head = head
        save_file({k: v.contiguous() for k, v in head.state_dict().items()},
                  str(Path(output_dir or self.args.output_dir) / VALUE_HEAD))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        target = self.accelerator.unwrap_model(model or self.model)
        head = target._modules.pop("value_head")
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        finally:
            target.value_head = head
        head.load_state_dict(load_file(str(Path(resume_from_checkpoint) / VALUE_HEAD)))

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # what is published is the policy alone
            self.accelerator.unwrap_model(self.model)._modules.pop("value_head", None)


@torch.no_grad()
def prepare_rollouts(model, reference, examples: list[dict], cfg: PPOConfig, temperature: float, pad_id: int,
                     kl_coef: float) -> dict[str, float]:
    """Fill each example's logprobs, values, advantages and returns (in place); return the
    rollout figures (mean score, KL to the reference, the coefficient used and the next one)."""
    was_training = model.training
    model.eval()
    chunks = [examples[i:i + cfg.per_device_batch_size] for i in range(0, len(examples), cfg.per_device_batch_size)]
    per_row: list[tuple] = []
    device = next(model.parameters()).device
    for chunk in chunks:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        logprobs, hidden = response_logprobs_and_hidden(model, batch, temperature)
        values = model.value_head(hidden.to(model.value_head.weight.dtype)).squeeze(-1).float()
        ref = logprobs if reference is None else response_logprobs_and_hidden(reference, batch, temperature)[0]
        for i, e in enumerate(chunk):
            n = len(e["response_ids"])
            old = torch.tensor(e["sampled_logprobs"]) if e["sampled_logprobs"] else logprobs[i, :n].cpu()
            per_row.append((old, (logprobs[i, :n] - ref[i, :n]).cpu(), values[i, :n].cpu()))
    model.train(was_training)
    span = max(len(e["response_ids"]) for e in examples)

    def padded(index: int) -> torch.Tensor:
        out = torch.zeros(len(examples), span)
        for i, row in enumerate(per_row):
            out[i, :len(row[index])] = row[index]
        return out

    mask = torch.zeros(len(examples), span)
    for i, e in enumerate(examples):
        mask[i, :len(e["response_ids"])] = 1
    old, kl, values = padded(0), padded(1), padded(2)
    scores = torch.tensor([e["score"] for e in examples])
    advantages, returns = gae(token_rewards(scores, kl, mask, kl_coef), values, mask, cfg.gamma, cfg.lam)
    advantages = whiten(advantages, mask)
    for i, e in enumerate(examples):
        n = len(e["response_ids"])
        e.update(logprobs=old[i, :n].tolist(), values=values[i, :n].tolist(), advantages=advantages[i, :n].tolist(),
                 returns=returns[i, :n].tolist())
    mean_kl = float((kl * mask).sum(dim=1).mean())
    return {"score": float(scores.mean()), "kl": mean_kl, "kl_coef": kl_coef,
            "kl_coef_next": next_kl_coef(kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, len(examples))}


def build_ppo_trainer(model_dir: Path, examples: list[dict], cfg: PPOConfig, *, temperature: float,
                      reference_dir: Path | None, kl_coef: float, output_dir: Path, seed: int,
                      callbacks: Sequence[TrainerCallback] = ()) -> PPORolloutTrainer:
    from peft import get_peft_model

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_dir, cfg)
    if cfg.use_lora:
        model = get_peft_model(model, lora_config(cfg))
    model.value_head = nn.Linear(model.config.hidden_size, 1)
    nn.init.zeros_(model.value_head.weight)  # V = 0 until the critic has learned: no bias from a random head
    nn.init.zeros_(model.value_head.bias)
    model.to(device)
    examples = tokenized(examples, tokenizer)
    reference = None if reference_dir is None else load_model(reference_dir, cfg)[0].to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats = prepare_rollouts(model, reference, examples, cfg, temperature, pad_id, kl_coef)
    del reference
    args = training_arguments(cfg, output_dir=output_dir, seed=seed)
    args.pop("max_length")  # the sampler bounded the responses
    trainer = PPORolloutTrainer(
        model=model, args=TrainingArguments(**args, remove_unused_columns=False),
        train_dataset=training_dataset(examples, output_dir), processing_class=tokenizer,
        data_collator=lambda batch: collate(batch, pad_id), callbacks=list(callbacks),
        temperature=temperature, ppo=cfg)
    trainer.rollout_stats = stats
    return trainer


def ppo_inputs(store: ModelStore, base_version: str, cfg: PPOConfig) -> tuple[Path | None, float]:
    """The reference model's folder (the base of an adapter version; None: M_t itself) and the KL
    coefficient (the parent PPO round's ``kl_coef_next`` when adaptive, else ``kl_coef``)."""
    base = store.adapter_base(base_version)
    parent = store.get(base_version)
    kl_coef = parent.metrics.get("kl_coef_next", cfg.kl_coef) if cfg.target_kl is not None and \
        parent.kind == "ppo" else cfg.kl_coef
    return (store.path(base) if base else None), float(kl_coef)


def ppo_round(rows: list[dict], cfg: PPOConfig, reference_dir: Path | None, kl_coef: float):
    """What a PPO round trains on and with: the examples, the trainer builder, the summary metrics."""

    examples, temperature = ppo_examples(rows, importance_correction=cfg.importance_correction)

    def build(model_dir, examples, *, output_dir, seed, callbacks):
        return build_ppo_trainer(model_dir, examples, cfg, temperature=temperature, reference_dir=reference_dir,
                                 kl_coef=kl_coef, output_dir=output_dir, seed=seed, callbacks=callbacks)

    return examples, build, SUMMARY_METRICS + ("kl_coef_next",)


def train_ppo(store: ModelStore, base_version: str, out_version: str, rows: list[dict], cfg: PPOConfig, *,
              run_id: str | None, iteration: int, work_dir: Path, seed: int,
              progress_cb: ProgressFn | None = None, callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Train ``base_version`` on scored candidate groups ``rows`` in this process and publish
    ``out_version`` (idempotent, resumable)."""
    examples, build, summary_keys = ppo_round(rows, cfg, *ppo_inputs(store, base_version, cfg))
    return run_round(store, kind="ppo", base_version=base_version, out_version=out_version, rows=rows,
                     examples=examples, cfg=cfg, build_trainer=build, summary_keys=summary_keys,
                     run_id=run_id, iteration=iteration, work_dir=work_dir, seed=seed, progress_cb=progress_cb,
                     callbacks=callbacks)
