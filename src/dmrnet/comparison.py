"""Differences between methods that account for seed noise and test-sample noise.

A benchmark's verdict compares two methods run on the same seeds (the same data split per
seed). The mean over n seeds of the paired differences, d = mean_s (a_s - b_s), is uncertain
for two reasons:

- **seeds**: another seed trains other models (and, for most datasets, draws another split);
- **test samples**: a test set is one sample of the data a user will meet.

Where each seed draws its own split, the spread of the per-seed differences (s^2) holds both.
Where the seeds share one test set (a dataset's fixed test list), its sampling noise is the
same in every seed and s^2 misses it: that part is the covariance c of the seeds' test-sample
noise, estimated by a paired bootstrap of the test samples (the same resample for both methods,
every subset and every seed): c = (v_joint - v_each / n) * n / (n - 1), with v_joint the
bootstrap variance of d and v_each the mean of each seed's own; about 0 for independent test
sets, each seed's whole variance for one fixed set scored by identical models.

The 95 % interval is d +- t(0.975, n - 1) * sqrt(s^2 / n + max(c, 0)): Student's t, not a
bootstrap over seeds (which, over three seeds, named a winner whenever the three differences
shared a sign: a quarter of the time for two identical methods). A verdict names a winner only
when the interval excludes 0, with at least 2 seeds. ``benchmarks/aa_check.py`` measures how
often it names one between two identical methods.
"""

from __future__ import annotations

import functools
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


def default_seed_count(widening: float = 1.5) -> int:
    """The fewest seeds whose interval is at most ``widening`` times as wide as it would be
    if the seed variance were known (Student's t(0.975, n - 1) <= widening x 1.96): 5. With
    3 seeds the interval is 2.2 times as wide (t = 4.30): its resolution, t / sqrt(n), is
    twice that of 5 seeds."""
    n = MIN_SEEDS
    while t975(n - 1) > widening * 1.959964:
        n += 1
    return n


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
    test_sd: float | None  # sqrt of the shared test-sample variance; None: not measured

    @property
    def clear(self) -> bool:
        """Whether the interval excludes 0 (a winner can be named)."""
        return self.seeds >= MIN_SEEDS and (self.lo > 0 or self.hi < 0)


@functools.lru_cache(maxsize=4)
def _resample_counts(n: int, seed: int, resamples: int) -> np.ndarray:
    """(resamples, n) counts of each of n samples in a bootstrap resample (read-only; the
    same for every comparison of one benchmark, so made once)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    counts.flags.writeable = False
    return counts


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


def shared_test_noise(per_seed: Sequence[tuple[Samples, Samples]], value: Value,
                      reduce: Callable[[dict[str, np.ndarray]], np.ndarray],
                      resamples: int = RESAMPLES, seed: int = 0,
                      cache: dict[int, dict[str, np.ndarray]] | None = None) -> float | None:
    """The variance c of the module docstring: test-sample noise shared by the seeds, which
    the spread of the per-seed differences does not show (0 when the seeds' test sets differ
    in size, so cannot be one set). ``per_seed``: each seed's (a's, b's) test samples;
    ``reduce`` turns per-subset values into one (e.g. their mean). None when a run has no
    test samples recorded. ``cache``: one dict for the calls of one comparison over the same
    samples objects (each run's draws are then computed once, not once per pair)."""
    if not per_seed or any(not a or not b for a, b in per_seed):
        return None
    sizes = [1 + max(int(s["ids"].max()) for s in a.values()) for a, _ in per_seed]
    n = len(per_seed)
    if len(set(sizes)) > 1 or n < 2:
        return 0.0
    counts = _resample_counts(sizes[0], seed, resamples)

    def run_draws(samples: Samples) -> dict[str, np.ndarray]:
        if cache is None:
            return _subset_draws(samples, counts, value)
        key = id(samples)
        if key not in cache:
            cache[key] = _subset_draws(samples, counts, value)
        return cache[key]

    draws = np.stack([reduce(run_draws(a)) - reduce(run_draws(b)) for a, b in per_seed])
    v_joint = float(np.nanvar(draws.mean(axis=0)))
    v_each = float(np.nanmean(np.nanvar(draws, axis=1)))
    return max(0.0, (v_joint - v_each / n) * n / (n - 1))


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


def difference(a: Sequence[float], b: Sequence[float], shared: float | None = None
               ) -> Difference:
    """a - b over paired seeds, with the interval of the module docstring (``shared``: the
    test-sample variance the seeds share, :func:`shared_test_noise`; None: not measured)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    test_sd = None if shared is None else math.sqrt(shared)
    if n < MIN_SEEDS:
        return Difference(mean, math.nan, math.nan, n, math.nan, test_sd)
    seed_var = float(d.var(ddof=1))
    half = t975(n - 1) * math.sqrt(seed_var / n + (shared or 0.0))
    return Difference(mean, mean - half, mean + half, n, math.sqrt(seed_var), test_sd)
