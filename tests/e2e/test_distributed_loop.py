"""End to end with every training round on 2 processes: the trainer service launches SFT and
DPO under accelerate (DDP over gloo on this CPU), follows rank 0's progress and announces the
version rank 0 published; the loop goes on as with one process."""

from __future__ import annotations

import pytest

from srlm.models.store import ModelStore
from tests.e2e.conftest import finished_run, pair_records

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.model]

RUN_ID = "ddp-loop"
# The CI config's batch of 2, as 1 sequence on each of the 2 processes.
TWO_PROCESSES = {"SRLM_DISTRIBUTED__STRATEGY": "ddp", "SRLM_DISTRIBUTED__NUM_PROCESSES": "2",
                 "SRLM_SFT__PER_DEVICE_BATCH_SIZE": "1", "SRLM_DPO__PER_DEVICE_BATCH_SIZE": "1"}


def test_the_loop_runs_its_training_rounds_on_two_processes(tmp_path):
    with finished_run(tmp_path, RUN_ID, **TWO_PROCESSES) as (stack, state):
        config = stack.client_config()
        store = ModelStore(config.model_store.root)
        m1, m2 = store.get(f"{RUN_ID}.m1"), store.get(f"{RUN_ID}.m2")
        for manifest in (m1, m2):
            assert manifest.extra["world_size"] == 2, manifest.version_id
            assert manifest.metrics["global_step"] == 2 and len(manifest.extra["log_history"]) == 2
            store.verify(manifest.version_id)
        assert [m.version_id for m in store.list(RUN_ID)].count(f"{RUN_ID}.m2") == 1
        pairs = {p.meta.id for p in pair_records(config) if p.meta.run_id == RUN_ID}
        assert {r["pair_id"] for r in store.get_dataset(m2.training_data)} == pairs
        assert state.serving_version in (f"{RUN_ID}.m1", f"{RUN_ID}.m2")
        assert not list(store.checkpoints_dir.glob("*")), "the rounds' work dirs are cleared"
