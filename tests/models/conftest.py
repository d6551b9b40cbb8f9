"""A second real model version, for reload tests: M0 with its final norm negated.

Negating ``model.norm.weight`` negates every logit, so greedy decoding of this version
differs from M0's from the first token: a reload that did not switch weights shows.
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
        tensors["model.norm.weight"] = -tensors["model.norm.weight"]
        save_file(tensors, staged / "model.safetensors", metadata={"format": "pt"})
        return store.publish(staged, version_id=NEGATED, parent_id=base.version_id, run_id=None,
                             iteration=0, kind="base", extra={"test": "final norm negated"})
