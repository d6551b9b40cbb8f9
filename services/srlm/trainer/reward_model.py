"""A Bradley-Terry reward model (RLHF's reward source): a model version with a one-output
sequence-classification head, trained by TRL's RewardTrainer to score the chosen answer of each
preference pair above the rejected one, and published as a version of kind ``reward_model``.

The pairs are srlm's pair rows (``{"pair_id", "prompt", "chosen", "rejected"}``: a pair file, or
a run's kept pairs from ``srlm.pairs``), validated as for DPO. A share of them
(``reward_model.held_out_fraction``, chosen by a hash of pair id and seed) is held out; the
trained model's pairwise accuracy on those, scored exactly as the judge service scores
candidates, is ``held_out_accuracy`` in the manifest. The round is resumable and idempotent
like every other (``run_round``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from transformers import AutoModelForSequenceClassification, TrainerCallback
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from srlm.config import RewardModelConfig
from srlm.models.reward_model import pairwise_accuracy, reward_scores
from srlm.models.store import Manifest, ModelStore
from srlm.runtime.records import seed_for
from srlm.trainer.data import TrainingDataError, dpo_examples
from srlm.trainer.job import ProgressFn, load_model, lora_config, run_round, training_arguments, training_dataset

# TRL's per-step logs on the training pairs, averaged into the manifest.
SUMMARY_METRICS = ("accuracy", "margin", "mean_reward")


def held_out_split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows), each in the given order. Whether a pair is held out depends
    on its id and the seed only, so a replay, or the same pairs in another order, split alike; at
    least one pair of each when there are two or more and ``fraction`` > 0."""
    n = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if fraction > 0 else 0
    held = {r["pair_id"] for r in sorted(rows, key=lambda r: seed_for("held-out", seed, r["pair_id"]))[:n]}
    return [r for r in rows if r["pair_id"] not in held], [r for r in rows if r["pair_id"] in held]


class PairRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer that, once trained, scores its held-out pairs as the judge would."""

    def __init__(self, *args, held_out: list[dict], score_batch_size: int, **kwargs):
        self.held_out, self.score_batch_size = held_out, score_batch_size
        super().__init__(*args, **kwargs)

    def final_metrics(self) -> dict[str, float]:
        if not self.held_out:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        training = model.training

        def scores(side: str) -> list[float]:
            return reward_scores(model, self.processing_class, [e["prompt"] + e[side] for e in self.held_out],
                                 batch_size=self.score_batch_size)

        model.eval()
        try:
            figures = pairwise_accuracy(scores("chosen"), scores("rejected"))
        finally:
            model.train(training)
        return {"held_out_accuracy": figures["accuracy"], "held_out_margin": figures["margin"],
                "held_out_pairs": float(len(self.held_out))}


def build_reward_trainer(model_dir: Path, examples: list[dict], held_out: list[dict], cfg: RewardModelConfig, *,
                         output_dir: Path, seed: int, callbacks: Sequence[TrainerCallback] = ()) -> PairRewardTrainer:
    """The base version with a new one-output head (a causal LM's folder: its LM head is dropped
    and the score head starts from the model's initializer; a reward model's folder: its head is
    kept), and TRL's RewardTrainer on the pairs. The pad token (the tokenizer's, else EOS) is set
    on the model's config by TRL: the head reads the last token that is not padding."""
    with suppress_seqcls_warning():  # the missing score / unused lm_head weights are expected
        model, tokenizer = load_model(model_dir, cfg, AutoModelForSequenceClassification, num_labels=1)
    args = RewardConfig(**training_arguments(cfg, output_dir=output_dir, seed=seed), disable_dropout=cfg.dropout == 0,
                        center_rewards_coefficient=cfg.center_rewards_coefficient)
    return PairRewardTrainer(model=model, args=args, train_dataset=training_dataset(examples, output_dir),
                             processing_class=tokenizer, peft_config=lora_config(cfg, task_type="SEQ_CLS"),
                             callbacks=list(callbacks), held_out=held_out, score_batch_size=cfg.score_batch_size)


def reward_model_round(rows: list[dict], cfg: RewardModelConfig, seed: int):
    """The rows to store (each marked with its ``split``), the training examples, the trainer
    builder and the data's figures."""
    dpo_examples(rows)  # the pair format is DPO's: every row checked, ids unique
    train_rows, held_rows = held_out_split(rows, cfg.held_out_fraction, seed)
    if not train_rows:
        raise TrainingDataError(f"no pairs left to train on after holding out {len(held_rows)}")
    held_out = dpo_examples(held_rows) if held_rows else []
    held_ids = {r["pair_id"] for r in held_rows}
    stored = [{**r, "split": "held_out" if r["pair_id"] in held_ids else "train"} for r in rows]

    def build(model_dir, examples, *, output_dir, seed, callbacks):
        return build_reward_trainer(model_dir, examples, held_out, cfg, output_dir=output_dir, seed=seed,
                                    callbacks=callbacks)

    figures = {"pairs": float(len(rows)), "pairs_held_out": float(len(held_rows))}
    return stored, dpo_examples(train_rows), build, figures


def train_reward_model(store: ModelStore, base_version: str, out_version: str, rows: list[dict],
                       cfg: RewardModelConfig, *, run_id: str | None = None, iteration: int = 0, work_dir: Path,
                       seed: int, progress_cb: ProgressFn | None = None,
                       callbacks: Sequence[TrainerCallback] = ()) -> Manifest:
    """Train a reward model from ``base_version`` on preference ``rows`` and publish ``out_version``
    (kind ``reward_model``, parent the base; idempotent, resumable)."""
    stored, examples, build, figures = reward_model_round(rows, cfg, seed)
    return run_round(store, kind="reward_model", base_version=base_version, out_version=out_version, rows=stored,
                     examples=examples, cfg=cfg, build_trainer=build, summary_keys=SUMMARY_METRICS, run_id=run_id,
                     iteration=iteration, work_dir=work_dir, seed=seed, progress_cb=progress_cb,
                     data_metrics=figures, callbacks=callbacks)
