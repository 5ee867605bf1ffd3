"""Per-run overhead of the benchmark against a hand-written PyTorch loop (target <= 1.5).

One benchmark run (``dmrnet benchmark``'s train + select + test of one method and seed:
Lightning's fit with validation on every subset, the checkpoint of the best validation mean,
the test of every subset) is timed against a minimal plain-PyTorch loop that makes the same
optimiser steps (same model, loss, AdamW and schedule, same loaders) and the same evaluations
(every subset, as often, the best state kept in memory, the test on it). Two cases:

- mfeat: the main job's data (1200 training samples, 30 epochs of 19 steps);
- manifest: 30 samples of 2 modalities (.npy files), 300 one-step epochs by ``--min-steps``.

Each is run ``--reps`` times in alternation; the medians' ratio is printed.

    python benchmarks/overhead.py [--reps 3] [--case mfeat|manifest] [--epochs N] [--min-steps 300]
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmrnet.benchmark import (
    BenchmarkConfig,
    method_settings,
    prepare,
    quiet_lightning,
    validation_interval,
)
from dmrnet.benchmark.runs import _fit_and_test
from dmrnet.evaluation import subset_outputs
from dmrnet.methods import Objective
from dmrnet.optim import configure
from dmrnet.runtime import thread_choice, training_flops
from dmrnet.settings import nest_settings
from dmrnet.training import MultimodalDataModule, MultimodalModule


def write_manifest(folder: Path, n: int = 30) -> Path:
    """``n`` samples of two sensor modalities (.npy) in 3 classes, with a learnable signal."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 3
        for name, shape in (("acc", (3, 50)), ("gyro", (16,))):
            x = rng.normal(size=shape).astype(np.float32) + label
            np.save(folder / f"{name}{i}.npy", x)
        rows.append({"acc": f"acc{i}.npy", "gyro": f"gyro{i}.npy", "label": f"c{label}"})
    path = folder / "sensors.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["acc", "gyro", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate(model, loader, data: MultimodalDataModule) -> float:
    """Mean over subsets of the accuracy, every subset from one encoding of each batch."""
    correct = torch.zeros(len(model.space))
    count = torch.zeros(len(model.space))
    model.eval()
    with torch.no_grad():
        for raw in loader:
            batch = data.on_after_batch_transfer(raw)
            for s, rows, out in subset_outputs(model, batch.inputs, batch.availability):
                target = batch.target if rows is None else batch.target[rows]
                correct[s] += (out.logits.argmax(dim=1) == target).sum()
                count[s] += len(target)
    model.train()
    return float((correct / count.clamp_min(1)).mean())


def plain_run(cfg: BenchmarkConfig, data: MultimodalDataModule, method: str) -> float:
    """The hand-written loop: the same steps and evaluations as the benchmark's run."""
    torch.manual_seed(cfg.seeds[0])
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes,
                              **nest_settings(method_settings(cfg, method)))
    model, objective = module.model, module.objective
    shapes = {m: tuple(s) for m, s in data.input_shapes.items()}
    torch.set_num_threads(thread_choice(training_flops(model, shapes, cfg.batch_size))[0])
    made = configure(module.optim, model.parameters(), cfg.epochs, lambda: 0)
    opt = made["optimizer"] if isinstance(made, dict) else made
    sched = made["lr_scheduler"]["scheduler"] if isinstance(made, dict) else None
    every = validation_interval(cfg)
    train, val, test = data.train_dataloader(), data.val_dataloader(), data.test_dataloader()
    best, best_state = -1.0, None
    if isinstance(objective, Objective):
        objective.start()
    for epoch in range(cfg.epochs):
        train.sampler.set_epoch(epoch)
        for raw in train:
            batch = data.on_after_batch_transfer(raw)
            avail = module.sampler.sample(batch.availability)
            out = model(batch.inputs, avail)
            loss = objective(out, batch.target, module.space.indices_of(avail))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        if isinstance(objective, Objective):
            objective.end_train_epoch(epoch, lambda v: v)
        if (epoch + 1) % every == 0:
            score = evaluate(model, val, data)
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return evaluate(model, test, data)


def case(name: str, cfg: BenchmarkConfig, reps: int) -> float:
    cfg, data = prepare(cfg)
    method = cfg.methods[0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def dmrnet_run() -> None:  # each into a folder of its own, as a benchmark writes
            _fit_and_test(cfg, Path(tmp) / str(next(runs)), f"{method}-seed{cfg.seeds[0]}",
                          cfg.seeds[0], data, method_settings(cfg, method), progress=False,
                          echo=lambda _: None)

        def plain() -> None:
            plain_run(cfg, data, method)

        times: dict[str, list[float]] = {"benchmark": [], "plain": []}
        for _ in range(reps):
            for key, fn in (("benchmark", dmrnet_run), ("plain", plain)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["benchmark"] / med["plain"]
    print(f"{name:<9} {cfg.epochs} epochs, validation every {validation_interval(cfg)}: "
          f"benchmark run {med['benchmark']:.2f} s, plain loop {med['plain']:.2f} s, ratio "
          f"{ratio:.2f}  target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}", flush=True)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="mfeat's epochs (default: its 30)")
    parser.add_argument("--min-steps", type=int, default=300,
                        help="the manifest's optimiser steps (one a epoch)")
    parser.add_argument("--case", choices=["mfeat", "manifest"], help="one case (default: both)")
    args = parser.parse_args()
    quiet_lightning()
    if args.case != "manifest":
        case("mfeat", BenchmarkConfig(out="unused", methods=["baseline"], seeds=[0],
                                  epochs=args.epochs), args.reps)
    if args.case == "mfeat":
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp))
        case("manifest", BenchmarkConfig(out="unused", dataset="manifest", methods=["baseline"],
                                         seeds=[0], dataset_kwargs={"manifest": str(manifest)},
                                         min_steps=args.min_steps), args.reps)


if __name__ == "__main__":
    sys.exit(main())
