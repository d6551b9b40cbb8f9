"""The reward_model reward source on the real SmolLM2-135M on CPU: a Bradley-Terry reward model
trained by TRL's RewardTrainer on an easy synthetic preference (an on-topic answer over an
unrelated sentence), published to the real store, ranking held-out pairs it never saw, and
scoring candidates in the judge service's stage."""

from __future__ import annotations

import math

import pytest

from srlm.config import ConfigError, RewardModelConfig, parse_config
from srlm.judge.stage import Judge, judge_candidate_set
from srlm.models.reward_model import RewardModelError, RewardModelScorer, pairwise_accuracy
from srlm.runtime.model_host import ModelHost
from srlm.trainer.data import TrainingDataError
from srlm.trainer.reward_model import SUMMARY_METRICS, held_out_split, train_reward_model
from srlm.v1 import records_pb2
from tests.trainer.test_training import weights_changed

pytestmark = pytest.mark.model

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Cuba", "Havana"), ("Chile", "Santiago"), ("Thailand", "Bangkok"),
            ("Turkey", "Ankara"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"),
            ("Hungary", "Budapest"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
            ("the Netherlands", "Amsterdam"), ("Iran", "Tehran"), ("Vietnam", "Hanoi"), ("Colombia", "Bogota"),
            ("Australia", "Canberra"), ("South Korea", "Seoul"), ("Nigeria", "Abuja")]
SUBJECTS = ["My neighbour's dog", "The old bicycle", "A cup of green tea", "The morning bus", "This yellow umbrella",
            "Our kitchen clock"]
PREDICATES = ["is painted blue.", "needs new batteries.", "was found under the bed.", "smells of cinnamon.",
              "makes a funny noise.", "broke again yesterday."]
# 36 pairs: 12 held out by the round (a third), 24 trained on, 3 steps of 8 per epoch.
PAIRS = [{"pair_id": f"capital-{i}", "prompt": f"What is the capital of {country}?",
          "chosen": f"{city} is the capital of {country}.",
          "rejected": f"{SUBJECTS[i % 6]} {PREDICATES[(i // 6 + i) % 6]}"}  # every unrelated sentence once
         for i, (country, city) in enumerate(CAPITALS)]
OUT = "trainer-rm"


def config(**values) -> RewardModelConfig:
    """Sized for a CPU test: one epoch of the 24 training pairs at a learning rate that moves a fresh head."""
    return RewardModelConfig(**{"max_steps": 3, "batch_size": 8, "per_device_batch_size": 8, "learning_rate": 3e-5,
                                "max_length": 128, "held_out_fraction": 1 / 3, "precision": "fp32",
                                "gradient_checkpointing": False, **values})


def judge_config(store, **rewards):
    return parse_config({"model_store": {"root": str(store.root)}, "engine": {"dtype": "float32", "device": "cpu"},
                         "rewards": rewards}, environ={})


@pytest.fixture(scope="module")
def reward_model(m0, tmp_path_factory):
    """The reward model, trained once for the module (and deleted after it)."""
    store, base = m0
    manifest = train_reward_model(store, base.version_id, OUT, PAIRS, config(), work_dir=tmp_path_factory.mktemp("rm"),
                                  seed=7)
    yield store, manifest
    store.delete(OUT)


def test_reward_model_ranks_held_out_pairs_and_is_published_once(reward_model, tmp_path):
    store, manifest = reward_model
    assert (manifest.kind, manifest.parent_id, manifest.run_id) == ("reward_model", "m0", None)
    m = manifest.metrics
    assert (m["pairs"], m["pairs_held_out"], m["held_out_pairs"]) == (36, 12, 12)
    for key in (*SUMMARY_METRICS, "loss", "held_out_margin"):
        assert key in m, key
    # An easy preference, pairs never trained on: well above chance (0.5).
    assert m["held_out_accuracy"] >= 0.75, m
    assert m["held_out_margin"] > 1.0  # an untrained head separates them by about 0.1
    stored = store.get_dataset(manifest.training_data)
    held = [r for r in stored if r["split"] == "held_out"]
    assert len(held) == 12 and {r["pair_id"] for r in stored} == {p["pair_id"] for p in PAIRS}
    # The judge's scorer, loaded from the store, agrees with the trainer's held-out figure.
    scorer = RewardModelScorer.from_store(store, judge_config(store, weights={"reward_model": 1.0},
                                                              reward_model_version=OUT))
    chosen = [scorer.score(r["prompt"], [r["chosen"]])[0] for r in held]
    rejected = [scorer.score(r["prompt"], [r["rejected"]])[0] for r in held]
    assert pairwise_accuracy(chosen, rejected)["accuracy"] == pytest.approx(m["held_out_accuracy"])
    # Scores do not depend on the batch a response is scored in.
    together = scorer.score(held[0]["prompt"], [held[0]["chosen"], held[0]["rejected"], "Paris."])
    assert together[:2] == pytest.approx([chosen[0], rejected[0]], abs=1e-4)
    # A replay (a restarted CLI, a crashed round run again) trains nothing and returns the version.
    again = train_reward_model(store, "m0", OUT, PAIRS, config(), work_dir=tmp_path / "w", seed=7)
    assert again == manifest
    assert weights_changed_head(store)


def weights_changed_head(store) -> bool:
    """The published folder is a sequence classifier with one output, its body trained."""
    import json

    cfg = json.loads((store.path(OUT) / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg.get("num_labels", 1) == 1
    assert cfg["pad_token_id"] is not None
    return weights_changed(store, "m0", OUT)


def test_the_judge_records_the_reward_model_score_and_pairs_by_the_mix(reward_model):
    store, _ = reward_model
    cfg = judge_config(store, weights={"self_judge": 0.0, "verifier": 1.0, "reward_model": 2.0},
                       reward_model_version=OUT)
    judge = Judge(ModelHost("judge", cfg, store), cfg)
    texts = ["Paris is the capital of France.", "The morning bus smells of cinnamon.", "", "positive"]
    cs = records_pb2.CandidateSet(prompt="What is the capital of France?")
    cs.meta.id, cs.meta.model_version = "cs-1", "m0"
    cs.verification.CopyFrom(records_pb2.Verification(label="positive", labels=["positive", "negative"]))
    for i, text in enumerate(texts):
        cs.candidates.add(candidate_id=f"c{i}", index=i, text=text)
    outcome = judge_candidate_set(cs, judge)
    expected = judge.reward_model()(cs.prompt, texts)
    assert all(math.isfinite(v) for v in expected)  # the empty response too
    assert expected[0] > expected[1]  # on-topic over unrelated, as trained
    got = [{r.source: r.value for r in jc.rewards} for jc in outcome.judgments.candidates]
    verifier = [-3.0, -3.0, -3.0, 1.0]
    assert got == [{"reward_model": pytest.approx(e, abs=1e-5), "verifier": v} for e, v in zip(expected, verifier)]
    rewards = [jc.reward for jc in outcome.judgments.candidates]
    assert rewards == pytest.approx([2 * e + v for e, v in zip(expected, verifier)], abs=1e-5)  # float32 on the record
    # the DPO pair is chosen by the same mix: best and worst reward
    assert outcome.pair.chosen == texts[rewards.index(max(rewards))]
    assert outcome.pair.rejected == texts[rewards.index(min(rewards))]


def test_a_bad_reward_model_version_is_refused_naming_the_field(m0):
    store, _ = m0
    with pytest.raises(ConfigError, match="rewards.reward_model_version"):
        judge_config(store, weights={"reward_model": 1.0})
    for version, why in (("no-such-rm", "not found"), ("m0", "is a base model, not a reward_model"),
                         ("../etc", "invalid version id")):
        cfg = judge_config(store, weights={"reward_model": 1.0}, reward_model_version=version)
        with pytest.raises(RewardModelError, match=rf"rewards.reward_model_version: .*{why}"):
            Judge(ModelHost("judge", cfg, store), cfg).reward_model()
    # weight 0: no reward model is needed or loaded
    cfg = judge_config(store, weights={"reward_model": 0.0}, reward_model_version="no-such-rm")
    assert Judge(ModelHost("judge", cfg, store), cfg).reward_model() is None


def test_pairwise_accuracy_counts_a_tie_as_a_miss():
    assert pairwise_accuracy([2.0, 1.0, 0.5, -1.0], [1.0, 1.0, 1.5, -3.0]) == {"accuracy": 0.5, "margin": 0.5}
    with pytest.raises(ValueError):
        pairwise_accuracy([], [])


def test_pairs_are_validated_and_the_held_out_split_is_stable():
    train, held = held_out_split(PAIRS, 1 / 3, seed=7)
    assert len(held) == 12 and train == [p for p in PAIRS if p not in held]  # in the given order
    shuffled = held_out_split(PAIRS[::-1], 1 / 3, seed=7)[1]
    assert {p["pair_id"] for p in shuffled} == {p["pair_id"] for p in held}  # the order does not matter
    assert {p["pair_id"] for p in held_out_split(PAIRS, 1 / 3, seed=8)[1]} != {p["pair_id"] for p in held}
    assert held_out_split(PAIRS[:2], 0.1, seed=7)[1] and held_out_split(PAIRS[:1], 0.5, seed=7)[1] == []
    assert held_out_split(PAIRS, 0.0, seed=7) == (PAIRS, [])
    with pytest.raises(TrainingDataError, match=r"rows\[1\].pair_id: 'capital-0' repeats rows\[0\]"):
        train_reward_model(None, "m0", "x", [PAIRS[0], PAIRS[0]], config(), work_dir=None, seed=7)
    with pytest.raises(TrainingDataError, match=r"rows\[0\].rejected: empty text"):
        train_reward_model(None, "m0", "x", [{**PAIRS[0], "rejected": " "}], config(), work_dir=None, seed=7)
