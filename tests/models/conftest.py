"""A second real model version, for reload tests: M0 with its final norm and its (tied)
embeddings negated.

Negating ``model.norm.weight`` negates every logit, so greedy decoding of this version differs
from M0's: a reload that did not switch weights shows. Negating the embeddings, which SmolLM2's
LM head shares, makes a reload that kept the old head score the opposite of every logit.
"""

from __future__ import annotations

import shutil

import pytest

from srlm.models.store import Manifest, ModelStore

NEGATED = "m0-negated"


@pytest.fixture(scope="session")
def m0_negated(m0: tuple[ModelStore, Manifest]) -> Manifest:
    from safetensors.torch import load_file, save_file

    store, base = m0
    if store.exists(NEGATED):
        return store.get(NEGATED)
    src = store.path(base.version_id)
    with store.staging(NEGATED) as staged:
        for rel in base.files:
            if rel != "model.safetensors":
                shutil.copyfile(src / rel, staged / rel)
        tensors = load_file(src / "model.safetensors")
        for name in ("model.norm.weight", "model.embed_tokens.weight"):
            tensors[name] = -tensors[name]
        save_file(tensors, staged / "model.safetensors", metadata={"format": "pt"})
        return store.publish(staged, version_id=NEGATED, parent_id=base.version_id, run_id=None,
                             iteration=0, kind="base", extra={"test": "final norm and embeddings negated"})


ADAPTERS = ("m0-lora-a", "m0-lora-b")


def publish_random_adapter(store: ModelStore, version_id: str, seed: int, r: int = 8) -> Manifest:
    """An adapter version on M0 with random LoRA weights (B too, so it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srlm.models.store import ADAPTER_BASE

    src = store.path("m0")
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():  # small enough that the model still writes words
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    with store.staging(version_id) as staged:
        model.save_pretrained(staged)
        AutoTokenizer.from_pretrained(src).save_pretrained(staged)
        return store.publish(staged, version_id=version_id, parent_id="m0", run_id=None, iteration=1, kind="sft",
                             extra={ADAPTER_BASE: "m0"})


@pytest.fixture(scope="session")
def m0_adapters(m0: tuple[ModelStore, Manifest]) -> list[Manifest]:
    """Two adapter versions of M0 with random weights, and beside each its merged full version
    (``<id>-merged``) to compare with."""
    from srlm.models.adapters import merge_into_folder

    store, _ = m0
    out = []
    for seed, version in enumerate(ADAPTERS):
        manifest = store.get(version) if store.exists(version) else publish_random_adapter(store, version, seed)
        merged = f"{version}-merged"
        if not store.exists(merged):
            with store.staging(merged) as staged:
                merge_into_folder(store.path("m0"), store.path(version), staged)
                store.publish(staged, version_id=merged, parent_id=version, run_id=None, iteration=1, kind="sft")
        out.append(manifest)
    return out
