"""All-subset evaluation: encoder features reused vs a naive forward pass per subset.

Target: speedup >= 0.7 x (2^M - 1) when encoders dominate the cost. Measured at M = 2, 3 and 6
on a model whose encoders dominate (conv encoders on 3x32x32 inputs), and, for reference, on
the mfeat MLP model (M = 6), where the heads are a larger share.

    python benchmarks/subset_eval.py [--reps 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved
from dmrnet.data import mfeat
from dmrnet.evaluation import naive_subset_outputs, subset_outputs
from dmrnet.methods import build_method


def measure(name: str, model, inputs: dict, reps: int, inner: int) -> None:
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    avail = torch.ones(n, len(inputs), dtype=torch.bool)

    def cached() -> None:
        with torch.no_grad():
            for _ in subset_outputs(model, inputs, avail):
                pass

    def naive() -> None:
        with torch.no_grad():
            for _ in naive_subset_outputs(model, inputs, avail):
                pass

    t = interleaved({"cached": cached, "naive": naive}, reps=reps, inner=inner)
    subsets = 2 ** len(inputs) - 1
    speedup = t["naive"] / t["cached"]
    target = 0.7 * subsets
    print(f"{name:<14} M={len(inputs)} subsets={subsets:<3} naive {t['naive'] * 1e3:8.1f} ms  "
          f"cached {t['cached'] * 1e3:7.1f} ms  speedup {speedup:6.2f}x  "
          f"target >= {target:.1f}x: {'met' if speedup >= target else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="samples per evaluation")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")
    g = torch.Generator().manual_seed(0)
    for m in (2, 3, 6):
        shapes = {f"m{i}": (3, 32, 32) for i in range(m)}
        model, _ = build_method("dmrnet", modalities=list(shapes), input_shapes=shapes,
                                num_classes=10, encoder="bench_cnn")
        inputs = {k: torch.randn(args.batch, *s, generator=g) for k, s in shapes.items()}
        measure("conv encoders", model, inputs, args.reps, inner=1)
    data = mfeat(seed=0)
    model, _ = build_method("dmrnet", modalities=data.modalities, input_shapes=data.input_shapes,
                            num_classes=10)
    inputs = {k: data.test.features[k][:args.batch] for k in data.modalities}
    measure("mfeat MLPs", model, inputs, args.reps, inner=3)


if __name__ == "__main__":
    main()
