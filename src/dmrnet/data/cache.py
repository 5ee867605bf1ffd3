"""Decoded samples kept in memory for a run, so every epoch after the first reads no file.

A dataset whose items come from files (or from a costly generator) splits each item into a
deterministic part, *decoding* (a .npy array, an image's pixels, a WAV's samples, a rendered
scene), and a random part (augmentation). With a :class:`SampleCache` attached
(:meth:`CachedDataset.use_cache`), the decoded part is kept under a key that names its file,
and the augmentation runs on it again each epoch: the items are the same values, bit for bit,
as without the cache, with the same random draws in the same order.

Modes (``--cache`` / ``data.cache``): "auto" keeps samples up to a budget of a quarter of the
memory available when the run starts (the rest are read each epoch as before); "memory" keeps
every sample; "none" keeps nothing. One cache serves every split and, in a benchmark, every
method and seed, since its keys are files, not positions in a split.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from dmrnet.errors import ConfigError

CACHE_MODES = ("auto", "memory", "none")
"""What ``--cache`` takes: a memory budget ("auto"), no limit ("memory"), or off ("none")."""

AUTO_FRACTION = 0.25
"""The share of available memory (at the start of the run) that "auto" may fill."""

T = TypeVar("T")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``, else the
    physical pages free), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def nbytes(value: Any) -> int:
    """Memory held by a decoded sample: tensors, arrays, bytes and nested tuples/lists/dicts
    of them (other objects count a nominal 64 bytes)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, tuple | list):
        return 64 + sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return 64 + sum(nbytes(v) for v in value.values())
    return 64


class SampleCache:
    """Decoded samples by key, up to ``budget`` bytes (None: no limit).

    A sample that would pass the budget is not kept (it is decoded again when asked for);
    ``hits`` / ``misses`` / ``bytes`` / ``skipped`` say how it went. Values are handed out as
    they are: the code that uses them must not change them in place. Safe to share between
    threads; a worker process of a DataLoader fills a copy of its own (pickled empty).
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self._store: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.skipped = 0  # samples decoded but not kept: the budget was full

    @classmethod
    def for_mode(cls, mode: str, workers: int = 0) -> SampleCache | None:
        """The cache for a ``--cache`` mode (None for "none"); with DataLoader ``workers``
        each worker's copy gets an equal share of the "auto" budget."""
        check_cache_mode(mode)
        if mode == "none":
            return None
        if mode == "memory":
            return cls(None)
        free = available_memory()
        budget = int((free if free is not None else 2**31) * AUTO_FRACTION)
        return cls(budget // max(1, workers))

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value stored under ``key``, or ``load()`` (kept if the budget allows)."""
        with self._lock:
            if key in self._store:
                self.hits += 1
                return self._store[key]
        value = load()
        size = nbytes(value)
        with self._lock:
            self.misses += 1
            if key not in self._store:
                if self.budget is None or self.bytes + size <= self.budget:
                    self._store[key] = value
                    self.bytes += size
                else:
                    self.skipped += 1
        return value

    def __len__(self) -> int:
        return len(self._store)

    def __getstate__(self) -> dict[str, Any]:  # worker processes start with an empty copy
        return {"budget": self.budget}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["budget"])  # type: ignore[misc]

    def describe(self) -> str:
        """One line for the run's output, e.g. "1200 samples, 14.2 MB in memory"."""
        line = f"{len(self)} samples, {self.bytes / 1e6:.1f} MB in memory"
        if self.skipped:
            line += f"; {self.skipped} reads past the budget of {self.budget / 1e6:.0f} MB"
        return line


def check_cache_mode(mode: str) -> None:
    """A one-line error for a mode that is not one of :data:`CACHE_MODES`."""
    if mode not in CACHE_MODES:
        raise ConfigError(f"cache {mode!r} is not one of {list(CACHE_MODES)} (auto: keep "
                          "decoded samples in memory up to a quarter of the free memory)")


@runtime_checkable
class CachedDataset(Protocol):
    """A dataset that can keep its decoded samples in a :class:`SampleCache`."""

    def use_cache(self, cache: SampleCache | None) -> None:
        """Read decoded samples through ``cache`` from now on (None: read every time)."""
        ...
