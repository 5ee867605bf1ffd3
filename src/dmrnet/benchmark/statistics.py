"""A benchmark's statistics: per-method summaries, paired comparisons with seed and test-sample
noise, the gap to the reference method, and the per-sample test statistics they read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmrnet.benchmark.config import BenchmarkConfig
from dmrnet.comparison import (
    MIN_SEEDS,
    difference,
    reducer,
    shared_test_noise,
)
from dmrnet.methods import (
    get_method,
)

SAMPLES = "test_samples"
"""The benchmark's folder of each run's per-sample test statistics (``METHOD-seedN.npz``)."""


def save_samples(path: Path, samples: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """One run's test samples (:data:`dmrnet.comparison.Samples`) as ``path`` (.npz)."""
    if not samples:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"subsets": np.array(list(samples))}
    for i, s in enumerate(samples.values()):
        arrays[f"ids{i}"], arrays[f"rows{i}"] = s["ids"], s["rows"]
    np.savez_compressed(path, **arrays)


def load_samples(out: Path, runs: Sequence[Mapping[str, Any]]
                 ) -> dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]:
    """(method, seed) -> that run's test samples, for the runs whose file is in ``out``."""
    found = {}
    for r in runs:
        path = out / SAMPLES / f"{r['method']}-seed{r['seed']}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                found[(r["method"], r["seed"])] = {
                    str(name): {"ids": z[f"ids{i}"], "rows": z[f"rows{i}"]}
                    for i, name in enumerate(z["subsets"])}
    return found


def _shared_noise(samples: Mapping[tuple[str, int], Any] | None, value: Any, a: str, b: str,
                  seeds: Sequence[int], key: str, higher_is_better: bool,
                  cache: dict[int, Any] | None = None) -> float | None:
    """The test-sample variance of a - b on ``key`` that ``seeds`` share (None: no samples
    recorded; see :func:`dmrnet.comparison.shared_test_noise`)."""
    if samples is None or value is None:
        return None
    pairs = [(samples.get((a, s)), samples.get((b, s))) for s in seeds]
    if any(x is None or y is None for x, y in pairs):
        return None
    if key not in ("mean", "worst"):  # one subset: its samples alone
        pairs = [({key: x[key]} if key in x else {}, {key: y[key]} if key in y else {})
                 for x, y in pairs]  # type: ignore[index]
        cache = None  # the pairs are new objects
    return shared_test_noise(pairs, value, reducer(key, higher_is_better),  # type: ignore[arg-type]
                             cache=cache)


def paired_comparisons(
    runs: Sequence[dict[str, Any]], higher_is_better: bool,
    samples: Mapping[tuple[str, int], Any] | None = None, value: Any = None,
) -> list[dict[str, Any]]:
    """Every method pair compared seed by seed, on the mean over subsets and the worst subset.

    The interval of a - b accounts for seed noise and, where each run's test samples were
    recorded (``samples``, and the task metric's ``value``), test-sample noise
    (:func:`dmrnet.comparison.difference`); a verdict names a winner only with at least 2
    seeds and an interval that excludes 0. ``resolution`` is the interval's half-width: a
    smaller difference cannot be told from noise with these seeds and test samples.
    """
    by = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = r
    methods = list(by)
    out = []
    cache: dict[int, Any] = {}  # each run's test-sample draws, made once
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            seeds = sorted(set(by[a]) & set(by[b]))
            if not seeds:
                continue
            for key in ("mean", "worst"):
                shared = _shared_noise(samples, value, a, b, seeds, key, higher_is_better,
                                       cache)
                d = difference([by[a][s][key] for s in seeds], [by[b][s][key] for s in seeds],
                               shared)
                better = d.diff > 0 if higher_is_better else d.diff < 0
                verdict = (f"{a if better else b} better" if d.clear else
                           f"too few seeds (< {MIN_SEEDS})" if d.seeds < MIN_SEEDS
                           else "no clear difference")
                out.append({"a": a, "b": b, "on": key, "seeds": d.seeds, "diff": d.diff,
                            "diff_std": d.seed_sd, "test_se": d.test_sd,
                            "ci95": [d.lo, d.hi], "resolution": (d.hi - d.lo) / 2,
                            "noise": "seeds and test samples" if shared is not None
                            else "seeds only (test samples not recorded)",
                            "verdict": verdict})
    return out


def roles(cfg: BenchmarkConfig) -> dict[str, str]:
    """role -> the run's method with it (see ``Method.role``)."""
    return {get_method(m).role: m for m in cfg.methods if get_method(m).role}


def gap_to_reference(runs: Sequence[dict[str, Any]], higher_is_better: bool,
                     roles: Mapping[str, str],
                     samples: Mapping[tuple[str, int], Any] | None = None,
                     value: Any = None) -> dict[str, Any] | None:
    """How far each method is from the reference (the method whose role is "reference") per
    subset, and how much of the baseline's gap it closes. None without a reference in the run.

    Per subset and method: ``gap`` = reference - method (method - reference where lower is
    better), averaged over the seeds both ran; ``closed`` = (baseline gap - method gap) /
    baseline gap where the baseline's gap is > 0 (1 = as good as the reference, 0 = no better
    than the baseline, < 0 = worse). ``behind`` lists the subsets where the reference beats
    the baseline beyond seed and test-sample noise (the interval of
    :func:`dmrnet.comparison.difference` excludes 0). ``closed_behind`` averages ``closed``
    over them: the fraction of the baseline's gap a method closes where there is one.
    """
    ref = roles.get("reference")
    if ref is None:
        return None
    base = roles.get("baseline")
    sign = 1.0 if higher_is_better else -1.0
    by: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = r["per_subset"]
    if ref not in by:
        return None
    subsets = list(next(iter(by[ref].values())))

    def common(method: str) -> list[int]:
        return sorted(set(by[ref]) & set(by[method]))

    def gaps(method: str, subset: str) -> np.ndarray:
        return np.array([sign * (by[ref][s][subset] - by[method][s][subset])
                         for s in common(method)])

    behind: list[str] = []
    if base is not None and base in by:
        seeds = common(base)
        for subset in subsets:
            shared = _shared_noise(samples, value, ref, base, seeds, subset, higher_is_better)
            d = difference([sign * by[ref][s][subset] for s in seeds],
                           [sign * by[base][s][subset] for s in seeds], shared)
            if d.clear and d.diff > 0:
                behind.append(subset)
    base_gap = ({s: float(gaps(base, s).mean()) for s in subsets}
                if base is not None and base in by else {})
    per_method: dict[str, Any] = {}
    for method in by:
        if method == ref:
            continue
        cells = {}
        for subset in subsets:
            g = float(gaps(method, subset).mean())
            bg = base_gap.get(subset)
            closed = (bg - g) / bg if bg is not None and bg > 0 else None
            cells[subset] = {"gap": g, "closed": closed}
        closed_behind = [cells[s]["closed"] for s in behind]
        per_method[method] = {
            "per_subset": cells,
            "closed_behind": float(np.mean(closed_behind)) if closed_behind else None,
            "mean_gap": float(np.mean([c["gap"] for c in cells.values()])),
        }
    return {"reference": ref, "baseline": base, "behind": behind, "per_method": per_method}


def summarize_runs(runs: Sequence[dict[str, Any]], higher_is_better: bool) -> dict[str, Any]:
    """Per method: mean and std over seeds of the mean-over-subsets and worst-subset metric,
    and each subset's mean over seeds."""

    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        means = np.array([r["mean"] for r in rs])
        worsts = np.array([r["worst"] for r in rs])
        subsets = list(rs[0]["per_subset"])
        per_subset = {s: float(np.mean([r["per_subset"][s] for r in rs])) for s in subsets}
        per_subset_std = {s: float(np.std([r["per_subset"][s] for r in rs])) for s in subsets}
        out[method] = {
            "mean": float(means.mean()),
            "mean_std": float(means.std()),
            "worst": float(worsts.mean()),
            "worst_std": float(worsts.std()),
            "seeds": len(rs),
            "per_subset": per_subset,
            "per_subset_std": per_subset_std,
            "train_seconds": float(np.mean([r["train_seconds"] for r in rs])),
        }
    return out
