"""Fusion of per-modality features into one representation h.

Both fusions take features already zeroed where a modality is missing, plus the availability
mask (B, M), and work on vectors (B, D) and on maps (B, C, H, W) alike (joined on axis 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dmrnet.errors import ConfigError


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(mask.shape[0], *([1] * (like.dim() - 1)))


def zero_missing(features: Sequence[Tensor], availability: Tensor) -> list[Tensor]:
    """Replace the features of unavailable modalities by zeros.

    ``torch.where`` rather than a product, so NaN in an absent modality cannot leak through.
    """
    avail = availability.bool()
    return [
        torch.where(_expand(avail[:, j], f), f, torch.zeros((), dtype=f.dtype, device=f.device))
        for j, f in enumerate(features)
    ]


class ConcatFusion(nn.Module):
    """h = concat(f_1, ..., f_M) on axis 1: (B, sum_m D_m[, H, W])."""

    def __init__(self, feature_dims: Sequence[int]) -> None:
        super().__init__()
        self.out_features = int(sum(feature_dims))

    def forward(self, features: Sequence[Tensor], availability: Tensor) -> Tensor:
        return torch.cat(list(features), dim=1)


class MaskedMeanFusion(nn.Module):
    """h = mean of the available modalities' features: (B, D[, H, W]); needs equal D_m."""

    def __init__(self, feature_dims: Sequence[int]) -> None:
        super().__init__()
        dims = set(int(d) for d in feature_dims)
        if len(dims) != 1:
            raise ConfigError(
                f"mean fusion needs every encoder to give the same feature size; got "
                f"{list(feature_dims)}. Set the encoders' out_features equal or use concat fusion"
            )
        self.out_features = dims.pop()

    def forward(self, features: Sequence[Tensor], availability: Tensor) -> Tensor:
        stacked = torch.stack(list(features), dim=1)  # (B, M, D, ...)
        weights = availability.to(stacked.dtype)
        weights = weights.view(*weights.shape, *([1] * (stacked.dim() - 2)))
        count = weights.sum(dim=1).clamp_min(1.0)
        return (stacked * weights).sum(dim=1) / count


FUSIONS = {"concat": ConcatFusion, "mean": MaskedMeanFusion}


def create_fusion(name: str, feature_dims: Sequence[int]) -> nn.Module:
    if name not in FUSIONS:
        raise ConfigError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return FUSIONS[name](feature_dims)
