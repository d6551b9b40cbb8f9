"""PPO on the real SmolLM2-135M on CPU: the candidate groups M0 sampled (with their tokens and
log-probs, as the sampler records them), scored by hand, trained by srlm's PPO trainer and
published to the real store."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import TrainerCallback

from srlm.config import PPOConfig
from srlm.models.adapters import ADAPTER_WEIGHTS
from srlm.trainer.data import TrainingDataError
from srlm.trainer.ppo import SUMMARY_METRICS, VALUE_HEAD, build_ppo_trainer, ppo_examples, train_ppo
from tests.trainer.conftest import TEMPERATURE
from tests.trainer.test_training import weights_changed

pytestmark = pytest.mark.model


def tiny(**values) -> PPOConfig:
    """2 optimizer steps of 8 candidates, 4 per forward."""
    return PPOConfig(**{"max_steps": 2, "batch_size": 8, "per_device_batch_size": 4, **values})


def steps(manifest) -> list[dict]:
    return manifest.extra["log_history"]


def test_rollouts_start_from_the_sampler_logprobs_and_the_first_step_clips_nothing(m0_dir, groups, tmp_path):
    examples, temperature = ppo_examples(groups, importance_correction=True)
    assert temperature == TEMPERATURE and len(examples) == 16
    trainer = build_ppo_trainer(m0_dir, examples, tiny(max_steps=1, precision="fp32"), temperature=temperature,
                                reference_dir=None,
                                kl_coef=0.05, output_dir=tmp_path / "w", seed=5)
    rollouts = list(trainer.train_dataset)
    by_tokens = {tuple(c["token_ids"]): c for g in groups for c in g["candidates"]}
    for row in rollouts:
        candidate = by_tokens[tuple(row["response_ids"])]
        assert row["logprobs"] == pytest.approx(candidate["logprobs"])  # the behaviour policy's
        assert row["score"] == candidate["reward"]
        assert row["values"] == [0.0] * len(row["values"])  # the critic starts at zero
    # with V = 0, no KL (the reference is M0 itself) and gamma 1, every token's raw advantage is
    # the discounted score; whitened over the batch they have mean 0 and std 1
    advantages = torch.tensor([a for row in rollouts for a in row["advantages"]])
    assert float(advantages.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(advantages.std()) == pytest.approx(1.0, abs=1e-3)
    assert trainer.rollout_stats["kl"] == 0.0
    assert trainer.rollout_stats["score"] == pytest.approx(sum(r["score"] for r in rollouts) / 16)
    trainer.train()
    (first,) = [h for h in trainer.state.log_history if "loss" in h]
    # same weights, same temperature, fp32 on both sides: the trainer's log-probs are the sampler's
    assert first["ratio"] == pytest.approx(1.0, abs=1e-3) and first["clipfrac"] == 0.0, first
    assert first["vf_loss"] > 0 and first["pg_loss"] == pytest.approx(first["loss"] - 0.1 * first["vf_loss"], abs=1e-5)


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_ppo_round_publishes_the_policy_and_resumes_with_its_value_head(m0, groups, tmp_path):
    store, base = m0
    cfg = tiny(max_steps=3, save_steps=1, learning_rate=1e-5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ppo(store, base.version_id, "trainer-ppo-m2", groups, cfg, run_id="t-ppo", iteration=2,
                  work_dir=tmp_path / "w", seed=11, callbacks=[CrashAt(2)])
    checkpoint = tmp_path / "w" / "checkpoint-1"  # step 2 crashed before its checkpoint
    with safe_open(checkpoint / VALUE_HEAD, "pt") as head:
        assert float(head.get_tensor("weight").abs().sum()) > 0  # the critic learned in one step
    manifest = train_ppo(store, base.version_id, "trainer-ppo-m2", groups, cfg, run_id="t-ppo", iteration=2,
                         work_dir=tmp_path / "w", seed=11)
    assert (manifest.parent_id, manifest.kind, manifest.iteration) == ("m0", "ppo", 2)
    assert manifest.metrics["resumed_from_step"] == 1 and manifest.metrics["global_step"] == 3
    assert [h["step"] for h in steps(manifest)] == [1, 2, 3]
    for key in (*SUMMARY_METRICS, "loss", "train_tokens_per_second", "examples"):
        assert key in manifest.metrics, key
    assert manifest.metrics["examples"] == 16
    with safe_open(store.path("trainer-ppo-m2") / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "value_head" in k]  # the version is the policy alone
    assert weights_changed(store, "m0", "trainer-ppo-m2")


def test_ppo_with_lora_adapters_keeps_the_kl_to_the_base_and_adapts_its_coefficient(m0, groups, tmp_path):
    """The literature's setup: LoRA on a fixed base. The second round's reference is M0 (the base of
    the adapter it starts from), so its rollouts have a KL; its coefficient is the first round's
    next one (target_kl: adaptive)."""
    store, base = m0
    cfg = tiny(use_lora=True, lora_publish="adapter", learning_rate=3e-3, kl_coef=0.2, target_kl=0.01,
               kl_horizon=100)
    first = train_ppo(store, base.version_id, "trainer-ppo-a1", groups, cfg, run_id="t-ppo-lora", iteration=2,
                      work_dir=tmp_path / "w1", seed=11)
    assert first.extra["adapter_base"] == "m0" and "adapter_model.safetensors" in first.files
    assert first.metrics["kl"] == 0.0 and first.metrics["kl_coef"] == 0.2
    # KL 0 below the target: the coefficient falls by 20% x 16 samples / horizon 100
    assert first.metrics["kl_coef_next"] == pytest.approx(0.2 * (1 - 0.2 * 16 / 100))
    second = train_ppo(store, "trainer-ppo-a1", "trainer-ppo-a2", groups, cfg, run_id="t-ppo-lora", iteration=3,
                       work_dir=tmp_path / "w2", seed=11)
    assert second.metrics["kl_coef"] == pytest.approx(first.metrics["kl_coef_next"])
    # (these candidates were sampled by M0, not by the policy, so the k1 estimate is -KL(M0 || A1):
    # negative; in the loop the serving version samples them and it is >= 0 on average)
    assert abs(second.metrics["kl"]) > 0.1, "the second round's reference should be M0, not the adapter version"
    assert second.extra["adapter_base"] == "m0"
    with safe_open(store.path("trainer-ppo-a2") / ADAPTER_WEIGHTS, "pt") as f:
        assert not [k for k in f.keys() if "value_head" in k]


def test_unscored_and_empty_candidates_are_left_out():
    rows = [{"group_id": "g", "prompt": "p", "temperature": 0.7, "candidates": [
        {"text": "a", "reward": 1.0, "token_ids": [5, 6], "logprobs": [-0.1, -0.2]},
        {"text": "b", "reward": None, "token_ids": [7], "logprobs": [-0.3]},
        {"text": "", "reward": 0.0}]}]
    examples, _ = ppo_examples(rows, importance_correction=True)
    assert [e["text"] for e in examples] == ["a"] and examples[0]["sampled_logprobs"] == [-0.1, -0.2]
    mixed = [{**rows[0], "candidates": [*rows[0]["candidates"], {"text": "c", "reward": 2.0}]}]
    examples, _ = ppo_examples(mixed, importance_correction=True)
    assert [e["sampled_logprobs"] for e in examples] == [[], []]  # one lacks them: the trainer's own for all
    with pytest.raises(TrainingDataError, match="no.*scored, non-empty candidate"):
        ppo_examples([{**rows[0], "candidates": rows[0]["candidates"][1:]}], importance_correction=True)
