"""End to end with the online objectives. GRPO (``run.objective: grpo``): prompt generation
appends two verifiable IFEval-style instructions to each prompt, the sampler records each
candidate's tokens and log-probs, the judge service adds each reward source's value (the
self-judge and the IFEval verifier) and their weighted sum, the controller sends the groups whose
rewards differ, and the trainer service trains M1 -> M2 on exactly those groups through TRL's
GRPOTrainer and publishes M2 once. PPO with LoRA on the classification task (movie-review
sentiment, the label verifier's reward alone), advancing the version every 2 groups: a step
version trained on the first two scored groups serves the sampler, M2 (an adapter version on M1
like it) is trained from it on the rest, gated on the task's held-out accuracy too, and promoted:
every service serves it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from srlm.models.store import ModelStore
from srlm.recipe import classification as C
from srlm.recipe.rewards import Verification, group_advantages, ifeval_reward
from srlm.runtime.pipeline import read_topic
from tests.e2e.conftest import CI_CONFIG, finished_run

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.model]

RUN_ID = "grpo-loop"
# The CI config samples 3 candidates per prompt: one group per optimizer step.
GRPO = {"SRLM_RUN__OBJECTIVE": "grpo", "SRLM_GRPO__BATCH_SIZE": "3", "SRLM_GRPO__PER_DEVICE_BATCH_SIZE": "3",
        "SRLM_GRPO__MAX_STEPS": "2", "SRLM_GRPO__SAVE_STEPS": "1", "SRLM_GRPO__MAX_LENGTH": "256",
        "SRLM_SELF_INSTRUCT__VERIFIABLE_INSTRUCTIONS": "2", "SRLM_REWARDS__WEIGHTS": "{self_judge: 1.0, verifier: 2.0}"}


def inspect_group(stack, key: str) -> str:
    """What the real ``srlm inspect group`` prints, whitespace collapsed."""
    env = {**os.environ, **stack.service_env(), "COLUMNS": "250"}
    shown = subprocess.run([sys.executable, "-m", "srlm.cli", "inspect", "group", key, "--config", str(CI_CONFIG)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return " ".join(shown.stdout.split())


def test_the_loop_trains_by_grpo_on_the_rewarded_groups(tmp_path):
    with finished_run(tmp_path, RUN_ID, **GRPO) as (stack, state):
        config = stack.client_config()
        candidates = {c.meta.id: c for c in read_topic(config, "candidates") if c.meta.run_id == RUN_ID
                      and c.meta.iteration == 1}
        judgments = {j.meta.id: j for j in read_topic(config, "judgments") if j.meta.run_id == RUN_ID
                     and j.meta.iteration == 1}
        assert candidates and candidates.keys() == judgments.keys()
        for cs in candidates.values():
            for c in cs.candidates:  # what the trainer's ratio needs, from the sampler
                assert len(c.token_ids) == len(c.token_logprobs) == c.num_tokens > 0
        rewarded = set()
        for key, js in judgments.items():
            cs = candidates[key]
            verification = Verification.from_record(cs.verification)
            assert len(verification.instruction_ids) == 2 and cs.prompt.startswith(js.prompt[:20])
            for c, jc in zip(cs.candidates, js.candidates, strict=True):
                sources = {r.source: r.value for r in jc.rewards}
                verified = ifeval_reward(verification, cs.prompt, c.text)  # IFEval's checker, again
                judged = 0.0 if jc.score_statement else jc.mean_score
                expected = {"verifier": verified, **({"self_judge": judged} if jc.num_parsed else {})}
                assert sources == pytest.approx(expected)
                assert jc.reward == pytest.approx(2.0 * verified + sources.get("self_judge", 0.0))
            if len({jc.reward for jc in js.candidates if jc.HasField("reward")}) >= 2:
                rewarded.add(key)
        it = next(i for i in state.iterations if i.iteration == 1)
        assert it.metrics["rewarded_groups"] == len(rewarded)
        assert rewarded, "no group had differing rewards: nothing was trained (re-seed the CI run)"
        store = ModelStore(config.model_store.root)
        m2 = store.get(f"{RUN_ID}.m2")
        assert (m2.kind, m2.parent_id) == ("grpo", f"{RUN_ID}.m1")
        assert {r["group_id"] for r in store.get_dataset(m2.training_data)} == rewarded
        assert m2.metrics["global_step"] == 2 and "reward" in m2.metrics
        assert [m.version_id for m in store.list(RUN_ID)].count(f"{RUN_ID}.m2") == 1
        store.verify(m2.version_id)

        # `srlm inspect group` (the real CLI) shows a trained group's rewards and advantages
        key = sorted(rewarded)[0]
        out = inspect_group(stack, key)
        rewards = [jc.reward for jc in judgments[key].candidates]
        for jc, advantage in zip(judgments[key].candidates, group_advantages(rewards)):
            assert f"{jc.candidate_id} reward {jc.reward:.3g} advantage {advantage:+.3f}" in out
        assert "verification: ['" in out


PPO = {"SRLM_RUN__OBJECTIVE": "ppo", "SRLM_PPO__BATCH_SIZE": "3", "SRLM_PPO__PER_DEVICE_BATCH_SIZE": "3",
       "SRLM_PPO__MAX_STEPS": "2", "SRLM_PPO__SAVE_STEPS": "1", "SRLM_PPO__USE_LORA": "true",
       "SRLM_PPO__LORA_PUBLISH": "adapter", "SRLM_RUN__TASK": "classification",
       "SRLM_CLASSIFICATION__EVAL_PROMPTS": "6", "SRLM_REWARDS__WEIGHTS": "{self_judge: 0.0, verifier: 1.0}",
       "SRLM_RUN__GROUPS_PER_VERSION": "2"}


def test_the_loop_trains_by_ppo_with_lora_on_the_classification_task(tmp_path):
    run_id = "ppo-loop"
    with finished_run(tmp_path, run_id, **PPO) as (stack, state):
        config = stack.client_config()
        prompts = {p.meta.id: p for p in read_topic(config, "prompts") if p.meta.run_id == run_id}
        train, _ = C.split(C.load(None), 0.2)
        sentences = {C.prompt_text(e): e.label for e in train}
        for p in prompts.values():  # the train split's sentences, each with its label check
            assert sentences[p.text] == p.verification.label and list(p.verification.labels) == list(C.LABELS)
        judgments = [j for j in read_topic(config, "judgments") if j.meta.run_id == run_id and j.meta.iteration == 1]
        assert judgments and {j.meta.id for j in judgments} == set(prompts)
        for js in judgments:  # the label verifier alone: the judge wrote no verdict
            for jc in js.candidates:
                assert [r.source for r in jc.rewards] == ["verifier"] and not jc.samples
                assert jc.reward in (1.0, -1.0, -3.0)
        scored = {j.meta.id for j in judgments if any(c.HasField("reward") for c in j.candidates)}
        it = next(i for i in state.iterations if i.iteration == 1)
        assert it.metrics["scored_groups"] == len(scored) > 0
        store = ModelStore(config.model_store.root)
        # groups_per_version 2 of the 4 scored groups: a step version on the first two, served to
        # the sampler at once, then M2 from it on the other two
        step, m2 = store.get(f"{run_id}.m2.s1"), store.get(f"{run_id}.m2")
        assert (step.kind, step.parent_id, step.extra["adapter_base"]) == ("ppo", f"{run_id}.m1", f"{run_id}.m1")
        assert (m2.kind, m2.parent_id, m2.extra["adapter_base"]) == ("ppo", step.version_id, f"{run_id}.m1")
        trained = [{r["group_id"] for r in store.get_dataset(v.training_data)} for v in (step, m2)]
        assert len(trained[0]) == len(trained[1]) == 2 and trained[0] | trained[1] == scored
        assert list(it.step_versions) == [step.version_id] and it.sampling_version == step.version_id
        assert it.metrics["step_versions"] == 1 and store.status(step.version_id)[0] == "published"
        assert m2.metrics["global_step"] == 2 and {"score", "vf_loss", "kl"} <= m2.metrics.keys()
        out = inspect_group(stack, sorted(scored)[0])  # rewards, and no GRPO advantages in a PPO run
        assert "run.objective ppo: no group advantages" in out and " advantage " not in out
        # the gate evaluated the adapter version, the task's accuracy included, and promotion
        # loaded it into every service
        assert "classification accuracy" in it.gate_reason and it.promoted, it.gate_reason
        assert store.status(m2.version_id)[0] == "promoted" and state.serving_version == m2.version_id
