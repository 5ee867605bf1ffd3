"""Data sources. Each is a function ``(root, modalities, seed, **kwargs) -> SplitData``
registered in :data:`DATASETS` with its defaults, in its own module; data code knows nothing
about models."""

from __future__ import annotations

from dmrnet.data.base import (
    DATASETS,
    ArrayDataset,
    DataError,
    DatasetDefaults,
    DatasetRegistry,
    SplitData,
    Standardizer,
    stratified_split,
)
from dmrnet.data.casia_surf import casia_surf
from dmrnet.data.cremad import cremad
from dmrnet.data.features import features
from dmrnet.data.kinetics_sounds import kinetics_sounds
from dmrnet.data.manifest import manifest
from dmrnet.data.mfeat import mfeat
from dmrnet.data.rgbd import nyuv2, rgbd_shapes
from dmrnet.data.synthetic import synthetic

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "DatasetDefaults",
    "DatasetRegistry",
    "SplitData",
    "Standardizer",
    "casia_surf",
    "cremad",
    "features",
    "kinetics_sounds",
    "manifest",
    "mfeat",
    "nyuv2",
    "rgbd_shapes",
    "stratified_split",
    "synthetic",
]
