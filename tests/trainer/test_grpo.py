"""GRPO on the real SmolLM2-135M on CPU: candidate groups sampled by the transformers or the
vLLM engine (with their tokens and log-probs, as the sampler records them), rewarded by hand, trained by
TRL's GRPOTrainer through srlm's rollout glue and published to the real store."""

from __future__ import annotations

import pytest
import torch

from srlm.config import GRPOConfig
from srlm.recipe.rewards import group_advantages
from srlm.trainer.data import TrainingDataError, grpo_groups
from srlm.trainer.grpo import SUMMARY_METRICS, build_grpo_trainer, grpo_examples, train_grpo
from tests.trainer.conftest import GROUP, TEMPERATURE
from tests.trainer.test_training import weights_changed

pytestmark = pytest.mark.model


def tiny(**values) -> GRPOConfig:
    """2 optimizer steps of 2 groups of 4 candidates."""
    return GRPOConfig(**{"max_steps": 2, "batch_size": 8, "per_device_batch_size": 4, **values})


def captured_batches(trainer) -> list[dict]:
    """What TRL's generation step hands the loss, batch by batch."""
    seen = []
    original = trainer._generate_and_score_completions

    def capture(inputs):
        out = original(inputs)
        seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in out.items()})
        return out

    trainer._generate_and_score_completions = capture
    return seen


@pytest.mark.parametrize("sampled_by, correction", [("groups", True), ("groups", False), ("vllm_groups", True)])
def test_grpo_uses_the_groups_rewards_and_the_sampler_logprobs(m0_dir, request, tmp_path, sampled_by, correction):
    groups = request.getfixturevalue(sampled_by)
    examples, by_prompt, temperature = grpo_examples(groups, tiny())
    assert temperature == TEMPERATURE
    # fp32 like the sampler (with bf16 autocast a CPU with AMX scores some tokens > 0.2 nats apart)
    trainer = build_grpo_trainer(m0_dir, examples, by_prompt, tiny(importance_correction=correction, precision="fp32"),
                                 temperature=TEMPERATURE, output_dir=tmp_path / "w", seed=5)
    batches = captured_batches(trainer)
    trainer.train()
    assert len(batches) == 2  # one generation batch (8 candidates = 2 groups) per optimizer step
    tok = trainer.processing_class
    for batch in batches:
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        rows = []
        for r in range(ids.shape[0]):
            tokens = ids[r][mask[r].bool()].tolist()
            [(prompt, j)] = [(p, j) for p, cands in by_prompt.items() for j, c in enumerate(cands)
                             if c["token_ids"] == tokens]
            rows.append((prompt, j))
        # the advantage of each candidate is its reward normalised within its own group
        for prompt in {p for p, _ in rows}:
            members = [(r, j) for r, (p, j) in enumerate(rows) if p == prompt]
            assert sorted(j for _, j in members) == list(range(GROUP)), "a whole group per generation batch"
            # srlm's own account of the advantages (srlm inspect group) is TRL's
            expected = torch.tensor(group_advantages([by_prompt[prompt][j]["reward"] for _, j in members]))
            got = batch["advantages"][[r for r, _ in members]]
            assert torch.allclose(got, expected, atol=1e-4)
        recorded = torch.zeros_like(batch["sampling_per_token_logps"])
        for r, (prompt, j) in enumerate(rows):
            lp = by_prompt[prompt][j]["logprobs"]
            recorded[r, :len(lp)] = torch.tensor(lp)
        if correction:  # the ratio's denominator is the sampler's policy
            assert torch.allclose(batch["old_per_token_logps"], recorded)
        else:  # TRL's default: the trained weights themselves (ratio 1 on the first pass)
            assert "old_per_token_logps" not in batch
        assert tok.decode(ids[0][mask[0].bool()], skip_special_tokens=True)  # real text, not padding
    # same weights, same temperature, fp32 on both sides: the sampler's and the trainer's
    # log-probs agree, so nothing was clipped on the first step
    first = [h for h in trainer.state.log_history if "loss" in h][0]
    assert first["clip_ratio/region_mean"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_grpo_round_publishes_a_version_with_its_reward_metrics(m0, groups, tmp_path, lora):
    store, base = m0
    manifest = train_grpo(store, base.version_id, "trainer-grpo-m2", groups, tiny(use_lora=lora, learning_rate=1e-4),
                          run_id="t-grpo", iteration=2, work_dir=tmp_path / "w", seed=11)
    assert manifest.extra["lora_merged"] is lora  # a LoRA round publishes the merged full model
    assert manifest.metrics["train_tokens"] > 0  # GRPO's own count of prompt + completion tokens
    assert (manifest.parent_id, manifest.kind, manifest.iteration) == ("m0", "grpo", 2)
    assert store.get_dataset(manifest.training_data) == groups
    assert [h["step"] for h in manifest.extra["log_history"]] == [1, 2]
    for key in (*SUMMARY_METRICS, "loss", "train_tokens_per_second"):
        assert key in manifest.metrics or key == "kl", key  # TRL logs the KL only with beta > 0
    assert weights_changed(store, "m0", "trainer-grpo-m2")


def test_groups_are_validated_and_uniform_groups_dropped():
    row = {"group_id": "a", "prompt": "p", "candidates": [{"text": "x", "reward": 1.0}, {"text": "y", "reward": 0.0}]}
    uniform = {"group_id": "b", "prompt": "q", "candidates": [{"text": "x", "reward": 2.0}, {"text": "y", "reward": 2.0}]}
    unscored = {"group_id": "c", "prompt": "r", "candidates": [{"text": "x", "reward": 2.0}, {"text": "y", "reward": None}]}
    assert list(grpo_groups([row, uniform, unscored])) == ["p"]
    assert list(grpo_groups([row, uniform, unscored], drop_uniform=False)) == ["p", "q", "r"]
    with pytest.raises(TrainingDataError, match=r"rows\[1\].candidates: 3 candidates, rows\[0\] has 2"):
        grpo_groups([row, {**row, "candidates": [*row["candidates"], {"text": "z", "reward": 0.0}]}])
    with pytest.raises(TrainingDataError, match=r"rows\[0\].candidates\[1\].reward: expected a number"):
        grpo_groups([{**row, "candidates": [{"text": "x", "reward": 1}, {"text": "y", "reward": "high"}]}])
    with pytest.raises(TrainingDataError, match=r"logprobs: 1 values for 2 tokens"):
        grpo_groups([{**row, "candidates": [{"text": "x", "reward": 1, "token_ids": [1, 2], "logprobs": [-1.0]},
                                            {"text": "y", "reward": 0}]}])
    with pytest.raises(TrainingDataError, match="nothing to learn from"):
        grpo_examples([uniform], tiny())
