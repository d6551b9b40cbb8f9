"""LoRA adapter versions: a version that holds only a PEFT adapter and names the full version
it applies to (``manifest.extra["adapter_base"]``).

Every adapter version applies to a full version, never to another adapter, so an engine serves
any of them as base + one adapter and switches between adapters of one base without
reloading it. A round trained from an adapter version trains a new LoRA on the merged parent;
its published adapter is the parent's and the new one side by side (ranks concatenated), which
is exactly their sum: W = W0 + s1 B1 A1 + s2 B2 A2 = W0 + [s1 B1, s2 B2] [A1; A2].
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Adapter settings whose delta is not s * B @ A with one rank and scale for every module.
_UNSUPPORTED = ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save")


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path: Path) -> dict:
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())


def adapter_rank(path: Path) -> int:
    return int(adapter_config(path)["r"])


def _plain_lora(config: dict, path: Path) -> float:
    """The adapter's scale alpha / r; refuses adapters whose delta is not s * B @ A."""
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: a {config.get('peft_type')} adapter; only LoRA adapters can be combined")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported in adapter versions")
    return config["lora_alpha"] / config["r"]


def concat_adapters(first: Path, second: Path, out_dir: Path, base_name: str = "") -> None:
    """Write to ``out_dir`` the adapter whose delta is ``first``'s plus ``second``'s (exactly):
    rank r1 + r2, each B scaled by its adapter's alpha / r, alpha = rank (scale 1)."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [adapter_config(first), adapter_config(second)]
    scales = [_plain_lora(c, p) for c, p in zip(configs, (first, second))]
    weights = [load_file(Path(p) / ADAPTER_WEIGHTS) for p in (first, second)]
    if weights[0].keys() != weights[1].keys():
        missing = sorted(weights[0].keys() ^ weights[1].keys())[:3]
        raise ValueError(f"{first} and {second} adapt different modules (e.g. {missing}); train both with "
                         f"the same lora_target_modules")
    combined = {}
    for key in weights[0]:
        if ".lora_A." in key:
            combined[key] = torch.cat([w[key] for w in weights], dim=0)
        elif ".lora_B." in key:
            combined[key] = torch.cat([(w[key].float() * s).to(w[key].dtype) for w, s in zip(weights, scales)],
                                      dim=1)
        else:
            raise ValueError(f"{first}: unexpected adapter tensor {key!r}")
    rank = configs[0]["r"] + configs[1]["r"]
    config = dict(configs[1], r=rank, lora_alpha=rank, base_model_name_or_path=base_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(combined, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def merge_into_folder(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """A full Hugging Face folder of base + adapter, merged in fp32 (what a trainer loads and
    starts from when its parent is an adapter version), with the adapter folder's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    load_with_adapter(model, adapter_dir).merge_and_unload().save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)


def load_with_adapter(model, adapter_dir: Path, adapter_name: str = "default"):
    """``model`` (a transformers model) with the adapter on it, unmerged (PEFT)."""
    from peft import PeftModel

    _plain_lora(adapter_config(adapter_dir), adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name)
