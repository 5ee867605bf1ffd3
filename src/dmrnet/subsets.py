"""Modality subsets ("combinations"): enumeration, names, masks and per-sample sampling.

A subset of M modalities is represented three ways:

- a name, member names joined by ``+`` in modality order (``"fac+pix"``);
- a boolean mask of shape ``(M,)``;
- an index into :attr:`SubsetSpace.subsets`, a stable order: by size, then lexicographic in
  modality order (``a, b, c, a+b, a+c, b+c, a+b+c``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor

from dmrnet.errors import DMRNetError

SEP = "+"


class SubsetError(DMRNetError):
    """A subset name, mask or availability row that cannot be used."""


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):  # would be read as one modality per character
        raise SubsetError(f"modalities must be a list of names; got the text {modalities!r} "
                          f"(write [{modalities!r}])")
    mods = tuple(modalities)
    if not mods:
        raise SubsetError("at least one modality name is needed; got an empty list")
    for m in mods:
        if not isinstance(m, str) or not m or SEP in m or "/" in m or "." in m:
            raise SubsetError(
                f"modality name {m!r} is not usable: names are non-empty strings without "
                f"'{SEP}', '/' or '.'"
            )
    if len(set(mods)) != len(mods):
        raise SubsetError(f"modality names must be unique; got {list(mods)}")
    return mods


class SubsetSpace:
    """All 2^M − 1 non-empty subsets of ``modalities``.

    >>> space = SubsetSpace(["rgb", "depth", "ir"])
    >>> space.names[:4]
    ['rgb', 'depth', 'ir', 'rgb+depth']
    """

    def __init__(self, modalities: Sequence[str]) -> None:
        mods = _check_modalities(modalities)
        self.modalities: tuple[str, ...] = mods
        self.subsets: tuple[tuple[int, ...], ...] = tuple(
            combo for k in range(1, len(mods) + 1) for combo in combinations(range(len(mods)), k)
        )
        self._code_to_index = {
            sum(1 << m for m in members): i for i, members in enumerate(self.subsets)
        }
        table = torch.full((1 << len(mods),), -1, dtype=torch.long)
        for code, i in self._code_to_index.items():
            table[code] = i
        self._code_to_index_tensor = table

    def __repr__(self) -> str:
        return f"SubsetSpace({list(self.modalities)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubsetSpace) and other.modalities == self.modalities

    def __hash__(self) -> int:
        return hash(self.modalities)

    # --- sizes and names -------------------------------------------------------------------
    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def __len__(self) -> int:
        return len(self.subsets)

    @property
    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self))]

    @property
    def full_index(self) -> int:
        """Index of the subset holding every modality (the last one)."""
        return len(self) - 1

    def name(self, index: int) -> str:
        return SEP.join(self.modalities[m] for m in self.subsets[index])

    def index(self, subset: str | Sequence[str] | Sequence[bool] | Tensor) -> int:
        """Index of a subset given by name (``"a+b"``), list of names, or boolean mask (M,)."""
        mask = self.mask(subset)
        code = int((mask.long() << torch.arange(self.num_modalities)).sum())
        return self._code_to_index[code]

    def parse(self, name: str) -> tuple[str, ...]:
        """Split a subset name into member names, checking each one."""
        if not isinstance(name, str) or not name.strip():
            raise SubsetError(
                "empty subset: a subset needs at least one modality, e.g. "
                f"{self.modalities[0]!r}"
            )
        parts = [p.strip() for p in name.split(SEP)]
        for p in parts:
            if p not in self.modalities:
                raise SubsetError(
                    f"modality {p!r} in subset {name!r} is not one of {list(self.modalities)}"
                )
        if len(set(parts)) != len(parts):
            raise SubsetError(f"subset {name!r} names a modality twice")
        return tuple(parts)

    def mask(self, subset: str | int | Sequence[str] | Sequence[bool] | Tensor) -> Tensor:
        """Boolean mask of shape (M,) for a subset given by name, index, names or mask."""
        if isinstance(subset, int) and not isinstance(subset, bool):
            if not 0 <= subset < len(self):
                raise SubsetError(f"subset index {subset} is outside 0..{len(self) - 1}")
            out = torch.zeros(self.num_modalities, dtype=torch.bool)
            out[list(self.subsets[subset])] = True
            return out
        if isinstance(subset, str):
            members = self.parse(subset)
            return torch.tensor([m in members for m in self.modalities], dtype=torch.bool)
        if isinstance(subset, Tensor) or (
            len(subset) > 0 and all(isinstance(v, bool) for v in subset)
        ):
            out = torch.as_tensor(subset, dtype=torch.bool).flatten()
            if out.numel() != self.num_modalities:
                raise SubsetError(
                    f"a subset mask needs {self.num_modalities} entries "
                    f"({list(self.modalities)}); got {out.numel()}"
                )
            if not bool(out.any()):
                raise SubsetError("empty subset: the mask selects no modality")
            return out
        return self.mask(SEP.join(subset))

    def masks(self) -> Tensor:
        """All subset masks, shape (S, M) with S = 2^M − 1, in index order."""
        out = torch.zeros(len(self), self.num_modalities, dtype=torch.bool)
        for i, members in enumerate(self.subsets):
            out[i, list(members)] = True
        return out

    def indices_of(self, masks: Tensor) -> Tensor:
        """Subset index of each row of a boolean mask batch (B, M) -> (B,) long.

        Raises if a row is empty.
        """
        masks = masks.bool()
        if masks.dim() != 2 or masks.shape[1] != self.num_modalities:
            raise SubsetError(
                f"availability must have shape (B, {self.num_modalities}); got {tuple(masks.shape)}"
            )
        empty = ~masks.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise SubsetError(
                f"sample(s) {rows} have no available modality; every sample needs at least one "
                f"of {list(self.modalities)}"
            )
        weights = 1 << torch.arange(self.num_modalities, device=masks.device)
        codes = (masks.long() * weights).sum(dim=1)
        return self._code_to_index_tensor.to(masks.device)[codes]


class SubsetSampler:
    """Draws one training subset per sample, never using a modality the sample lacks.

    Args:
        space: the subset space.
        weights: relative weight of each subset, by name, or as a sequence of length S.
            ``None`` = uniform over all non-empty subsets (the paper's protocol). By name,
            ``"*"`` sets the weight of every subset not named; without it they get 0 (and
            :attr:`unnamed` lists them, so callers can say so).

    For each sample, the weights are restricted to subsets contained in its availability and
    renormalised. A sample for which every allowed subset has weight 0 (e.g. a "full only"
    sampler and a sample that lacks a modality) uses exactly what it has.
    """

    def __init__(
        self, space: SubsetSpace, weights: dict[str, float] | Sequence[float] | None = None
    ) -> None:
        self.space = space
        w = torch.ones(len(space), dtype=torch.float64)
        self.unnamed: list[str] = []
        if isinstance(weights, dict):
            default = float(weights.get("*", 0.0))
            w = torch.full((len(space),), default, dtype=torch.float64)
            named = {space.index(name) for name in weights if name != "*"}
            for name, value in weights.items():
                if name != "*":
                    w[space.index(name)] = float(value)
            if "*" not in weights:
                self.unnamed = [n for i, n in enumerate(space.names) if i not in named]
        elif weights is not None:
            w = torch.as_tensor(list(weights), dtype=torch.float64)
            if w.numel() != len(space):
                raise SubsetError(
                    f"subset weights need one value per subset ({len(space)}); got {w.numel()}"
                )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise SubsetError("subset weights must be finite, non-negative and not all zero")
        self.weights = w.float()
        self._masks = space.masks()

    def sample(self, availability: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw subsets for a batch.

        Args:
            availability: (B, M) bool, what each sample has.
        Returns:
            (B, M) bool masks of the drawn subsets, each contained in its row of availability.
        """
        availability = availability.bool()
        self.space.indices_of(availability)  # validates shape and non-empty rows
        device = availability.device
        masks = self._masks.to(device)
        # allowed[b, s]: subset s uses only modalities that sample b has
        allowed = ~(masks.unsqueeze(0) & ~availability.unsqueeze(1)).any(dim=2)
        probs = allowed.float() * self.weights.to(device)
        total = probs.sum(dim=1, keepdim=True)
        fallback = total.squeeze(1) <= 0
        probs = torch.where(total > 0, probs / total.clamp_min(1e-12), probs)
        probs[fallback] = 1.0  # placeholder row for multinomial; replaced below
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out = masks[drawn]
        if bool(fallback.any()):
            out[fallback] = availability[fallback]
        return out


def subset_totals(subset_index: Tensor, values: Tensor, num_subsets: int) -> tuple[Tensor, Tensor]:
    """Per-subset sum of ``values`` and number of samples, each (S,) float64.

    subset_index: (B,) long; values: (B,). A one-hot mask and a column sum rather than a
    weighted ``torch.bincount``, which has no deterministic CUDA kernel: the sums come out
    bit-identical run after run on every device.
    """
    subsets = torch.arange(num_subsets, device=subset_index.device)
    onehot = (subset_index.view(-1, 1) == subsets).double()  # (B, S)
    sums = (onehot * values.detach().double().view(-1, 1)).sum(dim=0)
    return sums, onehot.sum(dim=0)
