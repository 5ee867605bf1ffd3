"""Compare methods across benchmark folders with the benchmark's own procedure.

A sweep or an ablation trains its variants in separate benchmarks (one folder each, or one per
sweep value). Runs of the same seeds on the same data are paired seed by seed across folders,
as they are inside one benchmark: each ``FOLDER:METHOD`` is judged against the first one, on the
mean over subsets and the worst subset, with :func:`dmrnet.benchmark.paired_comparisons`
(Student's t over seeds, widened by the test-sample noise the seeds share, from each run's
``test_samples/``). Prints a markdown table: a - b, its 95 % interval and the verdict.
Runs trained with different CPU thread counts (``cpu_threads`` in results.json) are not the
same computation even for the same method; a note names such seeds.

    python scripts/compare_runs.py BASE:METHOD OTHER:METHOD [OTHER:METHOD ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmrnet.benchmark import load_samples, paired_comparisons
from dmrnet.metrics import get_task_metric


def _load(spec: str) -> tuple[str, list[dict], dict, dict]:
    folder, _, method = spec.rpartition(":")
    path = Path(folder)
    if not folder or not (path / "results.json").is_file():
        raise SystemExit(f"compare_runs: error: {spec!r} is not FOLDER:METHOD with FOLDER "
                         "holding a benchmark's results.json")
    results = json.loads((path / "results.json").read_text())
    runs = [r for r in results["runs"] if r["method"] == method]
    if not runs:
        found = sorted({r["method"] for r in results["runs"]})
        raise SystemExit(f"compare_runs: error: {folder!r} has no runs of {method!r}; it has "
                         f"{found}")
    samples = load_samples(path, runs)
    label = spec
    runs = [{**r, "method": label} for r in runs]
    return label, runs, {(label, s): v for (_, s), v in samples.items()}, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="FOLDER:METHOD")
    args = parser.parse_args(argv)
    if len(args.specs) < 2:
        parser.error("give the reference FOLDER:METHOD and at least one other")
    loaded = [_load(s) for s in args.specs]
    first = loaded[0][3]
    for _, _, _, results in loaded[1:]:
        if results["dataset"] != first["dataset"] or results["metric"] != first["metric"]:
            raise SystemExit("compare_runs: error: the folders hold different data sets or "
                             "metrics; compare runs of one benchmark's data")
    metric = get_task_metric(first["metric"])
    base, base_runs, base_samples, _ = loaded[0]
    threads = {r["seed"]: r.get("cpu_threads") for r in base_runs}
    for label, runs, _, _ in loaded[1:]:
        differ = sorted(r["seed"] for r in runs if None not in (
            r.get("cpu_threads"), threads.get(r["seed"])) and r["cpu_threads"] !=
            threads[r["seed"]])
        if differ:
            print(f"note: {label} trained seeds {differ} with other CPU thread counts than "
                  f"{base}: rerun with --threads N for like-for-like runs")
    print(f"against {base} ({first['dataset']}, test {first['metric']})\n")
    print("| b | on | seeds | b - a | 95 % interval | verdict |")
    print("|---|---|---|---|---|---|")
    for label, runs, samples, _ in loaded[1:]:
        rows = paired_comparisons([*base_runs, *runs], metric.higher_is_better,
                                  {**base_samples, **samples}, metric.value)
        for row in rows:  # a = the reference; printed as b - a, the change from it
            lo, hi = -row["ci95"][1], -row["ci95"][0]
            print(f"| {label} | {row['on']} | {row['seeds']} | {-row['diff']:+.4f} | "
                  f"[{lo:+.4f}, {hi:+.4f}] | {row['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
