"""One rank of a distributed training round: ``python -m srlm.trainer.rank SPEC`` under
``accelerate launch`` (see ``distributed.py``). Every rank trains; global rank 0 publishes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import yaml

from srlm.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig, parse_config
from srlm.models.store import ModelStore
from srlm.trainer.distributed import progress_writer
from srlm.trainer.job import PROGRESS_FILE, complete_checkpoint, train_and_publish

log = logging.getLogger(__name__)


def main(spec_path: str) -> int:
    import torch
    from accelerate import PartialState

    # Joins the process group that torchrun's variables describe; on a CPU accelerate's MULTI_CPU
    # mode (gloo) needs cpu=True, as the Trainer's use_cpu asks for later in the same process.
    state = PartialState(cpu=not torch.cuda.is_available())
    state.wait_for_everyone()  # node 0 wrote the spec before its ranks started
    spec = json.loads(Path(spec_path).read_text())
    config = parse_config(yaml.safe_load(spec["config_yaml"]), environ={})
    kind, work_dir = spec["kind"], Path(spec["work_dir"])
    store = ModelStore(spec["store_root"])
    rows = store.get_dataset(spec["dataset"])
    if store.dataset_sha256(spec["dataset"]) != spec["training_data_sha256"]:
        raise RuntimeError(f"training set {spec['dataset']} changed since the round was prepared")
    if kind == "dpo":
        from srlm.trainer.dpo import dpo_round

        cfg = DPOConfig.model_validate(spec["section"])
        examples, build, summary_keys = dpo_round(rows, cfg)
    elif kind == "grpo":
        from srlm.trainer.grpo import grpo_round

        cfg = GRPOConfig.model_validate(spec["section"])
        examples, build, summary_keys = grpo_round(rows, cfg)
    elif kind == "ppo":
        from srlm.trainer.ppo import ppo_inputs, ppo_round

        cfg = PPOConfig.model_validate(spec["section"])
        examples, build, summary_keys = ppo_round(rows, cfg, *ppo_inputs(store, spec["base_version"], cfg))
    elif kind == "sft":
        from srlm.trainer.sft import sft_round

        cfg = SFTConfig.model_validate(spec["section"])
        examples, build, summary_keys = sft_round(rows, cfg)
    else:
        raise ValueError(f"unknown round kind {kind!r}")
    callbacks, progress_cb = [], None
    if state.is_main_process:  # one writer of the logs
        from srlm.runtime.tracking import training_callbacks

        callbacks = training_callbacks(config, spec["run_id"], spec["out_version"])
        progress_cb = progress_writer(work_dir / PROGRESS_FILE)
    train_and_publish(store, kind=kind, base_version=spec["base_version"], out_version=spec["out_version"],
                      examples=examples, cfg=cfg, build_trainer=build, summary_keys=summary_keys,
                      run_id=spec["run_id"], iteration=spec["iteration"], work_dir=work_dir, seed=spec["seed"],
                      dataset=spec["dataset"], data_sha256=spec["training_data_sha256"],
                      checkpoint=complete_checkpoint(work_dir), progress_cb=progress_cb,
                      data_metrics=spec["data_metrics"], callbacks=callbacks)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank %(process)d %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1]))
