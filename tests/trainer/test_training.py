"""SFT and DPO on the real SmolLM2-135M on CPU: a few steps each, published to the real store."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from safetensors import safe_open

from srlm.bus.local_broker import free_port
from srlm.config import DPOConfig, SFTConfig, SRLMConfig
from srlm.runtime.tracking import read_scalars, training_callbacks, wandb_run_id
from srlm.trainer.data import sft_examples
from srlm.trainer.dpo import REWARD_METRICS, train_dpo
from srlm.trainer.sft import build_sft_trainer, train_sft
from tests.trainer import dpo_job
from tests.trainer.rows import PAIRS, SFT_ROWS
from tests.fixtures.tracking import items, offline_wandb, srlm_runs, wandb_records

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
PROBE = "model.layers.0.self_attn.q_proj.weight"


def tiny(cls, **values):
    """The paper's hyperparameters, sized for a test: 2 optimizer steps of 2 examples."""
    return cls(**{"max_steps": 2, "batch_size": 2, "per_device_batch_size": 2, "max_length": 256, **values})


def weight(store, version: str, name: str = PROBE):
    with safe_open(store.path(version) / "model.safetensors", "pt") as f:
        return f.get_tensor(name)


def weights_changed(store, base: str, new: str) -> bool:
    before, after = weight(store, base), weight(store, new)
    assert before.shape == after.shape
    return not bool((before == after).all())


class Progress:
    def __init__(self):
        self.calls: list[tuple[int, int, dict]] = []

    def __call__(self, step: int, total: int, logs: dict) -> None:
        self.calls.append((step, total, logs))

    def steps(self) -> list[dict]:
        """Per-step logs (the final summary log has no 'loss')."""
        return [{"step": s, "total": t, **logs} for s, t, logs in self.calls if "loss" in logs]


def test_sft_trains_and_publishes_m1_with_its_data(m0, tmp_path, caplog):
    store, base = m0
    progress = Progress()
    cfg = tiny(SFTConfig, per_device_batch_size=1)  # batch 2 = 2 accumulated micro-batches
    # an MLflow server that cannot be reached costs the round a warning, nothing more
    unreachable = SRLMConfig(tracking={"tensorboard": False, "report_to": ["mlflow"],
                                       "mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}})
    with caplog.at_level(logging.WARNING, "srlm.runtime.tracking"):
        manifest = train_sft(store, base.version_id, "trainer-sft-m1", SFT_ROWS, cfg, run_id="t-sft",
                             work_dir=tmp_path / "w", seed=7, progress_cb=progress,
                             callbacks=training_callbacks(unreachable, "t-sft", "trainer-sft-m1"))
    warnings = [r.getMessage() for r in caplog.records if r.name == "srlm.runtime.tracking"]
    assert len(warnings) == 1 and warnings[0].startswith("MLflow tracking of run t-sft (trainer-sft-m1)"), warnings

    assert (manifest.parent_id, manifest.kind, manifest.iteration) == ("m0", "sft", 1)
    assert manifest.training_data_sha256 == store.dataset_sha256(manifest.training_data)
    assert store.get_dataset(manifest.training_data) == SFT_ROWS
    steps = progress.steps()
    assert [(s["step"], s["total"]) for s in steps] == [(1, 2), (2, 2)]
    assert all(s["loss"] > 0 for s in steps)
    assert steps[0]["learning_rate"] == pytest.approx(5.5e-6)  # the paper's start, then the cosine decay
    assert 1.1e-6 < steps[1]["learning_rate"] < 5.5e-6
    for key in ("loss", "train_runtime", "train_tokens_per_second", "mean_token_accuracy"):
        assert manifest.metrics[key] > 0, key
    assert [manifest.metrics[k] for k in ("global_step", "examples", "examples_dropped")] == [2, 4, 0]
    assert weights_changed(store, "m0", "trainer-sft-m1")
    store.verify("trainer-sft-m1")
    assert not (tmp_path / "w").exists()  # checkpoints are removed once published

    # A replayed command finds the version and returns it without training.
    replay = Progress()
    assert train_sft(store, "m0", "trainer-sft-m1", SFT_ROWS, cfg, run_id="t-sft", work_dir=tmp_path / "w", seed=7,
                     progress_cb=replay) == manifest
    assert replay.calls == []


def test_sft_loss_is_on_the_answer_tokens_only(m0, tmp_path):
    store, base = m0
    examples = sft_examples(SFT_ROWS)
    trainer = build_sft_trainer(store.path(base.version_id), examples, tiny(SFTConfig), output_dir=tmp_path, seed=0)
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    for row, ids, labels, mask in zip(examples, batch["input_ids"], batch["labels"], batch["attention_mask"],
                                      strict=True):
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert ids[:n] == tok(prompt, add_special_tokens=False)["input_ids"]
        assert set(labels[:n]) == {-100}, "prompt tokens must not be trained on"
        assert labels[n:] == ids[n:], "every answer token is trained on"
        assert tok.decode(labels[n:]) == row["completion"][0]["content"] + "<|im_end|>\n"


def test_the_fused_lm_head_scores_only_the_answer_positions_with_the_same_loss(m0, tmp_path, monkeypatch):
    """On a CPU, TRL's fused LM head projects every position; srlm's trainers have it project
    only the labelled ones (configure_fused_lm_head). Same loss, gradients and metrics."""
    import torch
    import trl.trainer.utils as trl_utils

    store, base = m0
    trainer = build_sft_trainer(store.path(base.version_id), sft_examples(SFT_ROWS), tiny(SFTConfig),
                                output_dir=tmp_path, seed=0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    scored: list[int] = []  # positions each call of the head's kernel projects
    kernel = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            scored.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model = trainer.model.eval()  # no dropout: both passes compute the same function

    def loss_and_grad():
        model.zero_grad()
        trainer._metrics["eval"].clear()
        loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if k in ("entropy", "mean_token_accuracy")}
        return loss.item(), model.get_output_embeddings().weight.grad.clone(), metrics

    compact = loss_and_grad()
    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton.__wrapped__)  # TRL's own choice
    full = loss_and_grad()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert scored == [labelled, batch["labels"][:, 1:].numel()] and labelled < scored[1] / 2, scored
    assert compact[0] == pytest.approx(full[0], rel=1e-5)
    assert torch.allclose(compact[1], full[1], rtol=1e-4, atol=1e-7)
    assert compact[2] == pytest.approx(full[2], rel=1e-5) and set(compact[2]) == {"entropy", "mean_token_accuracy"}


def test_dpo_trains_and_publishes_with_reward_metrics(m0, tmp_path, monkeypatch):
    store, base = m0
    progress = Progress()
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts of a sqlite store: ./mlruns
    offline_wandb(monkeypatch, tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = SRLMConfig(tracking={"dir": tmp_path / "tb", "report_to": ["mlflow", "wandb"], "mlflow": {"tracking_uri": uri}})
    manifest = train_dpo(store, base.version_id, "trainer-dpo-m2", PAIRS, tiny(DPOConfig), run_id="t-dpo", iteration=2,
                         work_dir=tmp_path / "w", seed=11, progress_cb=progress,
                         callbacks=training_callbacks(config, "t-dpo", "trainer-dpo-m2"))

    assert (manifest.parent_id, manifest.kind, manifest.iteration) == ("m0", "dpo", 2)
    assert store.get_dataset(manifest.training_data) == PAIRS
    steps = progress.steps()
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["learning_rate"] == pytest.approx(1e-6) and steps[1]["learning_rate"] == pytest.approx(5.5e-7)
    for s in steps:
        assert set(REWARD_METRICS) <= s.keys()
        assert 0 <= s["rewards/accuracies"] <= 1
        assert s["rewards/margins"] == pytest.approx(s["rewards/chosen"] - s["rewards/rejected"], abs=1e-5)
    for key in (*REWARD_METRICS, "loss", "train_runtime", "train_tokens_per_second"):
        assert key in manifest.metrics, key
    assert manifest.metrics["rewards/margins"] == pytest.approx(sum(s["rewards/margins"] for s in steps) / 2)
    assert weights_changed(store, "m0", "trainer-dpo-m2")
    # the per-step logs behind the report's training plot, and the same steps live in TensorBoard
    assert [h["step"] for h in manifest.extra["log_history"]] == [1, 2]
    assert [h["rewards/margins"] for h in manifest.extra["log_history"]] == pytest.approx([s["rewards/margins"] for s in steps])
    scalars = read_scalars(tmp_path / "tb" / "t-dpo" / "trainer-dpo-m2")
    for key in ("loss", "learning_rate", *REWARD_METRICS):
        assert [step for step, _ in scalars[f"train/{key}"]] == [1, 2], key
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([s[key] for s in steps], rel=1e-5), key
    # ... and in the srlm run's MLflow run, prefixed by the version
    (mlflow_run,) = srlm_runs(uri)["t-dpo"]
    client = MlflowClient(uri)
    for key in ("loss", "learning_rate", *REWARD_METRICS):
        history = client.get_metric_history(mlflow_run.info.run_id, f"trainer-dpo-m2/train/{key}")
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([s[key] for s in steps], rel=1e-5), key
    # ... and in its W&B run (offline files), against the round's own step axis
    history = [items(r.history.item) for r in wandb_records([tmp_path], wandb_run_id("t-dpo"))
               if r.WhichOneof("record_type") == "history"]
    margins = [h for h in history if "trainer-dpo-m2/train/rewards/margins" in h]
    assert [h["global_step/trainer-dpo-m2"] for h in margins] == [1, 2]
    assert [h["trainer-dpo-m2/train/rewards/margins"] for h in margins] == pytest.approx(
        [s["rewards/margins"] for s in steps], rel=1e-5)


@pytest.mark.parametrize("variant", ["ipo", "sigmoid+nll", "lora"])
def test_dpo_variants_run_and_publish_a_full_model(m0, tmp_path, variant):
    store, base = m0
    if variant == "lora":
        cfg = tiny(DPOConfig, max_steps=1, use_lora=True, learning_rate=1e-4, final_learning_rate=1e-5)
    else:
        cfg = tiny(DPOConfig, max_steps=1, loss_type=variant)
    progress = Progress()
    version = f"trainer-dpo-{variant.replace('+', '-')}"
    manifest = train_dpo(store, base.version_id, version, PAIRS, cfg, run_id="t-variants", iteration=2,
                         work_dir=tmp_path / "w", seed=5, progress_cb=progress)
    (step,) = progress.steps()
    if variant == "ipo":
        # IPO's loss is (h - 1/(2 beta))^2; before any update h ~ 0 (only dropout noise), so ~ 5^2.
        assert 20 < step["loss"] < 30
    elif variant == "sigmoid+nll":
        # ln 2 of the sigmoid loss at the reference plus the chosen answers' NLL.
        assert step["loss"] > 1.0
    else:
        assert manifest.extra["lora_merged"] is True
        assert not (store.path(version) / "adapter_config.json").exists()
    with safe_open(store.path(version) / "model.safetensors", "pt") as new, \
            safe_open(store.path("m0") / "model.safetensors", "pt") as old:
        assert set(new.keys()) == set(old.keys())  # a full Hugging Face folder, same tensors as M0
    assert weights_changed(store, "m0", version)


@pytest.mark.parametrize("every_n", [1, 2])
def test_gradient_checkpointing_every_n_layers_holds_through_trl_reference_forwards(m0, tmp_path, every_n):
    """TRL turns checkpointing off around each reference forward (here: no precomputed
    reference) and back on: still every n-th of SmolLM2's 30 layers at every step."""
    from transformers import TrainerCallback
    from transformers.modeling_layers import GradientCheckpointingLayer

    from srlm.trainer.data import dpo_examples
    from srlm.trainer.dpo import build_dpo_trainer

    store, base = m0
    counts = []

    class CountCheckpointed(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            counts.append(sum(m.gradient_checkpointing for m in model.modules()
                              if isinstance(m, GradientCheckpointingLayer)))

    cfg = tiny(DPOConfig, precompute_ref_log_probs=False, gradient_checkpointing_every_n_layers=every_n)
    trainer = build_dpo_trainer(store.path(base.version_id), dpo_examples(PAIRS), cfg, output_dir=tmp_path / "w",
                                seed=5, callbacks=[CountCheckpointed()])
    trainer.train()
    assert counts == [30 // every_n] * 2


def test_killed_dpo_run_resumes_from_its_checkpoint_and_publishes_once(m0, tmp_path):
    store, _ = m0
    work, first, second = tmp_path / "w", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    log_path = tmp_path / "job.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.trainer.dpo_job", str(store.root), str(work),
                                 str(first)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 600
        while not (work / "checkpoint-1" / "trainer_state.json").exists():
            if proc.poll() is not None:
                pytest.fail(f"the DPO process ended (rc {proc.returncode}) before its first checkpoint:\n"
                            + log_path.read_text()[-4000:])
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 600 s:\n" + log_path.read_text()[-4000:])
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists(dpo_job.VERSION), "killed before publishing"

    steps_before = [json.loads(line)["step"] for line in first.read_text().splitlines()]
    assert steps_before[0] == 1
    manifest = dpo_job.run(str(store.root), str(work), str(second))  # restarted with the same arguments

    steps_after = [json.loads(line)["step"] for line in second.read_text().splitlines()
                   if "loss" in json.loads(line)]
    assert steps_after == [2, 3], "the restarted run continues after checkpoint-1 instead of starting at 0"
    assert manifest.metrics["resumed_from_step"] == 1 and manifest.metrics["global_step"] == 3
    assert manifest.parent_id == "m0"
    assert [m.version_id for m in store.list()].count(dpo_job.VERSION) == 1
    assert not list(store.staging_dir.glob(f"{dpo_job.VERSION}.*")), "no staged copy left behind"
    assert not work.exists()
