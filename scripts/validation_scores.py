"""Validation scores of benchmark runs, the numbers a preset is chosen on (never test).

For each benchmark folder (a sweep's value folders count too), every run's validation metric
per subset at the epoch its checkpoint was chosen (``best_epoch`` in results.json), read from
its training log. Prints, per folder and method: mean over seeds of the mean over subsets, of
the worst subset, and of each subset; ``--against METHOD`` adds each method's lowest subset
difference to that method (the "no subset below the baseline" check, on validation).

    python scripts/validation_scores.py OUT [OUT ...] [--against baseline]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def run_scores(folder: Path) -> dict[str, list[dict[str, float]]]:
    """method -> one {subset: validation metric} per seed, at each run's best epoch."""
    results = json.loads((folder / "results.json").read_text())
    metric = results["metric"]
    out: dict[str, list[dict[str, float]]] = {}
    for run in results["runs"]:
        name = f"{run['method']}-seed{run['seed']}"
        logs = sorted((folder / "logs" / name).rglob("metrics.csv"))
        if not logs or run["best_epoch"] < 0:
            continue  # a method of many stages (dedicated) has no single log
        with open(logs[-1]) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("val/mean")
                    and int(r["epoch"]) == run["best_epoch"]]
        if not rows:
            continue
        row = rows[-1]
        out.setdefault(run["method"], []).append(
            {s: float(row[f"val/{s}/{metric}"]) for s in results["subsets"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--against", default=None)
    args = parser.parse_args(argv)
    folders = []
    for f in args.folders:
        folders += [f] if (f / "results.json").is_file() else sorted(
            p.parent for p in f.glob("*/results.json"))
    for folder in folders:
        scores = run_scores(folder)
        ref = scores.get(args.against) if args.against else None
        for method, seeds in scores.items():
            subsets = list(seeds[0])
            per = {s: statistics.fmean(x[s] for x in seeds) for s in subsets}
            line = (f"{folder.name:32s} {method:14s} seeds {len(seeds)}  val mean "
                    f"{statistics.fmean(statistics.fmean(x.values()) for x in seeds):.4f}  "
                    f"worst {statistics.fmean(min(x.values()) for x in seeds):.4f}")
            if ref and method != args.against:
                base = {s: statistics.fmean(x[s] for x in ref) for s in subsets}
                low = min(subsets, key=lambda s: per[s] - base[s])
                line += f"  lowest vs {args.against}: {low} {per[low] - base[low]:+.4f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
