"""Data sources. Each is a function ``(root, modalities, seed, **kwargs) -> SplitData`` in
:data:`DATASETS`; data code knows nothing about models."""

from __future__ import annotations

from collections.abc import Callable

from dmrnet.data.base import (
    ArrayDataset,
    DataError,
    SplitData,
    Standardizer,
    stratified_split,
)
from dmrnet.data.mfeat import mfeat
from dmrnet.registry import Registry

DATASETS: Registry[Callable[..., SplitData]] = Registry("dataset")
DATASETS.register("mfeat")(mfeat)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "SplitData",
    "Standardizer",
    "mfeat",
    "stratified_split",
]
