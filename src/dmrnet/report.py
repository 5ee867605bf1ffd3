"""Benchmark outputs: results.json, results.csv, report.md and the per-subset plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from dmrnet.subsets import SEP


def _pm(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` over seeds; one seed has no spread to show (not ``± 0.0000``)."""
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f} (1 seed)"


def differing_subsets(results: dict[str, Any], top: int = 5) -> tuple[str, str, list[tuple]]:
    """The subsets where two methods differ most: (method_a, method_b, [(subset, a, b, b - a)]).

    Compares the first other method with the run's baseline (the method whose role is
    "baseline"; else the first method).
    """
    methods = list(results["summary"])
    if len(methods) < 2:
        return "", "", []
    a = reference_method(results)
    b = next(m for m in methods if m != a)
    pa, pb = results["summary"][a]["per_subset"], results["summary"][b]["per_subset"]
    rows = [(s, pa[s], pb[s], pb[s] - pa[s]) for s in pa if s in pb]
    rows.sort(key=lambda r: -abs(r[3]))
    return a, b, rows[:top]


def reference_method(results: dict[str, Any]) -> str:
    """The method others are compared with in the report and plots: the run's baseline (role
    "baseline", see ``Method.role``) if it ran, else the first method."""
    methods = list(results["summary"])
    base = (results.get("roles") or {}).get("baseline")
    return base if base in methods else methods[0]


def robustness_profile(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and number of modalities present k (as a string "1".."M"): the mean and
    the worst subset of size k, each as mean and std over seeds (``mean``, ``mean_std``,
    ``worst``, ``worst_std``). Worst follows the metric's direction."""
    higher = results["higher_is_better"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in results["summary"]:
        runs = [r for r in results["runs"] if r["method"] == method]
        sizes = sorted({s.count(SEP) + 1 for s in runs[0]["per_subset"]})
        per_size = {}
        for k in sizes:
            means, worsts = [], []
            for r in runs:
                vals = [v for s, v in r["per_subset"].items() if s.count(SEP) + 1 == k]
                means.append(sum(vals) / len(vals))
                worsts.append(min(vals) if higher else max(vals))
            per_size[str(k)] = {"mean": _avg(means), "mean_std": _std(means),
                                "worst": _avg(worsts), "worst_std": _std(worsts)}
        out[method] = per_size
    return out


def _avg(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float:
    m = _avg(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def format_summary(results: dict[str, Any]) -> str:
    """The console table: per method, mean ± std over seeds of mean-over-subsets and worst."""
    metric = results["metric"]
    summary = results["summary"]
    width = max(len(m) for m in summary) + 2
    lines = [
        f"\n{results['dataset']}: {len(results['subsets'])} subsets of {results['modalities']}, "
        f"test {metric}, mean ± std over seeds",
        f"{'method':<{width}}{'mean over subsets':<22}{'worst subset':<22}{'seeds':<7}train s",
    ]
    for m, s in summary.items():
        lines.append(
            f"{m:<{width}}{_pm(s['mean'], s['mean_std'], s['seeds']):<22}"
            f"{_pm(s['worst'], s['worst_std'], s['seeds']):<22}{s['seeds']:<7}"
            f"{s['train_seconds']:.1f}"
        )
    lines += [f"failed, left out: {r['method']} seed {r['seed']}: {r['failed']}"
              for r in results.get("failed_runs") or []]
    for c in results.get("comparisons") or []:
        if c["seeds"] >= 2:
            lines.append(f"{c['a']} − {c['b']} on {c['on']}: {c['diff']:+.4f} "
                         f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] → {verdict_words(c)}")
        else:
            lines.append(f"{c['a']} − {c['b']} on {c['on']}: {c['diff']:+.4f}, no verdict "
                         "from one seed (seed noise is unknown; run 2 or more)")
    gap = results.get("gap_to_reference")
    if gap and gap["baseline"]:
        lines.append(f"{gap['reference']} beats {gap['baseline']} beyond noise on "
                     f"{len(gap['behind'])} subset(s): {', '.join(gap['behind']) or 'none'}")
        for m, g in gap["per_method"].items():
            if m != gap["baseline"] and g["closed_behind"] is not None:
                lines.append(f"  {m} closes {100 * g['closed_behind']:.0f} % of "
                             f"{gap['baseline']}'s gap there")
    a, b, rows = differing_subsets(results)
    if rows:
        lines.append(f"subsets where {b} and {a} differ most ({b} − {a}):")
        for s, va, vb, d in rows:
            lines.append(f"  {s:<30} {a} {va:.4f}  {b} {vb:.4f}  ({d:+.4f})")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out: str | Path, appendix: str = "") -> None:
    """Write results.json, results.csv, report.md (with ``appendix``, e.g. the analysis,
    at its end) and per_subset.png: the one writer of these files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(to_json(results))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "seed", "subset", "subset_size", results["metric"]])
        for run in results["runs"]:
            for subset, value in run["per_subset"].items():
                writer.writerow(
                    [run["method"], run["seed"], subset, subset.count(SEP) + 1, f"{value:.6f}"]
                )
    (out / "report.md").write_text(markdown_report(results) + (f"\n{appendix}" if appendix
                                                               else ""))
    save_figure(per_subset_figure(results), out / "per_subset.png")
    save_figure(profile_figure(results), out / "robustness_profile.png")
    if results.get("gap_to_reference"):
        save_figure(gap_figure(results), out / "gap_to_reference.png")


def to_json(obj: Any) -> str:
    """Strict JSON for results files: a value that is not a finite number (NaN: a subset
    with no sample, a correlation of constants; inf) is written ``null``, paths as strings,
    numpy and torch scalars as numbers. Python's default would write bare ``NaN``, which
    JSON parsers refuse."""
    return json.dumps(_plain(obj), indent=2, allow_nan=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()  # numpy / torch scalars
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


SELECTED = {
    "best": "Checkpoints selected on the validation split's mean over subsets.",
    "last": "Each run is tested with its last epoch's weights (--select last).",
    "smoothed": "Checkpoints selected on the validation split's mean over subsets, averaged "
                "over the last 5 validations (--select smoothed).",
}
"""How report.md words each ``--select``."""


def markdown_report(results: dict[str, Any]) -> str:
    metric = results["metric"]
    summary = results["summary"]
    methods = list(summary)
    cfg = results.get("config", {})
    lines = [
        f"# Benchmark: {results['dataset']}",
        "",
        f"Modalities: {', '.join(results['modalities'])} ({len(results['subsets'])} subsets). "
        f"Metric: test {metric} ({'higher' if results['higher_is_better'] else 'lower'} is "
        f"better). Seeds: {cfg.get('seeds')}. Epochs: {cfg.get('epochs')}. "
        + SELECTED[cfg.get("select") or "best"],
        "",
        "## Summary (mean ± std over seeds)",
        "",
        "| method | mean over subsets | worst subset | train s / run |",
        "|---|---|---|---|",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {_pm(s['mean'], s['mean_std'], s['seeds'])} | "
            f"{_pm(s['worst'], s['worst_std'], s['seeds'])} | "
            f"{s['train_seconds']:.1f} |"
        )
    failed = results.get("failed_runs") or []
    if failed:
        lines += ["", "## Failed runs", "",
                  "Left out of every table and comparison here: their training stopped.", ""]
        lines += [f"- {r['method']}, seed {r['seed']}: {r['failed']}" for r in failed]
    a, b, rows = differing_subsets(results, top=10)
    if rows:
        lines += ["", f"## Subsets where {b} and {a} differ most", "",
                  f"| subset | {a} | {b} | {b} − {a} |", "|---|---|---|---|"]
        lines += [f"| {s} | {va:.4f} | {vb:.4f} | {d:+.4f} |" for s, va, vb, d in rows]
    comps = results.get("comparisons") or []
    if comps:
        lines += ["", "## Paired comparisons", "",
                  "Difference a − b, mean over the seeds both ran, with a 95 % interval for "
                  "seed noise and test-sample noise: Student's t over seeds, widened by a "
                  "paired bootstrap of the test samples (see `dmrnet.comparison`). A winner is "
                  "named only with 2 or more seeds and an interval that excludes 0; a difference "
                  "smaller than the resolution (the interval's half-width) cannot be told from "
                  "noise with these seeds.", "",
                  "| a | b | on | seeds | a − b | 95 % interval | resolution | noise | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['a']} | {c['b']} | {c['on']} | {c['seeds']} | {c['diff']:+.4f} | "
                  f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | "
                  f"{c.get('resolution', math.nan):.4f} | {c.get('noise', 'seeds')} | "
                  f"{verdict_words(c)} |" for c in comps]
    lines += gap_markdown(results)
    chosen = [(r["seed"], r["method"], (r.get("objective_state") or {}).get("summary"))
              for r in results["runs"]]
    chosen = [c for c in chosen if c[2]]
    if chosen:
        lines += ["", "## What training chose", "",
                  "Each run's objective, in its own words, at the end of training.", ""]
        lines += [f"- {m}, seed {seed}: {summary}" for seed, m, summary in chosen]
    profile = robustness_profile(results)
    lines += ["", "## Robustness profile", "",
              f"Test {metric} against the number of modalities present: the mean and the worst "
              "of the subsets of each size (mean ± std over seeds).", "",
              "![robustness profile](robustness_profile.png)", "",
              "| modalities present | " + " | ".join(f"{m} mean | {m} worst" for m in methods)
              + " |", "|---|" + "---|---|" * len(methods)]
    for k in next(iter(profile.values())):
        lines.append(f"| {k} | " + " | ".join(
            f"{_pm(profile[m][k]['mean'], profile[m][k]['mean_std'], summary[m]['seeds'])} | "
            f"{_pm(profile[m][k]['worst'], profile[m][k]['worst_std'], summary[m]['seeds'])}"
            for m in methods) + " |")
    lines += ["", "## Every subset", "", "![per-subset metric](per_subset.png)", "",
              "| subset | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for subset in results["subsets"]:
        cells = []
        for m in methods:
            mean = summary[m]["per_subset"].get(subset, math.nan)
            std = summary[m]["per_subset_std"].get(subset, math.nan)
            cells.append(_pm(mean, std, summary[m]["seeds"]))
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_words(c: dict[str, Any]) -> str:
    """A comparison's verdict; "no clear difference" says how large a difference these seeds
    could have told from noise."""
    if c["verdict"] == "no clear difference" and "resolution" in c:
        return f"no clear difference (under ±{c['resolution']:.4f} is within noise)"
    return str(c["verdict"])


def gap_markdown(results: dict[str, Any]) -> list[str]:
    """The report's section on the gap to the reference (dedicated models), if it ran."""
    gap = results.get("gap_to_reference")
    if not gap:
        return []
    ref, base = gap["reference"], gap["baseline"]
    methods = list(gap["per_method"])
    closes = f", and in brackets the fraction of {base}’s gap it closes" if base else ""
    lines = ["", f"## Gap to {ref}", "",
             f"Per subset: {ref} − method in {results['metric']} (mean over seeds; positive: "
             f"the method is behind){closes}. Subsets marked * are those where {ref} beats "
             f"{base} beyond seed and test-sample noise (the 95 % interval of the paired "
             "comparisons excludes 0).", "",
             "![gap to the reference](gap_to_reference.png)", "",
             "| subset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for subset in results["subsets"]:
        cells = []
        for m in methods:
            c = gap["per_method"][m]["per_subset"][subset]
            closed = (f" ({100 * c['closed']:.0f} %)" if c["closed"] is not None and m != base
                      else "")
            cells.append(f"{c['gap']:+.4f}{closed}")
        star = "*" if subset in gap["behind"] else ""
        lines.append(f"| {subset}{star} | " + " | ".join(cells) + " |")
    if base:
        lines += ["", f"Fraction of {base}’s gap closed on the starred subsets: " + ", ".join(
            f"{m} {100 * g['closed_behind']:.0f} %" if g["closed_behind"] is not None
            else f"{m} n/a" for m, g in gap["per_method"].items() if m != base) + "."]
    return lines


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Write a figure of this module (PNG) and free it."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def legend_below(fig: Any, ax: Any, ncol: int) -> None:
    """The figure's legend under the plots, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=max(1, min(ncol, 4)), fontsize=8, frameon=False)


def _subset_rows(ax: Any, subsets: list[str]) -> None:
    """One row per subset, the first at the top, lines between subsets of different sizes."""
    n = len(subsets)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(subsets)), fontsize=7 if n > 20 else 9)
    ax.set_ylim(-0.7, n - 0.3)
    sizes = [sub.count(SEP) + 1 for sub in subsets]
    for j in range(1, n):
        if sizes[j] != sizes[j - 1]:
            ax.axhline(n - j - 0.5, color="0.85", lw=0.8)


def gap_figure(results: dict[str, Any]) -> Any:
    """One row per subset, one bar per method: its gap to the reference (0 = as good)."""
    plt = pyplot()
    gap = results["gap_to_reference"]
    subsets = results["subsets"]
    methods = list(gap["per_method"])
    n, k = len(subsets), max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * n * max(1, k / 2) + 1.5)))
    height = 0.8 / k
    for i, m in enumerate(methods):
        ys = [n - 1 - j + (i - (k - 1) / 2) * height for j in range(n)]
        xs = [gap["per_method"][m]["per_subset"][s]["gap"] for s in subsets]
        ax.barh(ys, xs, height=height, label=m)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([s + (" *" if s in gap["behind"] else "")
                        for s in reversed(subsets)], fontsize=7 if n > 20 else 9)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"{gap['reference']} − method, test {results['metric']} (positive: behind)")
    ax.set_title(f"{results['dataset']}: gap to {gap['reference']} per subset "
                 "(* reference beats the baseline)")
    ax.grid(axis="x", color="0.92")
    fig.tight_layout()
    legend_below(fig, ax, k)
    return fig


def _error(value: float, higher_is_better: bool) -> float:
    return 1.0 - value if higher_is_better else value


TICK_MANTISSAS = ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5, 7), tuple(range(1, 10)),
                  tuple(x / 2 for x in range(2, 20)), tuple(x / 4 for x in range(4, 40)))
"""Round values for a log axis, coarsest first: powers of ten, then 1-3, 1-2-5, ... quarters."""


def log_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values between ``lo`` and ``hi`` (> 0) for a log axis: the coarsest of
    :data:`TICK_MANTISSAS` with three in range, thinned to at most ``most``; fewer than
    three only if quarters give fewer."""
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in TICK_MANTISSAS:
        ticks = sorted(float(f"{m}e{k}") for k in decades for m in mantissas
                       if lo <= float(f"{m}e{k}") <= hi)
        if len(ticks) >= 3:
            break
    return ticks[:: math.ceil(len(ticks) / most)] if ticks else ticks


def round_log_axis(ax: Any) -> None:
    """Label ``ax``'s log x axis with a few round decimals (0.02, 0.05, 0.1) and no minor
    labels: matplotlib labels minor ticks on an axis shorter than a decade, in scientific
    notation, and on a short run's narrow range they ran into each other."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi)  # the ticks are for these limits
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def per_subset_figure(results: dict[str, Any]) -> Any:
    """One row per subset (grouped by size). Left: each method's error (1 − metric where
    higher is better) on a log scale with its seed std, so 0.97 against 0.99 is a factor of
    three, not a hair. Right (two or more methods): each method's difference to the
    reference method (the baseline), mean and std of the per-seed differences, in points."""
    plt = pyplot()
    subsets = results["subsets"]
    summary = results["summary"]
    higher = results["higher_is_better"]
    ref = reference_method(results)
    others = [m for m in summary if m != ref]
    n = len(subsets)
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(12 if others else 7,
                                                             max(3.0, 0.22 * n + 1.5)),
                             sharey=True, squeeze=False)
    markers = "os^Dv<>P*X"
    k = len(summary)
    errors = [_error(v, higher) for s in summary.values() for v in s["per_subset"].values()
              if not math.isnan(v)]
    positive = [e for e in errors if e > 0]
    floor = min(positive) / 2 if positive else 1e-3
    ax = axes[0][0]
    for i, (m, s) in enumerate(summary.items()):
        ys = [n - 1 - j + (i - (k - 1) / 2) * 0.18 for j in range(n)]
        raw = [_error(s["per_subset"].get(sub, math.nan), higher) for sub in subsets]
        err = [max(e, floor) for e in raw]
        std = [s["per_subset_std"].get(sub, 0.0) for sub in subsets]
        lo = [e - max(e - sd, floor) for e, sd in zip(err, std, strict=True)]
        ax.errorbar(err, ys, xerr=[lo, std], fmt=markers[i % len(markers)], ms=4, capsize=2,
                    lw=0.8, color=f"C{i}", label=f"{m} (mean {results['metric']} "
                    f"{s['mean']:.4f})")
        zero = [j for j, e in enumerate(raw) if e <= 0]
        if zero:  # a log axis has no 0: hollow markers on the floor's line say "no error"
            ax.plot([floor] * len(zero), [ys[j] for j in zero], markers[i % len(markers)],
                    ms=6, mfc="white", color=f"C{i}")
    if any(e <= 0 for e in errors):
        ax.axvline(floor, ls=":", lw=0.8, color="0.5",
                   label=f"error 0 (hollow markers, drawn at {floor:.2g})")
    ax.set_xscale("log")
    round_log_axis(ax)
    name = results["metric"]
    ax.set_xlabel(f"test error, 1 − {name} (log scale; left is better)" if higher else
                  f"test {name} (log scale; left is better)")
    ax.grid(axis="x", which="both", color="0.92")
    _subset_rows(ax, subsets)
    if others:
        by = {(r["method"], r["seed"]): r["per_subset"] for r in results["runs"]}
        right = axes[0][1]
        for i, m in enumerate(summary):
            if m == ref:
                continue
            seeds = sorted(s for (mm, s) in by if mm == m and (ref, s) in by)
            ys = [n - 1 - j + (i - (k - 1) / 2) * 0.18 for j in range(n)]
            diffs = [[100 * (by[(m, s)][sub] - by[(ref, s)][sub]) for s in seeds]
                     for sub in subsets]
            right.errorbar([_avg(d) if d else math.nan for d in diffs], ys,
                           xerr=[_std(d) if d else 0.0 for d in diffs],
                           fmt=markers[i % len(markers)], ms=4, capsize=2, lw=0.8, color=f"C{i}")
        right.axvline(0, color="0.3", lw=0.8)
        right.set_xlabel(f"method − {ref}, test {name} in points ("
                         f"{'right' if higher else 'left'} is better; seed std)")
        right.grid(axis="x", color="0.92")
        _subset_rows(right, subsets)
        right.tick_params(labelleft=False)
    fig.suptitle(f"{results['dataset']}: test {name} per modality subset")
    fig.tight_layout()
    legend_below(fig, ax, k)
    return fig


def profile_figure(results: dict[str, Any]) -> Any:
    """The robustness profile: test metric against the number of modalities present, per
    method the mean (solid, seed band) and the worst (dashed) subset of each size."""
    plt = pyplot()
    profile = robustness_profile(results)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (m, per_size) in enumerate(profile.items()):
        ks = [int(k) for k in per_size]
        mean = [per_size[str(k)]["mean"] for k in ks]
        band = [per_size[str(k)]["mean_std"] for k in ks]
        ax.plot(ks, mean, "-o", color=f"C{i}", ms=4, label=f"{m}: mean")
        ax.fill_between(ks, [a - b for a, b in zip(mean, band, strict=True)],
                        [a + b for a, b in zip(mean, band, strict=True)], color=f"C{i}",
                        alpha=0.15, lw=0)
        ax.plot(ks, [per_size[str(k)]["worst"] for k in ks], "--", marker="v", ms=4,
                color=f"C{i}", label=f"{m}: worst")
    ks = [int(k) for k in next(iter(profile.values()))]
    ax.set_xticks(ks)
    ax.set_xlabel("modalities present")
    better = "higher" if results["higher_is_better"] else "lower"
    ax.set_ylabel(f"test {results['metric']} ({better} is better)")
    ax.set_title(f"{results['dataset']}: robustness profile (mean and worst subset per size)")
    ax.grid(color="0.92")
    fig.tight_layout()
    legend_below(fig, ax, len(profile))  # a column per method: its mean above its worst
    return fig


def subset_table(metrics: dict[str, float], stage: str, title: str = "") -> str:
    """One console table of a ``validate``/``test``/``fit`` result: a row per subset, grouped
    by how many modalities it has (then in the logged order), a column per metric, then the
    mean and worst over subsets; values to 4 decimals (the files keep full precision).

    ``metrics``: logged names -> values, e.g. ``test/fac+mor/accuracy``, ``test/mean``.
    """
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != stage:
            continue
        rows.setdefault(parts[1], {})[parts[2]] = float(value)
        if parts[2] not in columns:
            columns.append(parts[2])
    if not rows:
        return ""
    order = sorted(rows, key=lambda s: len(s.split(SEP)))  # stable: logged order within a size
    width = max(len(s) for s in [*order, "worst subset"]) + 2
    lines = [title] if title else []
    lines.append(f"{'subset':<{width}}" + "".join(f"{c:>12}" for c in columns))
    size = 0
    for s in order:
        n = len(s.split(SEP))
        if n != size:
            size = n
            lines.append(f"-- {n} modalit{'y' if n == 1 else 'ies'}")
        lines.append(f"{s:<{width}}" + "".join(
            f"{rows[s][c]:>12.4f}" if c in rows[s] else f"{'':>12}" for c in columns))
    for name in ("mean", "worst"):
        key = f"{stage}/{name}"
        if key in metrics:
            label = "mean" if name == "mean" else "worst subset"
            lines.append(f"{label:<{width}}{float(metrics[key]):>12.4f}")
    return "\n".join(lines)
