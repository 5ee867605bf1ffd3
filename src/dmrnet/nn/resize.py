"""Bilinear resizing and adaptive average pooling as two small matrix products.

``resize_bilinear`` is the linear map of ``F.interpolate(mode="bilinear",
align_corners=False)`` and ``adaptive_avg_pool`` that of ``F.adaptive_avg_pool2d``, written as
``A_h @ x @ A_w^T`` with constant (out, in) matrices. Why: the built-in CUDA backward kernels of
both ops accumulate with atomicAdd and have no deterministic version, so
``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``) refuses them;
matrix products are deterministic on every device, forward and backward. The maps involved
(pyramid-pooling bins, decoder stages) are small, so the extra arithmetic is negligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=128)
def _bilinear_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, half-pixel centres (PyTorch's rule:
    source = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0; the right neighbour clamped to the
    last pixel)."""
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    left = src.floor()
    frac = (src - left).unsqueeze(1)
    left = left.long().clamp_max(n_in - 1).unsqueeze(1)
    right = (left + 1).clamp_max(n_in - 1)
    cols = torch.arange(n_in).unsqueeze(0)
    weights = (cols == left) * (1.0 - frac) + (cols == right) * frac
    return weights.to(device=device, dtype=dtype)


@lru_cache(maxsize=128)
def _pool_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n_out, n_in) weights of adaptive average pooling: bin i averages
    [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    i = torch.arange(n_out).unsqueeze(1)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    cols = torch.arange(n_in).unsqueeze(0)
    inside = (cols >= start) & (cols < end)
    weights = inside.double() / (end - start).double()
    return weights.to(device=device, dtype=dtype)


def _separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    # (h_out, h) @ (B, C, h, w) @ (w, w_out): batched matmuls, deterministic on every device
    return torch.matmul(torch.matmul(rows, x), cols.t())


def resize_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, *size), as ``F.interpolate(x, size, mode="bilinear",
    align_corners=False)`` (no antialiasing)."""
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    rows = _bilinear_matrix(int(x.shape[-2]), h, x.device, x.dtype)
    cols = _bilinear_matrix(int(x.shape[-1]), w, x.device, x.dtype)
    return _separable(x, rows, cols)


def adaptive_avg_pool(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w) bin averages, as ``F.adaptive_avg_pool2d(x, size)``."""
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rows = _pool_matrix(int(x.shape[-2]), h, x.device, x.dtype)
    cols = _pool_matrix(int(x.shape[-1]), w, x.device, x.dtype)
    return _separable(x, rows, cols)
