"""Model versions (the store), the M0 import and the generation engines (``srlm.models.engines``)."""

import os

# OpenMP threads that spin while waiting make torch on CPU 10-25x slower when the cores are
# shared (several services, or a trainer, on one machine): measured 3.2 s (passive) vs 78 s (spinning) for one
# generation on 2 busy cores. Passive waiting costs little when the cores are free. libgomp
# reads this once, when torch loads it, so it is set here, before any engine imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from srlm.models.store import (  # noqa: E402
    CorruptVersion,
    DatasetNotFound,
    Manifest,
    ModelStore,
    ModelStoreError,
    VersionNotFound,
    validate_id,
)

__all__ = ["CorruptVersion", "DatasetNotFound", "Manifest", "ModelStore", "ModelStoreError", "VersionNotFound",
           "validate_id"]
