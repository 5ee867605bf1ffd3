"""Dataset plumbing shared by every data source: in-memory arrays, splits, standardisation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dmrnet.batch import Batch, BatchError, stats_view
from dmrnet.errors import DMRNetError
from dmrnet.registry import Registry


class DataError(DMRNetError):
    """A data source that cannot be read or does not fit what was asked."""


class ArrayDataset(Dataset):
    """Samples held in memory as per-modality arrays.

    Args:
        features: modality -> (N, *shape) float array.
        labels: (N,) int class labels.
        availability: (N, M) bool, what each sample has (None = everything).
        lengths: sequence modality -> (N,) int, each sample's real steps of its padded
            (N, T, D) array (1..T where available); the steps after them are zeroed, and an
            item holds its real steps only (T_i, D).
    """

    def __init__(
        self,
        features: Mapping[str, np.ndarray | Tensor],
        labels: np.ndarray | Tensor,
        availability: np.ndarray | Tensor | None = None,
        lengths: Mapping[str, np.ndarray | Tensor] | None = None,
    ) -> None:
        self.modalities = list(features)
        self.features = {m: torch.as_tensor(np.asarray(v), dtype=torch.float32)
                         for m, v in features.items()}
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        n = len(self.labels)
        for m, v in self.features.items():
            if v.shape[0] != n:
                raise DataError(f"modality {m!r} has {v.shape[0]} samples but there are {n} labels")
        if availability is None:
            self.availability = torch.ones(n, len(self.modalities), dtype=torch.bool)
        else:
            self.availability = torch.as_tensor(np.asarray(availability), dtype=torch.bool)
            if tuple(self.availability.shape) != (n, len(self.modalities)):
                raise DataError(
                    f"availability must have shape ({n}, {len(self.modalities)}); got "
                    f"{tuple(self.availability.shape)}"
                )
        self.lengths = {m: torch.as_tensor(np.asarray(v), dtype=torch.long)
                        for m, v in (lengths or {}).items()}
        for m, steps in self.lengths.items():
            if m not in self.features or self.features[m].dim() < 2:
                raise DataError(f"lengths are given for {m!r}, which is not a sequence modality "
                                f"(N, T, ...) of {self.modalities}")
            x, present = self.features[m], self.availability[:, self.modalities.index(m)]
            if tuple(steps.shape) != (n,):
                raise DataError(f"lengths of {m!r} must be ({n},); got {tuple(steps.shape)}")
            real = steps[present]
            if real.numel() and (int(real.min()) < 1 or int(real.max()) > x.shape[1]):
                raise DataError(f"lengths of {m!r} must be 1..{x.shape[1]} (its padded length) "
                                f"for the samples that have it; got {int(real.min())}.."
                                f"{int(real.max())}")
            steps = torch.where(present, steps, 0)
            self.lengths[m] = steps
            # the padding is zeros, as the collate makes it (whatever the source held)
            self.features[m] = torch.where(
                (torch.arange(x.shape[1])[None, :] < steps[:, None]).view(
                    n, x.shape[1], *([1] * (x.dim() - 2))), x, 0.0)
        for m, v in self.features.items():
            j = self.modalities.index(m)
            bad = ~torch.isfinite(v[self.availability[:, j]].reshape(-1))
            if bool(bad.any()):
                raise BatchError(
                    f"modality {m!r} holds NaN or inf values; clean the data or mark those "
                    "samples' modality unavailable"
                )

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: tuple(v.shape[1:]) for m, v in self.features.items()}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sequences(self) -> list[str]:
        """The modalities held as padded sequences with lengths."""
        return [m for m in self.modalities if m in self.lengths]

    def __getitem__(self, i: int) -> dict[str, Any]:
        inputs = {
            m: self.features[m][i] if m not in self.lengths
            else self.features[m][i, : int(self.lengths[m][i])]
            for j, m in enumerate(self.modalities)
            if self.availability[i, j]
        }
        return {"inputs": inputs, "target": self.labels[i]}

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch at once (the DataLoader calls this instead of ``__getitem__`` per
        sample): the rows indexed in one step, absent modalities zero-filled, the same
        values :class:`~dmrnet.batch.MultimodalCollate` makes from single items."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        availability = self.availability.index_select(0, idx)
        inputs = {}
        for j, (m, v) in enumerate(self.features.items()):
            rows = v.index_select(0, idx)
            absent = ~availability[:, j]
            if bool(absent.any()):
                rows[absent] = 0.0
            inputs[m] = rows
        return Batch(inputs=inputs, availability=availability,
                     target=self.labels.index_select(0, idx),
                     lengths={m: v.index_select(0, idx) for m, v in self.lengths.items()})

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayDataset(
            {m: v[idx] for m, v in self.features.items()}, self.labels[idx], self.availability[idx],
            {m: v[idx] for m, v in self.lengths.items()},
        )


def require_root(root: str | Path | None, name: str) -> Path:
    """The user's local copy of a dataset: an existing folder, or a clear error."""
    if root is None:
        raise DataError(f"{name} needs the folder of your local copy: --root DIR (data.root)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{name} folder {str(path)!r} does not exist")
    return path


def stratified_split(
    labels: np.ndarray | Tensor, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split sample indices into parts with the given fractions, stratified by class.

    Returns one sorted index array per fraction (the last part takes the remainder).
    """
    labels = np.asarray(labels)
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise DataError(f"split fractions must be >= 0 and sum to at most 1; got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for k, end in enumerate(bounds):
            parts[k].extend(idx[start:end].tolist())
            start = end
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


@dataclass
class Standardizer:
    """Per-feature (x - mean) / std, fitted on the training split only.

    Statistics are plain lists so they can be written to a human-readable config: one per
    element of a fixed-size modality, one per feature (D) of a sequence modality (fitted on
    the real steps, the same for every step; the padding stays zeros).
    """

    mean: dict[str, list[float]] = field(default_factory=dict)
    std: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def fit(cls, dataset: ArrayDataset, eps: float = 1e-6) -> Standardizer:
        mean, std = {}, {}
        for j, m in enumerate(dataset.modalities):
            x = dataset.features[m][dataset.availability[:, j]].double()
            if m in dataset.lengths:  # the real steps of every sample, one row each
                steps = dataset.lengths[m][dataset.availability[:, j]]
                x = x[torch.arange(x.shape[1])[None, :] < steps[:, None]]
            if len(x) == 0:
                raise DataError(f"modality {m!r} has no training sample to fit statistics on")
            mean[m] = x.mean(dim=0).flatten().tolist()
            # constant features (e.g. flags in mfeat-mor) keep scale 1 instead of dividing by 0
            s = x.std(dim=0, unbiased=False).flatten()
            std[m] = torch.where(s > eps, s, torch.ones_like(s)).tolist()
        return cls(mean, std)

    def apply(self, dataset: ArrayDataset) -> ArrayDataset:
        feats = {m: self.transform(m, v) for m, v in dataset.features.items()}
        # a sequence's padding is zeroed again by the dataset
        return ArrayDataset(feats, dataset.labels, dataset.availability, dataset.lengths)

    def transform(self, modality: str, x: Tensor) -> Tensor:
        """Standardise one modality's batch (B, *shape) with the fitted statistics (a
        sequence's (B, T, D) with statistics per feature D)."""
        mu = torch.tensor(self.mean[modality], dtype=x.dtype, device=x.device)
        sd = torch.tensor(self.std[modality], dtype=x.dtype, device=x.device)
        return (x - stats_view(mu, x.shape[1:])) / stats_view(sd, x.shape[1:])


class DeviceTransform(Protocol):
    """The last, batchable step of a modality's recipe, run on the training device after the
    batch is transferred (e.g. a batched STFT, or uint8 -> normalised float)."""

    item_shape: tuple[int, ...]  # what the dataset yields per sample
    item_dtype: torch.dtype

    def finish(self, batch: Tensor) -> Tensor:
        """(B, *item_shape) -> (B, *input_shape) float, on the batch's device."""
        ...


@dataclass
class SplitData:
    """What a data source hands to training: three splits and the metadata models need.

    ``input_shapes`` are what models see. Modalities in ``device_transforms`` are yielded by
    the datasets as ``item_shape`` / ``item_dtype`` and finished per batch by
    :meth:`finish_batch` on the device (the DataModule does it after transfer). Modalities in
    ``sequences`` are variable-length sequences: an item is (T_i, D) with T_i up to the T of
    their input shape (T, D), padded per batch with their lengths (:class:`Batch`).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    modalities: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    device_transforms: dict[str, DeviceTransform] = field(default_factory=dict)
    sequences: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [m for m in self.sequences if m not in self.modalities
               or len(self.input_shapes.get(m, ())) < 1 or m in self.device_transforms]
        if bad:
            raise DataError(f"sequence modality {bad[0]!r} must be one of {self.modalities} "
                            "with an input shape (T, ...) and no device transform")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def item_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per modality, the shape a dataset item holds (what the collate stacks)."""
        t = self.device_transforms
        return {m: tuple(t[m].item_shape) if m in t else s for m, s in self.input_shapes.items()}

    @property
    def item_dtypes(self) -> dict[str, torch.dtype]:
        return {m: t.item_dtype for m, t in self.device_transforms.items()}

    def finish_batch(self, batch: Batch) -> Batch:
        """Apply the device transforms to a collated batch; absent entries stay zeros."""
        if not self.device_transforms:
            return batch
        inputs = dict(batch.inputs)
        for j, m in enumerate(self.modalities):
            if m in self.device_transforms:
                x = self.device_transforms[m].finish(inputs[m])
                present = batch.availability[:, j].view(-1, *([1] * (x.dim() - 1)))
                inputs[m] = torch.where(present, x, torch.zeros((), dtype=x.dtype,
                                                                 device=x.device))
        return Batch(inputs=inputs, availability=batch.availability, target=batch.target,
                     lengths=batch.lengths)


@dataclass(frozen=True)
class DatasetDefaults:
    """What runs on a dataset use where the user gives nothing (the user's values always win,
    key by key inside a mapping such as ``optim``); ``dmrnet benchmark`` applies them.

    Attributes:
        epochs: training epochs (None: scaled to the data's size).
        batch_size: samples per batch (None: 64).
        model: module settings (``encoder``, ``metric``, ``architecture``, ``optim``, ...).
        options: method options, given to each method of a run that has them.
    """

    epochs: int | None = None
    batch_size: int | None = None
    model: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def model_under(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The module settings ``given`` over these defaults; where both hold a mapping (e.g.
        ``optim``, ``encoder_kwargs``), key by key (one level)."""
        out = dict(self.model)
        for key, value in given.items():
            old = out.get(key)
            both = isinstance(old, Mapping) and isinstance(value, Mapping)
            out[key] = {**old, **value} if both else value
        return out

    def options_for(self, known: Iterable[str]) -> dict[str, Any]:
        """The default method options among the option names ``known``."""
        names = set(known)
        return {k: v for k, v in self.options.items() if k in names}


class DatasetRegistry(Registry[Callable[..., SplitData]]):
    """Data sources by name, each registered with its defaults at its definition:
    ``@DATASETS.register("name", DatasetDefaults(epochs=10))`` on a function
    ``(root, modalities, seed, **kwargs) -> SplitData``."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        super().__init__(kind, builtins)
        self._defaults: dict[str, DatasetDefaults] = {}

    def register(self, name: str, defaults: DatasetDefaults | None = None
                 ) -> Callable[[Callable[..., SplitData]], Callable[..., SplitData]]:
        if defaults is not None and not isinstance(defaults, DatasetDefaults):
            raise DataError(f"dataset {name!r}: defaults must be a DatasetDefaults; got "
                            f"{type(defaults).__name__}")
        deco = super().register(name)

        def keep(fn: Callable[..., SplitData]) -> Callable[..., SplitData]:
            deco(fn)
            self._defaults[name] = defaults or DatasetDefaults()
            return fn

        return keep

    def unregister(self, name: str) -> None:
        super().unregister(name)
        self._defaults.pop(name, None)

    def defaults(self, name: str) -> DatasetDefaults:
        """The defaults ``name`` was registered with (the registry's error if unknown)."""
        self.get(name)
        return self._defaults[name]


DATASETS = DatasetRegistry("dataset", builtins="dmrnet.data")
"""Registered data sources (see :class:`DatasetRegistry`); plugins add their own."""
