"""A DPO round over 2 processes on the CPU (accelerate's launcher, torchrun, DDP over gloo) on the
real SmolLM2: the same global batch and losses as one process, one published version, and a
killed rank that fails the round, whose retry resumes from the checkpoint and publishes once."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest

from srlm.bus.local_broker import free_port
from srlm.config import DPOConfig, SRLMConfig
from srlm.trainer.distributed import RoundFailed, run_distributed_round
from srlm.trainer.dpo import train_dpo
from tests.trainer.rows import PAIRS
from tests.trainer.test_training import Progress

pytestmark = pytest.mark.model

# fp32 without dropout: the two runs differ only in how the gradient is summed. Each step sees
# all 4 pairs (1 process: 2 micro-batches accumulated; 2 processes: 1 each, all-reduced).
ROUND = DPOConfig(max_steps=2, batch_size=4, per_device_batch_size=2, max_length=256, dropout=0.0,
                  precision="fp32", gradient_checkpointing=False, save_steps=1)
# Losses and rewards agree to this (absolute): float sums in another order, after an update.
TOLERANCE = 2e-4


def ddp_round(store, tmp_path, version, progress=None, cfg=ROUND):
    config = SRLMConfig.model_validate({"distributed": {"strategy": "ddp", "num_processes": 2,
                                                        "main_process_port": free_port()},
                                        "tracking": {"tensorboard": False}})
    return run_distributed_round(store, config, kind="dpo", base_version="m0", out_version=version, rows=PAIRS,
                                 cfg=cfg, run_id="ddp-test", iteration=2, work_dir=tmp_path / version, seed=5,
                                 progress_cb=progress, environ={})


def test_two_processes_train_the_same_round_as_one_and_publish_once(m0, tmp_path):
    store, _ = m0
    one = train_dpo(store, "m0", "ddp-reference", PAIRS, ROUND, run_id="ddp-test", iteration=2,
                    work_dir=tmp_path / "one", seed=5)
    progress = Progress()
    two = ddp_round(store, tmp_path, "ddp-two", progress)

    assert two.extra["world_size"] == 2 and one.extra["world_size"] == 1
    assert two.metrics["global_step"] == one.metrics["global_step"] == 2, "the global batch is the same"
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")
    for a, b in zip(one.extra["log_history"], two.extra["log_history"], strict=True):
        assert a["step"] == b["step"]
        for key in keys:
            assert b[key] == pytest.approx(a[key], abs=TOLERANCE), (a["step"], key)
    assert [s["step"] for s in progress.steps()] == [1, 2], "rank 0's progress reaches the parent"
    assert [m.version_id for m in store.list()].count("ddp-two") == 1
    assert not list(store.staging_dir.glob("ddp-two.*")), "no staged copy left behind"
    store.verify("ddp-two")
    assert not (tmp_path / "ddp-two").exists(), "the work dir goes once the version is published"


def rank_processes(spec_marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if ("srlm.trainer.rank" in cmdline and "accelerate.commands.launch" not in cmdline
                and any(spec_marker in part for part in cmdline)):
            found.append(proc)
    return found


def test_a_killed_rank_fails_the_round_and_the_retry_resumes_and_publishes_once(m0, tmp_path):
    store, _ = m0
    version = "ddp-killed"
    work = tmp_path / version
    cfg = ROUND.model_copy(update={"max_steps": 3})
    outcome: dict = {}

    def first_attempt():
        try:
            outcome["manifest"] = ddp_round(store, tmp_path, version, cfg=cfg)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    thread = threading.Thread(target=first_attempt)
    thread.start()
    deadline = time.monotonic() + 600
    while not (work / "checkpoint-1" / "trainer_state.json").exists():
        if not thread.is_alive():
            pytest.fail(f"the round ended before its first checkpoint: {outcome}")
        if time.monotonic() > deadline:
            pytest.fail("no checkpoint after 600 s")
        time.sleep(0.05)
    ranks = rank_processes(str(work))
    assert len(ranks) == 2, f"expected the 2 ranks of the round, found {[p.cmdline() for p in ranks]}"
    ranks[-1].send_signal(signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive(), "the round did not end after one of its ranks was killed"
    assert isinstance(outcome.get("error"), RoundFailed), outcome
    assert "resumes from the last checkpoint" in str(outcome["error"])
    assert not store.exists(version), "a failed round publishes nothing"
    assert not rank_processes(str(work)), "no rank outlives the failed round"

    progress = Progress()
    manifest = ddp_round(store, tmp_path, version, progress, cfg=cfg)
    assert manifest.metrics["resumed_from_step"] >= 1, "the retry resumed from a checkpoint"
    assert manifest.metrics["global_step"] == 3
    assert progress.steps()[0]["step"] == manifest.metrics["resumed_from_step"] + 1
    assert [m.version_id for m in store.list()].count(version) == 1
    assert not work.exists()
