"""LoRA rounds published as adapter versions on the real SmolLM2: a round from M0 publishes M0's
adapter; a round from an adapter version trains from its merged weights (the DPO reference is
that version, not M0) and publishes one adapter on M0 that carries both; the services' model
host serves them on one loaded M0."""

from __future__ import annotations

import pytest
from peft import PeftModel
from safetensors.torch import load_file

from srlm.config import DPOConfig, EngineConfig, SFTConfig, SRLMConfig
from srlm.models.adapters import ADAPTER_WEIGHTS, adapter_config
from srlm.models.engines import SamplingParams
from srlm.runtime.model_host import ModelHost
from srlm.trainer.dpo import train_dpo
from srlm.trainer.sft import train_sft
from tests.trainer.rows import PAIRS, SFT_ROWS
from tests.trainer.test_training import Progress, tiny

pytestmark = pytest.mark.model

LORA = {"use_lora": True, "lora_publish": "adapter", "dropout": 0.0, "lora_dropout": 0.0, "lora_r": 8,
        "lora_alpha": 16}
QUESTION = [[{"role": "user", "content": "What is 3 plus 3?"}]]


def greedy(host: ModelHost, version: str) -> str:
    _, results = host.generate(QUESTION, SamplingParams(temperature=0.0, max_tokens=12), version_id=version)
    return results[0].completions[0].text


def test_adapter_rounds_chain_on_one_base_and_are_served_without_reloading_it(m0, tmp_path):
    store, base = m0
    sft = tiny(SFTConfig, learning_rate=1e-3, final_learning_rate=1e-4, **LORA)
    first = train_sft(store, base.version_id, "trainer-lora-a1", SFT_ROWS, sft, run_id="t-lora",
                      work_dir=tmp_path / "w1", seed=3)
    assert (first.extra["adapter_base"], first.extra["lora_merged"]) == ("m0", False)
    assert "adapter_model.safetensors" in first.files and "model.safetensors" not in first.files
    assert adapter_config(store.path("trainer-lora-a1"))["r"] == sft.lora_r

    # DPO from the adapter version: its reference is that version, so before the first update
    # (the new LoRA starts at zero, no dropout) chosen and rejected rewards are 0.
    progress = Progress()
    second = train_dpo(store, "trainer-lora-a1", "trainer-lora-a2", PAIRS,
                       tiny(DPOConfig, max_steps=1, learning_rate=1e-4, final_learning_rate=1e-5, **LORA),
                       run_id="t-lora", iteration=2, work_dir=tmp_path / "w2", seed=3, progress_cb=progress)
    (step,) = progress.steps()
    assert abs(step["rewards/chosen"]) < 1e-3 and abs(step["rewards/rejected"]) < 1e-3, step
    assert (second.parent_id, second.extra["adapter_base"]) == ("trainer-lora-a1", "m0")
    assert not (tmp_path / "w2").exists()  # the merged parent went with the work dir
    # ... and carries the first adapter exactly, beside the new one (ranks 8 + 8, scale 1)
    config = adapter_config(store.path("trainer-lora-a2"))
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (16, 16, "m0")
    old = load_file(store.path("trainer-lora-a1") / ADAPTER_WEIGHTS)
    new = load_file(store.path("trainer-lora-a2") / ADAPTER_WEIGHTS)
    assert old.keys() == new.keys()
    for key, tensor in old.items():
        if ".lora_A." in key:
            assert (new[key][:8] == tensor).all(), key
        else:
            assert (new[key][:, :8] == (tensor.float() * 2.0).to(tensor.dtype)).all(), key

    # The model host (what promptgen, the sampler, the judge and the gate serve through) loads M0
    # once and switches adapters on it.
    host = ModelHost("t", SRLMConfig(engine=EngineConfig(max_model_len=512)), store)
    try:
        plain = greedy(host, "m0")
        engine = host._get_engine()
        weights = id(engine.model)
        tuned = greedy(host, "trainer-lora-a1")
        assert isinstance(engine.model, PeftModel) and id(engine.model.get_base_model()) == weights
        assert (host.version_id, host.base_id) == ("trainer-lora-a1", "m0")
        assert tuned != plain, "the adapter changed nothing"
        greedy(host, "trainer-lora-a2")
        assert id(engine.model.get_base_model()) == weights
        assert greedy(host, "m0") == plain and id(engine.model) == weights
    finally:
        host.close()
