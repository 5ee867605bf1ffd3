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
from dmrnet.data.casia_surf import casia_surf
from dmrnet.data.cremad import cremad
from dmrnet.data.kinetics_sounds import kinetics_sounds
from dmrnet.data.manifest import manifest
from dmrnet.data.mfeat import mfeat
from dmrnet.data.rgbd import nyuv2, rgbd_shapes
from dmrnet.data.synthetic import synthetic
from dmrnet.registry import Registry

DATASETS: Registry[Callable[..., SplitData]] = Registry("dataset")
for _name, _fn in [("mfeat", mfeat), ("cremad", cremad), ("kinetics_sounds", kinetics_sounds),
                   ("casia_surf", casia_surf), ("manifest", manifest), ("nyuv2", nyuv2),
                   ("rgbd-shapes", rgbd_shapes), ("synthetic", synthetic)]:
    DATASETS.register(_name)(_fn)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "SplitData",
    "Standardizer",
    "casia_surf",
    "cremad",
    "kinetics_sounds",
    "manifest",
    "mfeat",
    "nyuv2",
    "rgbd_shapes",
    "stratified_split",
    "synthetic",
]
