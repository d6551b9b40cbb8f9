"""End to end, two iterations with every training round on 2 processes and a gate that rejects
every candidate.

- The trainer service launches SFT and each DPO round under accelerate (DDP over gloo on this
  CPU), follows rank 0's progress and announces the version rank 0 published; the loop goes on
  as with one process.
- The reject path through the running system: the gate allows no length growth, so M2 is
  recorded as rejected with its reason, no inference service ever loads it, and iteration 2
  trains M3 from the version that still serves (M1), which the gate rejects too.

The judge reads each verdict as its mean over the scores (``judge.verdict_readout: expected``):
the written digits of a 2-step M1 can tie on all of an iteration's prompts, which leaves no
pair to train on.
"""

from __future__ import annotations

import pytest

from srlm.models.store import ModelStore
from tests.e2e.conftest import Finished, finished_run, pair_records

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.model]

RUN_ID = "ddp-loop"
# The CI config's batch of 2, as 1 sequence on each of the 2 processes.
TWO_PROCESSES = {"SRLM_DISTRIBUTED__STRATEGY": "ddp", "SRLM_DISTRIBUTED__NUM_PROCESSES": "2",
                 "SRLM_SFT__PER_DEVICE_BATCH_SIZE": "1", "SRLM_DPO__PER_DEVICE_BATCH_SIZE": "1"}
STRICT_GATE = {"SRLM_RUN__ITERATIONS": "2", "SRLM_EVAL_GATE__MAX_LENGTH_GROWTH": "0.0001",
               "SRLM_JUDGE__VERDICT_READOUT": "expected"}


@pytest.fixture(scope="module")
def strict_ddp_run(tmp_path_factory):
    with finished_run(tmp_path_factory.mktemp("ddp"), RUN_ID, **TWO_PROCESSES, **STRICT_GATE) as (stack, state):
        yield Finished(stack, stack.client_config(), state)


def test_the_loop_runs_its_training_rounds_on_two_processes(strict_ddp_run):
    config = strict_ddp_run.config
    store = ModelStore(config.model_store.root)
    for n in (1, 2, 3):
        manifest = store.get(f"{RUN_ID}.m{n}")
        assert manifest.extra["world_size"] == 2, manifest.version_id
        assert manifest.metrics["global_step"] == 2 and len(manifest.extra["log_history"]) == 2
        store.verify(manifest.version_id)
    assert sorted(m.version_id for m in store.list(RUN_ID)) == [f"{RUN_ID}.m{n}" for n in range(4)]  # each once
    for iteration, version in ((1, "m2"), (2, "m3")):  # each trained on exactly its iteration's pairs
        pairs = {p.meta.id for p in pair_records(config) if p.meta.run_id == RUN_ID and p.meta.iteration == iteration}
        trained = store.get(f"{RUN_ID}.{version}").training_data
        assert pairs and {r["pair_id"] for r in store.get_dataset(trained)} == pairs, version
    assert not list(store.checkpoints_dir.glob("*")), "the rounds' work dirs are cleared"


def test_rejected_candidate_never_serves(strict_ddp_run):
    stack, state = strict_ddp_run.stack, strict_ddp_run.state
    store = ModelStore(strict_ddp_run.config.model_store.root)
    first, second = state.iterations
    assert first.pairs > 0, "iteration 1 made no pairs to train M2 on"
    assert not first.promoted and first.gate_reason.startswith("rejected: mean length grew"), first.gate_reason
    assert "ifeval.prompt_strict" in first.metrics  # the evidence is kept with the rejection
    assert store.status(f"{RUN_ID}.m2") == ("rejected", first.gate_reason)
    assert (second.input_version, second.output_version) == (f"{RUN_ID}.m1", f"{RUN_ID}.m3")
    assert store.get(f"{RUN_ID}.m3").parent_id == f"{RUN_ID}.m1"
    assert not second.promoted and store.status(f"{RUN_ID}.m3")[0] == "rejected"
    assert state.serving_version == f"{RUN_ID}.m1"
    for name in ("promptgen", "sampler", "judge"):
        log = (stack.logs / f"{name}.log").read_text()
        assert f"{name}: serving {RUN_ID}.m1 " in log  # they do log every version they load ...
        assert f"serving {RUN_ID}.m2 " not in log and f"serving {RUN_ID}.m3 " not in log  # ... and never a rejected one
