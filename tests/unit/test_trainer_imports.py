"""The trainer service imports a round's trainer when a round of that kind comes: TRL's GRPO
module imports vLLM where it is installed, which a trainer running SFT and DPO never needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from srlm.trainer.service import round_trainer


def test_sft_and_dpo_rounds_leave_vllm_unimported():
    code = ("import sys; from srlm.trainer.service import round_trainer; "
            "[round_trainer(k) for k in ('sft', 'dpo', 'ppo')]; print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"


def test_every_round_kind_has_its_trainer():
    assert [round_trainer(k).__name__ for k in ("sft", "dpo", "grpo", "ppo")] == \
        ["train_sft", "train_dpo", "train_grpo", "train_ppo"]
    with pytest.raises(ValueError, match="no training round of kind 'rm'"):
        round_trainer("rm")
