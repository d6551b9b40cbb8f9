"""Model versions (the store), the M0 import and the generation engines (``srlm.models.engines``)."""

from srlm.models.store import (
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
