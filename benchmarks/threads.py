"""CPU threads chosen by dmrnet, against 1 thread and every core, idle and on a busy machine
(target: the choice's step time / the best of the two <= 1.2 in every case).

For the mfeat MLPs (0.3 GFLOP a step) and the rgbd-shapes dense network (4.4 GFLOP), one
training step (forward, loss, backward, AdamW) is timed with 1 thread, with every core, and with
the count :func:`dmrnet.runtime.thread_choice` picks, in alternation, first on the machine as
it is and then with one busy-looping process beside it. Then the end-to-end check: ``dmrnet
benchmark --dataset mfeat --methods baseline --seeds 0`` with and without the busy process
(target: at most 2x).

    python benchmarks/threads.py [--reps 5] [--no-end-to-end]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_process, interleaved
from dmrnet.data import DATASETS
from dmrnet.runtime import thread_choice, training_flops, usable_cores
from dmrnet.settings import nest_settings
from dmrnet.training import MultimodalDataModule, MultimodalModule
from train_step import make_step


def step_for(dataset: str, batch_size: int | None = None):
    """A training step of the dataset's default benchmark model on one real batch (of the
    dataset's default size unless ``batch_size`` is given), and its FLOPs."""
    defaults = DATASETS.defaults(dataset)
    data = MultimodalDataModule(dataset, batch_size=batch_size or defaults.batch_size or 64,
                                cache="none")
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())))
    torch.manual_seed(0)
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes,
                              **nest_settings(defaults.model))  # as the benchmark builds it
    flops = training_flops(module.model, {m: tuple(s) for m, s in data.input_shapes.items()},
                           len(batch))
    return make_step(module, batch.inputs, batch.availability, batch.target), flops


def with_threads(fn, n: int):
    def run() -> None:
        torch.set_num_threads(n)
        fn()

    return run


def compare(name: str, step, flops: float, condition: str, reps: int) -> float:
    chosen, why = thread_choice(flops)
    cores = usable_cores()
    counts = sorted({1, cores, chosen})
    times = interleaved({n: with_threads(step, n) for n in counts}, reps=reps, inner=3)
    best = min(times[1], times[cores])
    ratio = times[chosen] / best
    shown = ", ".join(f"{n} thread{'s' if n > 1 else ''} {times[n] * 1e3:.1f} ms"
                      for n in counts)
    print(f"{name:<12} {condition:<6} chosen {chosen} ({why}); {shown}; chosen / best of 1 "
          f"and {cores}: {ratio:.2f}  target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}",
          flush=True)
    return ratio


def end_to_end() -> float:
    command = [sys.executable, "-m", "dmrnet.cli", "benchmark", "--dataset", "mfeat",
               "--methods", "baseline", "--seeds", "0", "--overwrite"]

    def run(out: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([*command, "--out", out], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        idle = run(str(Path(tmp) / "idle"))
        with busy_process():
            loaded = run(str(Path(tmp) / "loaded"))
    ratio = loaded / idle
    print(f"dmrnet benchmark --dataset mfeat --methods baseline --seeds 0: idle {idle:.1f} s, "
          f"beside a busy process {loaded:.1f} s, ratio {ratio:.2f}  target <= 2: "
          f"{'met' if ratio <= 2 else 'NOT met'}", flush=True)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip the two runs of dmrnet benchmark")
    parser.add_argument("--batch", type=int, help="samples a step (default: each dataset's "
                        "benchmark batch; smaller ones test the script, not the target)")
    args = parser.parse_args()
    print(f"{usable_cores()} usable cores; torch {torch.__version__}", flush=True)
    steps = {name: step_for(name, args.batch) for name in ("mfeat", "rgbd-shapes")}
    ratios = [compare(name, step, flops, "idle", args.reps)
              for name, (step, flops) in steps.items()]
    with busy_process():
        ratios += [compare(name, step, flops, "busy", args.reps)
                   for name, (step, flops) in steps.items()]
    print(f"worst chosen / best ratio: {max(ratios):.2f}")
    if not args.no_end_to_end:
        end_to_end()


if __name__ == "__main__":
    main()
