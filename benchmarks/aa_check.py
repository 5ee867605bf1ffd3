"""A/A check of the benchmark's verdicts: how often does it name a winner between a method and
itself (target <= 5 %)?

A pool of runs of one method is trained once (``--pool`` seeds, on cheap data). Each
repetition draws 2 x ``--seeds`` distinct seeds from it: the first half plays method "A", the
second "B" (the same method under two names, paired seed by seed), and both procedures judge
A - B on the mean over subsets and on the worst subset:

- **new**: :func:`dmrnet.comparison.difference`, Student's t over seeds widened by the
  test-sample noise the seeds share (what ``dmrnet benchmark`` reports now);
- **old**: a percentile bootstrap of the per-seed differences over seeds, with a winner only
  from 3 seeds (what it reported before).

It prints each procedure's false-winner rate (with its binomial standard error) and the new
procedure's mean resolution (the interval's half-width: the smallest difference it can call)
for each number of seeds in ``--seeds``. Repetitions share pool runs, so the rates are
estimates of the procedures' rates on this data, not independent trials.

    python benchmarks/aa_check.py [--dataset synthetic] [--method baseline] [--pool 80]
                                  [--first-seed 0] [--seeds 5] [--reps 600] [--epochs 4]

The defaults judge at the benchmark's default number of seeds (5). A pool of 80 keeps the
repetitions' overlap moderate (each uses 10 of the 80 runs); ``--first-seed`` trains another
pool, to see how much the estimate moves between pools.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from dmrnet.benchmark import BenchmarkConfig, load_samples, quiet_lightning, run_benchmark
from dmrnet.comparison import default_seed_count, difference, reducer, shared_test_noise
from dmrnet.metrics import get_task_metric

TARGET = 0.05


def old_verdict(d: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> bool:
    """The former rule: percentile bootstrap over seeds, a winner from 3 seeds."""
    boot = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return len(d) >= 3 and (lo > 0 or hi < 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--method", default="baseline")
    p.add_argument("--pool", type=int, default=80, help="seeds trained once")
    p.add_argument("--first-seed", type=int, default=0, help="the pool's first seed")
    p.add_argument("--seeds", default=str(default_seed_count()),
                   help="seeds per name, comma-separated (default: the benchmark's default)")
    p.add_argument("--reps", type=int, default=600, help="A/A repetitions per seed count")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--resamples", type=int, default=500, help="test-sample bootstrap draws")
    args = p.parse_args()
    sizes = [int(s) for s in args.seeds.split(",")]
    if 2 * max(sizes) > args.pool:
        p.error(f"--pool {args.pool} is too small for 2 x {max(sizes)} distinct seeds")
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pool"
        results = run_benchmark(BenchmarkConfig(
            out=str(out), dataset=args.dataset, methods=[args.method],
            seeds=list(range(args.first_seed, args.first_seed + args.pool)),
            epochs=args.epochs, progress=False,
            keep_checkpoints=False), echo=lambda _: None)
        samples = load_samples(out, results["runs"])
    metric = get_task_metric(results["metric"])
    better = metric.higher_is_better
    runs = {r["seed"]: r for r in results["runs"]}
    print(f"{args.dataset}, {args.method}: {args.pool} runs of {args.epochs} epochs (seeds "
          f"{args.first_seed}-{args.first_seed + args.pool - 1}); "
          f"{args.reps} A/A repetitions per seed count; target false-winner rate <= "
          f"{TARGET:.0%}\n")
    rng = np.random.default_rng(0)
    for n in sizes:
        wins = {("new", k): 0 for k in ("mean", "worst")} | {("old", k): 0
                                                               for k in ("mean", "worst")}
        resolution = {"mean": [], "worst": []}
        for rep in range(args.reps):
            picks = rng.choice(sorted(runs), size=2 * n, replace=False)
            a_seeds, b_seeds = picks[:n], picks[n:]
            for key in ("mean", "worst"):
                a = [runs[s][key] for s in a_seeds]
                b = [runs[s][key] for s in b_seeds]
                shared = shared_test_noise([(samples[(args.method, int(x))],
                                             samples[(args.method, int(y))])
                                            for x, y in zip(a_seeds, b_seeds, strict=True)],
                                           metric.value, reducer(key, better),
                                           resamples=args.resamples, seed=rep)
                d = difference(a, b, shared)
                wins[("new", key)] += d.clear
                resolution[key].append((d.hi - d.lo) / 2)
                wins[("old", key)] += old_verdict(np.subtract(a, b), rng)
        for key in ("mean", "worst"):
            rates = {proc: wins[(proc, key)] / args.reps for proc in ("new", "old")}
            se = {proc: math.sqrt(r * (1 - r) / args.reps) for proc, r in rates.items()}
            print(f"{n} seeds  {key:<5}  false winners: new {rates['new']:6.1%} "
                  f"(± {se['new']:.1%})   old {rates['old']:6.1%} (± {se['old']:.1%})   "
                  f"new resolution ±{np.mean(resolution[key]):.4f}   target: "
                  f"{'met' if rates['new'] <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
