"""Benchmark outputs: results.json, results.csv, report.md and the per-subset plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from dmrnet.subsets import SEP


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def differing_subsets(results: dict[str, Any], top: int = 5) -> tuple[str, str, list[tuple]]:
    """The subsets where two methods differ most: (method_a, method_b, [(subset, a, b, b - a)]).

    Compares "dmrnet" with "baseline" when both ran, else the first two methods.
    """
    methods = list(results["summary"])
    if len(methods) < 2:
        return "", "", []
    a, b = ("baseline", "dmrnet") if {"baseline", "dmrnet"} <= set(methods) else methods[:2]
    pa, pb = results["summary"][a]["per_subset"], results["summary"][b]["per_subset"]
    rows = [(s, pa[s], pb[s], pb[s] - pa[s]) for s in pa if s in pb]
    rows.sort(key=lambda r: -abs(r[3]))
    return a, b, rows[:top]


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
            f"{m:<{width}}{_pm(s['mean'], s['mean_std']):<22}"
            f"{_pm(s['worst'], s['worst_std']):<22}{s['seeds']:<7}{s['train_seconds']:.1f}"
        )
    for c in results.get("comparisons") or []:
        if c["seeds"] >= 2:
            lines.append(f"{c['a']} − {c['b']} on {c['on']}: {c['diff']:+.4f} "
                         f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] → {c['verdict']}")
    gap = results.get("gap_to_reference")
    if gap and gap["baseline"]:
        lines.append(f"{gap['reference']} beats {gap['baseline']} beyond seed noise on "
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
    plot_per_subset(results, out / "per_subset.png")
    if results.get("gap_to_reference"):
        plot_gap_to_reference(results, out / "gap_to_reference.png")


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
        f"better). Seeds: {cfg.get('seeds')}. Epochs: {cfg.get('epochs')}. Checkpoints "
        "selected on the validation split's mean over subsets.",
        "",
        "## Summary (mean ± std over seeds)",
        "",
        "| method | mean over subsets | worst subset | train s / run |",
        "|---|---|---|---|",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {_pm(s['mean'], s['mean_std'])} | {_pm(s['worst'], s['worst_std'])} | "
            f"{s['train_seconds']:.1f} |"
        )
    a, b, rows = differing_subsets(results, top=10)
    if rows:
        lines += ["", f"## Subsets where {b} and {a} differ most", "",
                  f"| subset | {a} | {b} | {b} − {a} |", "|---|---|---|---|"]
        lines += [f"| {s} | {va:.4f} | {vb:.4f} | {d:+.4f} |" for s, va, vb, d in rows]
    comps = results.get("comparisons") or []
    if comps:
        lines += ["", "## Paired comparisons over seeds", "",
                  "Difference a − b per seed, mean and bootstrap 95 % interval over seeds; a "
                  "winner is named only with 3 or more seeds and an interval that excludes 0.", "",
                  "| a | b | on | seeds | a − b | 95 % interval | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['a']} | {c['b']} | {c['on']} | {c['seeds']} | {c['diff']:+.4f} | "
                  f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['verdict']} |"
                  for c in comps]
    lines += gap_markdown(results)
    hard = [(r["seed"], r["method"], r.get("hard_subsets")) for r in results["runs"]
            if r.get("hard_subsets")]
    if hard:
        lines += ["", "## Hard subsets chosen by HCR", ""]
        lines += [f"- {m}, seed {seed}: {', '.join(h)}" for seed, m, h in hard]
    lines += ["", "## Every subset", "", "![per-subset metric](per_subset.png)", "",
              "| subset | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for subset in results["subsets"]:
        cells = []
        for m in methods:
            mean = summary[m]["per_subset"].get(subset, math.nan)
            std = summary[m]["per_subset_std"].get(subset, math.nan)
            cells.append(_pm(mean, std))
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
             f"{base} beyond seed noise (paired "
             "bootstrap 95 % interval over ≥ 3 seeds excludes 0).", "",
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


def plot_gap_to_reference(results: dict[str, Any], path: str | Path) -> None:
    """One row per subset, one bar per method: its gap to the reference (0 = as good)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_xlabel(f"{gap['reference']} − method, test {results['metric']}")
    ax.set_title(f"{results['dataset']}: gap to {gap['reference']} per subset "
                 "(* reference beats the baseline)")
    ax.grid(axis="x", color="0.92")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_subset(results: dict[str, Any], path: str | Path) -> None:
    """One row per subset (grouped by size), one marker per method with its seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = results["subsets"]
    summary = results["summary"]
    n = len(subsets)
    fig_h = max(3.0, 0.22 * n + 1.5)
    fig, ax = plt.subplots(figsize=(8, fig_h))
    markers = "os^Dv<>P*X"
    k = len(summary)
    for i, (m, s) in enumerate(summary.items()):
        offset = (i - (k - 1) / 2) * 0.18
        ys = [n - 1 - j + offset for j in range(n)]
        xs = [s["per_subset"].get(sub, math.nan) for sub in subsets]
        es = [s["per_subset_std"].get(sub, 0.0) for sub in subsets]
        ax.errorbar(xs, ys, xerr=es, fmt=markers[i % len(markers)], ms=4, capsize=2,
                    label=f"{m} (mean {s['mean']:.3f})", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(subsets)), fontsize=7 if n > 20 else 9)
    ax.set_ylim(-0.7, n - 0.3)
    sizes = [sub.count(SEP) + 1 for sub in subsets]
    for j in range(1, n):  # separate subsets of different sizes
        if sizes[j] != sizes[j - 1]:
            ax.axhline(n - j - 0.5, color="0.85", lw=0.8)
    ax.set_xlabel(f"test {results['metric']}")
    ax.set_title(f"{results['dataset']}: {results['metric']} per modality subset")
    ax.grid(axis="x", color="0.92")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
