"""Adapter versions without a model: combining two LoRA adapters is exactly their sum, and what
cannot be combined or served is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from srlm.config import ConfigError, EngineConfig, parse_config
from srlm.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, concat_adapters
from srlm.models.engines.vllm import VLLMEngine

MODULES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.up_proj")


def write_adapter(folder, r: int, alpha: int, seed: int, **config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in MODULES:
        tensors[f"{module}.lora_A.weight"] = torch.randn(r, 6, generator=generator)
        tensors[f"{module}.lora_B.weight"] = torch.randn(5, r, generator=generator)
    folder.mkdir()
    save_file(tensors, folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                     "target_modules": ["q_proj", "up_proj"], **config}))
    return tensors


def delta(tensors, module: str, scale: float) -> torch.Tensor:
    return scale * tensors[f"{module}.lora_B.weight"] @ tensors[f"{module}.lora_A.weight"]


def test_concatenated_adapter_is_the_sum_of_both(tmp_path):
    first = write_adapter(tmp_path / "a", r=4, alpha=8, seed=0)
    second = write_adapter(tmp_path / "b", r=2, alpha=16, seed=1)
    concat_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "ab", base_name="m0")
    combined = load_file(tmp_path / "ab" / ADAPTER_WEIGHTS)
    config = json.loads((tmp_path / "ab" / ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (6, 6, "m0")
    for module in MODULES:
        expected = delta(first, module, 8 / 4) + delta(second, module, 16 / 2)
        torch.testing.assert_close(delta(combined, module, 1.0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config, message", [
    ({"use_dora": True}, "use_dora"),
    ({"use_rslora": True}, "use_rslora"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"peft_type": "IA3"}, "only LoRA"),
])
def test_adapters_whose_delta_is_not_b_times_a_are_refused(tmp_path, config, message):
    write_adapter(tmp_path / "a", r=2, alpha=2, seed=0)
    write_adapter(tmp_path / "b", r=2, alpha=2, seed=1, **config)
    with pytest.raises(ValueError, match=message):
        concat_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "ab")


def test_adapters_of_different_modules_are_refused(tmp_path):
    write_adapter(tmp_path / "a", r=2, alpha=2, seed=0)
    tensors = write_adapter(tmp_path / "b", r=2, alpha=2, seed=1)
    save_file({k: v for k, v in tensors.items() if "up_proj" not in k}, tmp_path / "b" / ADAPTER_WEIGHTS)
    with pytest.raises(ValueError, match="adapt different modules"):
        concat_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "ab")


def test_vllm_refuses_an_adapter_above_its_max_rank_before_starting(tmp_path):
    write_adapter(tmp_path / "a", r=96, alpha=96, seed=0)
    engine = VLLMEngine(EngineConfig(kind="vllm", max_lora_rank=64))
    with pytest.raises(ValueError, match="rank 96, above engine.max_lora_rank 64"):
        engine.load_adapter(tmp_path / "m0", "m0", tmp_path / "a", "v1")
    assert engine.llm is None


def test_adapter_publishing_is_validated_at_start_up():
    with pytest.raises(ConfigError, match="dpo.*lora_publish: 'adapter' needs use_lora"):
        parse_config({"dpo": {"lora_publish": "adapter"}}, environ={})
    with pytest.raises(ConfigError, match="reward_model.lora_publish"):
        parse_config({"reward_model": {"use_lora": True, "lora_publish": "adapter"}}, environ={})
    cfg = parse_config({"grpo": {"use_lora": True, "lora_publish": "adapter"}}, environ={})
    assert cfg.grpo.lora_publish == "adapter"
