"""The batch contract: a dict of modality tensors plus a boolean availability mask (B, M).

Absence is data, not an error: a dataset item may omit a modality, and :class:`MultimodalCollate`
zero-fills it and marks it unavailable. Every method takes ``(inputs, availability)``, and
``lengths`` where a modality holds variable-length sequences: those are padded with zeros to the
modality's declared (T, D) and each sample's number of real steps travels beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dmrnet.errors import DMRNetError
from dmrnet.subsets import SubsetError

VOCABULARY_SIZE = 20000
"""Token-id sequences (a sequence modality of shape (T,), e.g. text) hold whole numbers
0..VOCABULARY_SIZE-1 (0 = padding): what the built-in tokenizer gives and the ``tokens``
encoder's embedding holds by default."""


class BatchError(DMRNetError):
    """A batch or dataset item that does not fit the declared modalities."""


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        inputs: modality name -> tensor (B, *shape); absent entries are zeros.
        availability: (B, M) bool, in the order of ``modalities``.
        target: (B,) long class labels (or (B, H, W) for dense tasks), or None when unlabelled.
        lengths: sequence modality -> (B,) long, each sample's real steps (0 where absent);
            its tensor in ``inputs`` is (B, T, D), zero after those steps. Empty when no
            modality is a variable-length sequence.
    """

    inputs: dict[str, Tensor]
    availability: Tensor
    target: Tensor | None = None
    lengths: dict[str, Tensor] = field(default_factory=dict)

    @property
    def lengths_or_none(self) -> dict[str, Tensor] | None:
        """``lengths``, or None when there are none (what a network's forward takes)."""
        return self.lengths or None

    def __len__(self) -> int:
        return int(self.availability.shape[0])


def check_inputs(
    inputs: Mapping[str, Tensor],
    availability: Tensor,
    modalities: Sequence[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check_finite: bool = True,
    dtype: torch.dtype | None = None,
    lengths: Mapping[str, Tensor] | None = None,
) -> None:
    """Raise a :class:`BatchError` naming the problem if a batch breaks the contract.

    Args:
        inputs: modality -> (B, *shape). Every declared modality must be present (zero-filled
            when absent); unknown names are refused.
        availability: (B, M) bool.
        modalities: declared modality names (length M).
        input_shapes: per-modality expected shape without the batch axis; None skips the check.
        check_finite: refuse NaN/inf in the rows where a modality is marked available.
        dtype: the floating dtype the model computes in (None skips the check).
        lengths: sequence modality -> (B,) real steps per sample, each in 1..T where the
            modality is available (see :class:`Batch`).
    """
    mods = list(modalities)
    if not isinstance(inputs, Mapping):
        raise BatchError(f"inputs must map each modality {mods} to a (B, ...) tensor; got "
                         f"{type(inputs).__name__}")
    unknown = [k for k in inputs if k not in mods]
    if unknown:
        raise BatchError(f"modality {unknown[0]!r} is not one of {mods}; rename or drop it")
    missing = [m for m in mods if m not in inputs]
    if missing:
        raise BatchError(
            f"the batch has no tensor for modality {missing[0]!r}; collate with "
            "MultimodalCollate (it zero-fills absent modalities) or pass zeros and mark the "
            "modality unavailable"
        )
    if not isinstance(availability, Tensor) or availability.dim() != 2:
        raise BatchError(
            f"availability must be a (B, {len(mods)}) bool tensor; got "
            f"{getattr(availability, 'shape', type(availability).__name__)}"
        )
    batch, m = availability.shape
    if m != len(mods):
        raise BatchError(
            f"availability has {m} columns but there are {len(mods)} modalities {mods}"
        )
    if batch == 0:
        raise BatchError("empty batch: it holds no sample")
    unknown = [k for k in (lengths or {}) if k not in mods]
    if unknown:
        raise BatchError(f"lengths are given for {unknown[0]!r}, not one of {mods}")
    empty = ~availability.bool().any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten()[:5].tolist()
        raise SubsetError(
            f"sample(s) {rows} have no available modality; every sample needs at least one of "
            f"{mods}"
        )
    for j, name in enumerate(mods):
        x = inputs[name]
        if not isinstance(x, Tensor):
            raise BatchError(f"modality {name!r} must be a tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] != batch:
            raise BatchError(
                f"modality {name!r} has batch size {x.shape[0] if x.dim() else 'none'} but "
                f"availability has {batch} rows"
            )
        if input_shapes is not None and name in input_shapes:
            expected = tuple(int(s) for s in input_shapes[name])
            if tuple(x.shape[1:]) != expected:
                raise BatchError(
                    f"modality {name!r} has shape {tuple(x.shape[1:])} per sample, expected "
                    f"{expected}"
                )
        if dtype is not None and x.dtype != dtype:
            raise BatchError(
                f"modality {name!r} is {x.dtype} but the model computes in {dtype}; convert it "
                f"(e.g. x.to({dtype}))"
            )
        rows = availability[:, j].bool()
        if lengths is not None and name in lengths:
            check_lengths(name, lengths[name], x, rows)
        if check_finite and x.is_floating_point() and bool(rows.any()):
            bad = ~torch.isfinite(x[rows].reshape(int(rows.sum()), -1)).all(dim=1)
            if bool(bad.any()):
                first = int(rows.nonzero().flatten()[bad.nonzero().flatten()[0]])
                raise BatchError(
                    f"modality {name!r} holds NaN or inf (first in sample {first}); clean the "
                    "data or mark that modality unavailable for the sample"
                )


def check_lengths(name: str, lengths: Tensor, x: Tensor, available: Tensor) -> None:
    """Raise a :class:`BatchError` unless ``lengths`` (B,) are whole numbers in 1..T for the
    available rows of a (B, T, ...) sequence ``x`` (absent rows may hold 0)."""
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.is_floating_point() \
            or lengths.shape[0] != x.shape[0]:
        raise BatchError(f"lengths of modality {name!r} must be a ({x.shape[0]},) integer "
                         f"tensor; got {getattr(lengths, 'shape', type(lengths).__name__)}")
    if x.dim() < 2:
        raise BatchError(f"modality {name!r} has lengths but is not a sequence (B, T, ...); "
                         f"got {tuple(x.shape)}")
    real = lengths[available]
    if real.numel() and (int(real.min()) < 1 or int(real.max()) > x.shape[1]):
        bad = int(real.min()) if int(real.min()) < 1 else int(real.max())
        raise BatchError(f"modality {name!r} has a sample of length {bad}; lengths must be "
                         f"1..{x.shape[1]} (its padded length T) where it is available")


def refuse_lengths(lengths: Mapping[str, Tensor] | None, network: str) -> None:
    """Raise a :class:`BatchError` if a network that reads fixed-size inputs only is given
    variable-length sequences."""
    if lengths:
        raise BatchError(f"{network} reads fixed-size inputs; modality {next(iter(lengths))!r} "
                         "holds variable-length sequences: use a late-fusion method (e.g. "
                         "dmrnet, baseline) with a sequence encoder")


def check_targets(target: Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise a :class:`BatchError` if class labels are not integers in 0..num_classes-1."""
    if target.is_floating_point() or target.dtype == torch.bool:
        raise BatchError(f"targets must be integer class labels; got dtype {target.dtype}")
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        bad = int(valid.max()) if int(valid.max()) >= num_classes else int(valid.min())
        raise BatchError(
            f"target label {bad} is outside 0..{num_classes - 1}; the model was built for "
            f"{num_classes} classes"
        )


def stats_view(stats: Tensor, shape: Sequence[int]) -> Tensor:
    """Statistics shaped to broadcast over a sample of ``shape``: one per element, or (for a
    sequence (T, D, ...)) one per step's element, the same for every step."""
    shape = tuple(shape)
    if stats.numel() == math.prod(shape):
        return stats.view(shape)
    return stats.view(shape[1:])


class MultimodalCollate:
    """Collate dataset items into a :class:`Batch`, zero-filling absent modalities.

    An item is a mapping ``{"inputs": {modality: Tensor}, "target": int | Tensor}``; a modality
    that is missing from ``inputs`` (or is None) is absent for that sample.

    Args:
        modalities: declared modality names, in order.
        input_shapes: per-modality shape without the batch axis (used for zero-filling).
        dtype: the dtype inputs are converted to (float32, what models compute in).
        dtypes: per-modality exceptions, e.g. uint8 frames that are normalised on the device.
        sequences: modalities whose items are variable-length sequences (T_i, ...) with
            1 <= T_i <= T of their shape (T, ...): each is padded with zeros to T and its
            lengths go in :attr:`Batch.lengths`.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        dtype: torch.dtype = torch.float32,
        dtypes: Mapping[str, torch.dtype] | None = None,
        sequences: Sequence[str] = (),
    ) -> None:
        self.modalities = list(modalities)
        self.dtype = dtype
        self.dtypes = {m: (dtypes or {}).get(m, dtype) for m in self.modalities}
        missing = [m for m in self.modalities if m not in input_shapes]
        if missing:
            raise BatchError(f"no input shape given for modality {missing[0]!r}")
        self.input_shapes = {m: tuple(int(s) for s in input_shapes[m]) for m in self.modalities}
        unknown = [m for m in sequences if m not in self.modalities]
        if unknown:
            raise BatchError(f"sequence modality {unknown[0]!r} is not one of {self.modalities}")
        self.sequences = [m for m in self.modalities if m in set(sequences)]

    def __call__(self, items: Sequence[Mapping[str, Any]] | Batch) -> Batch:
        if isinstance(items, Batch):  # a dataset that fetches whole batches made it already
            return self._checked(items)
        if len(items) == 0:
            raise BatchError("empty batch: no item to collate")
        batch = len(items)
        availability = torch.zeros(batch, len(self.modalities), dtype=torch.bool)
        inputs: dict[str, Tensor] = {}
        lengths: dict[str, Tensor] = {}
        for j, name in enumerate(self.modalities):
            shape = self.input_shapes[name]
            present = [i for i, it in enumerate(items) if it["inputs"].get(name) is not None]
            out = torch.zeros((batch, *shape), dtype=self.dtypes[name])
            steps = torch.zeros(batch, dtype=torch.long) if name in self.sequences else None
            for i in present:
                x = torch.as_tensor(items[i]["inputs"][name])
                if steps is not None:
                    if x.dim() != len(shape) or tuple(x.shape[1:]) != shape[1:] or \
                            not 1 <= x.shape[0] <= shape[0]:
                        raise BatchError(
                            f"modality {name!r} of item {i} has shape {tuple(x.shape)}, "
                            f"expected a sequence (T{''.join(f', {d}' for d in shape[1:])}) with "
                            f"1 <= T <= {shape[0]}")
                    out[i, : x.shape[0]] = x
                    steps[i] = x.shape[0]
                    continue
                if tuple(x.shape) != shape:
                    raise BatchError(
                        f"modality {name!r} of item {i} has shape {tuple(x.shape)}, expected "
                        f"{shape}"
                    )
                out[i] = x
            availability[present, j] = True
            inputs[name] = out
            if steps is not None:
                lengths[name] = steps
        for i, it in enumerate(items):
            unknown = [k for k in it["inputs"] if k not in self.modalities]
            if unknown:
                raise BatchError(
                    f"item {i} has modality {unknown[0]!r}, not one of {self.modalities}"
                )
        targets = [it.get("target") for it in items]
        target = None
        if all(t is not None for t in targets):
            target = torch.stack([torch.as_tensor(t) for t in targets])
        elif any(t is not None for t in targets):
            raise BatchError("some items have a target and some do not; label all or none")
        return Batch(inputs=inputs, availability=availability, target=target, lengths=lengths)

    def _checked(self, batch: Batch) -> Batch:
        """A batch a dataset made whole (``__getitems__``), held to this collate's contract."""
        if list(batch.inputs) != self.modalities:
            raise BatchError(f"the dataset's batch has modalities {list(batch.inputs)}, "
                             f"expected {self.modalities}")
        for name, x in batch.inputs.items():
            if tuple(x.shape[1:]) != self.input_shapes[name] or x.dtype != self.dtypes[name]:
                raise BatchError(f"modality {name!r} of the dataset's batch is {x.dtype} "
                                 f"{tuple(x.shape[1:])}, expected {self.dtypes[name]} "
                                 f"{self.input_shapes[name]}")
        if sorted(batch.lengths) != sorted(self.sequences):
            raise BatchError(f"the dataset's batch has lengths for {sorted(batch.lengths)}, "
                             f"expected for the sequence modalities {self.sequences}")
        return batch
