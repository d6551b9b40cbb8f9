"""A DPO round that checkpoints after every step, run as its own process by the kill-and-resume test:
``python -m tests.trainer.dpo_job STORE_ROOT WORK_DIR PROGRESS_FILE``. Each progress report is
appended to PROGRESS_FILE as a JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from srlm.config import DPOConfig
from srlm.models.store import Manifest, ModelStore
from srlm.trainer.dpo import train_dpo
from tests.trainer.rows import PAIRS

VERSION = "trainer-dpo-resumed"
CONFIG = DPOConfig(max_steps=3, batch_size=2, per_device_batch_size=2, max_length=256, save_steps=1)


def run(store_root: str, work_dir: str, progress_file: str) -> Manifest:
    def report(step: int, total: int, logs: dict) -> None:
        with open(progress_file, "a") as fh:
            fh.write(json.dumps({"step": step, "total": total, **logs}) + "\n")

    return train_dpo(ModelStore(store_root), "m0", VERSION, PAIRS, CONFIG, run_id="resume-test", iteration=2,
                     work_dir=Path(work_dir), seed=3, progress_cb=report)


if __name__ == "__main__":
    run(*sys.argv[1:4])
