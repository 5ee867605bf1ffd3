"""Differences between methods that account for seed noise and test-sample noise.

A benchmark's verdict compares two methods run on the same seeds (same data split per seed).
The difference of the mean over seeds, d = mean_s (a_s - b_s), is uncertain for two reasons:

- **seeds**: training another seed gives another model (variance s^2 / n over n seeds);
- **test samples**: the test set is one sample of the data a user will meet (variance
  ``v_test``: a paired bootstrap of the test samples, the same resample for both methods and
  every subset; for every seed alike when the seeds' test sets have the same size, which is
  right both when they share the samples and when they do not).

The 95 % interval is d +- t(0.975, n - 1) * sqrt(s^2 / n + v_test): Student's t for the
seeds (a bootstrap over three seeds declared a winner whenever the three differences shared
a sign, a quarter of the time for two identical methods), widened by the test-sample
variance. A verdict names a winner only when the interval excludes 0, with at least 2 seeds.
``benchmarks/aa_check.py`` measures how often it names one between two identical methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student's t 0.975 quantile for 1..30 degrees of freedom."""

RESAMPLES = 2000
"""Bootstrap resamples of the test samples (fixed random generator: the same results twice)."""

MIN_SEEDS = 2


def t975(df: int) -> float:
    """Student's t 0.975 quantile (a table to 30 degrees of freedom, then the Cornish-Fisher
    expansion, within 0.001 of the exact value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


Samples = Mapping[str, Mapping[str, np.ndarray]]
"""One run's test samples per subset name: ``ids`` (N_s,) and ``rows`` (N_s, k), the task
metric's additive statistics (:class:`dmrnet.metrics.TaskMetric`)."""

Value = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Difference:
    """a - b averaged over the shared seeds, its 95 % interval and the verdict's inputs."""

    diff: float
    lo: float
    hi: float
    seeds: int
    seed_sd: float  # standard deviation of the per-seed differences
    test_sd: float | None  # the test-sample standard error of ``diff``; None: not measured

    @property
    def clear(self) -> bool:
        """Whether the interval excludes 0 (a winner can be named)."""
        return self.seeds >= MIN_SEEDS and (self.lo > 0 or self.hi < 0)


def _resample_counts(n: int, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(resamples, n) counts of each of n samples in a bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def _subset_draws(samples: Samples, counts: np.ndarray, value: Value) -> dict[str, np.ndarray]:
    """The metric of every subset under each resample: subset -> (resamples,)."""
    out = {}
    n = counts.shape[1]
    for subset, s in samples.items():
        ids = s["ids"]
        every = len(ids) == n and ids[0] == 0 and ids[-1] == n - 1  # ids are 0..n-1 in order
        w = counts if every else counts[:, ids]  # (R, N_s): each of its samples' weight
        out[subset] = value(w @ s["rows"], w.sum(axis=1))
    return out


def sample_draws(per_seed: Sequence[tuple[Samples, Samples]], value: Value,
                 reduce: Callable[[dict[str, np.ndarray]], np.ndarray],
                 resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray | None:
    """(resamples,) bootstrap draws over test samples of mean_s (reduce(a_s) - reduce(b_s)),
    ``reduce`` turning per-subset values into one (e.g. their mean). None when a run has no
    test samples recorded."""
    if not per_seed or any(not a or not b for a, b in per_seed):
        return None
    sizes = [1 + max(int(s["ids"].max()) for s in a.values()) for a, _ in per_seed]
    rng = np.random.default_rng(seed)
    shared = _resample_counts(sizes[0], rng, resamples) if len(set(sizes)) == 1 else None
    total = np.zeros(resamples)
    for (a, b), n in zip(per_seed, sizes, strict=True):
        counts = shared if shared is not None else _resample_counts(n, rng, resamples)
        total += reduce(_subset_draws(a, counts, value)) - reduce(_subset_draws(b, counts, value))
    return total / len(per_seed)


def reducer(key: str, higher_is_better: bool) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Per-subset draws -> the mean over subsets, the worst subset, or one subset's."""
    def mean(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.nanmean(np.stack(list(d.values())), axis=0)

    def worst(d: dict[str, np.ndarray]) -> np.ndarray:
        stack = np.stack(list(d.values()))
        return np.nanmin(stack, axis=0) if higher_is_better else np.nanmax(stack, axis=0)

    if key == "mean":
        return mean
    if key == "worst":
        return worst
    return lambda d: d[key]


def difference(a: Sequence[float], b: Sequence[float], test_draws: np.ndarray | None = None
               ) -> Difference:
    """a - b over paired seeds, with the interval of the module docstring (``test_draws``:
    bootstrap draws of the mean difference over test samples; None leaves that part out)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    seed_var = float(d.var(ddof=1)) if n >= 2 else math.nan
    test_var = float(np.nanvar(test_draws)) if test_draws is not None else None
    if n < MIN_SEEDS:
        return Difference(mean, math.nan, math.nan, n, math.nan,
                          None if test_var is None else math.sqrt(test_var))
    half = t975(n - 1) * math.sqrt(seed_var / n + (test_var or 0.0))
    return Difference(mean, mean - half, mean + half, n, math.sqrt(seed_var),
                      None if test_var is None else math.sqrt(test_var))
