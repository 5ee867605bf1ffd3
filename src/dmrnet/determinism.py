"""Which aten ops break ``deterministic=True`` on CUDA, and a recorder that finds them in a step.

Under ``torch.use_deterministic_algorithms(True)`` (what Lightning's ``deterministic=True``
sets) PyTorch raises at the first op that has no deterministic CUDA kernel. A CPU run never
raises, so a CPU-only CI cannot see such an op; :func:`record_ops` lists the aten ops a piece of
code calls (forward and backward), on any device, and :func:`cuda_nondeterministic` names those
that would raise on CUDA (the table follows the docstring of
``torch.use_deterministic_algorithms`` and the kernels' own checks).

:data:`AVOIDED` are ops that are non-deterministic on CUDA by default and only switch to a slower
sorted kernel in deterministic mode (accumulating scatters and index updates): the library keeps
them off its training paths too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


def _always(args: tuple, kwargs: dict) -> bool:
    return True


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _weighted_bincount(args: tuple, kwargs: dict) -> bool:
    return _arg(args, kwargs, 1, "weights") is not None


def _float_cumsum(args: tuple, kwargs: dict) -> bool:
    dtype = _arg(args, kwargs, 2, "dtype") or args[0].dtype
    return dtype.is_floating_point or dtype.is_complex


def _reduced_nll2d(args: tuple, kwargs: dict) -> bool:
    return int(_arg(args, kwargs, 3, "reduction", 1)) != 0  # 0 = "none"


def _prod_scatter_reduce(args: tuple, kwargs: dict) -> bool:
    return _arg(args, kwargs, 4, "reduce") == "prod"


def _accumulating(args: tuple, kwargs: dict) -> bool:
    return bool(_arg(args, kwargs, 3, "accumulate", False))


CUDA_NONDETERMINISTIC: dict[str, Callable[[tuple, dict], bool]] = {
    # backward kernels that accumulate with atomicAdd
    "_adaptive_avg_pool2d_backward": _always,
    "_adaptive_avg_pool3d_backward": _always,
    "adaptive_max_pool2d_backward": _always,
    "avg_pool3d_backward": _always,
    "fractional_max_pool2d_backward": _always,
    "fractional_max_pool3d_backward": _always,
    "max_pool3d_with_indices_backward": _always,
    "upsample_linear1d_backward": _always,
    "upsample_bilinear2d_backward": _always,
    "_upsample_bilinear2d_aa_backward": _always,
    "upsample_bicubic2d_backward": _always,
    "_upsample_bicubic2d_aa_backward": _always,
    "upsample_trilinear3d_backward": _always,
    "reflection_pad1d_backward": _always,
    "reflection_pad2d_backward": _always,
    "reflection_pad3d_backward": _always,
    "grid_sampler_2d_backward": _always,
    "grid_sampler_3d_backward": _always,
    "_ctc_loss_backward": _always,
    # forward ops
    "max_unpool2d": _always,
    "max_unpool3d": _always,
    "nll_loss2d_forward": _reduced_nll2d,
    "histc": _always,
    "bincount": _weighted_bincount,
    "median": lambda args, kwargs: len(args) > 1 or "dim" in kwargs,  # the indices form
    "nanmedian": lambda args, kwargs: len(args) > 1 or "dim" in kwargs,
    "cumsum": _float_cumsum,
    "cumsum_": _float_cumsum,
    "put": _always,
    "put_": _always,
    "scatter_reduce": _prod_scatter_reduce,
    "scatter_reduce_": _prod_scatter_reduce,
}
"""aten op name -> condition on (args, kwargs) under which CUDA has no deterministic kernel."""

AVOIDED: dict[str, Callable[[tuple, dict], bool]] = {
    "scatter_add": _always,
    "scatter_add_": _always,
    "index_add": _always,
    "index_add_": _always,
    "index_reduce": _always,
    "index_reduce_": _always,
    "index_put": _accumulating,
    "index_put_": _accumulating,
    "_index_put_impl_": _accumulating,
}
"""Ops that are non-deterministic on CUDA unless deterministic mode swaps in a sorted kernel."""


@dataclass
class OpLog:
    """The aten ops seen, in call order of first use, with how often each ran."""

    counts: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)  # op -> why


class _Recorder(TorchDispatchMode):
    def __init__(self, log: OpLog) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.__name__.split(".")[0]  # "upsample_bilinear2d_backward.grad_input" -> op
        self.log.counts[name] = self.log.counts.get(name, 0) + 1
        for table, why in ((CUDA_NONDETERMINISTIC, "no deterministic CUDA kernel"),
                           (AVOIDED, "non-deterministic CUDA kernel unless deterministic mode")):
            check = table.get(name)
            if check is not None and name not in self.log.flagged and check(args, kwargs):
                self.log.flagged[name] = why
        return func(*args, **kwargs)


@contextmanager
def record_ops() -> Iterator[OpLog]:
    """Record every aten op run inside the block (autograd's backward included)::

        with record_ops() as ops:
            loss = step(batch); loss.backward()
        assert not ops.flagged, ops.flagged
    """
    log = OpLog()
    with _Recorder(log):
        yield log


def cuda_nondeterministic(fn: Callable[[], Any]) -> dict[str, str]:
    """Run ``fn`` and return the ops it called that would break determinism on CUDA."""
    with record_ops() as log:
        fn()
    return dict(log.flagged)
