"""Device settings for a training run: TF32 on CUDA, a CPU thread count that suits the model,
Lightning's precision names, and the run's logger (CSV or TensorBoard).

Nothing here changes what a model computes on CPU in float32; on CUDA, ``matmul_precision
"high"`` lets float32 matmuls and convolutions use TF32 tensor cores (about 10 bits of
mantissa in the products, float32 accumulation), PyTorch's own recommendation for training.
"""

from __future__ import annotations

import importlib.util
import os
import typing
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.flop_counter import FlopCounterMode

from dmrnet.errors import ConfigError

PRECISIONS: tuple[str, ...] = typing.get_args(_PRECISION_INPUT_STR)
"""Lightning's precision names ("32-true", "bf16-mixed", "16-mixed", ...)."""

MATMUL_PRECISIONS = ("highest", "high", "medium")

LOGGERS = ("csv", "tensorboard")
"""The loggers ``--logger`` chooses from: Lightning's CSVLogger (the default; ``metrics.csv``)
and TensorBoardLogger (``pip install tensorboard``, or dmrnet's ``tensorboard`` extra)."""


def check_logger(kind: str) -> None:
    """A one-line error for an unknown logger, or TensorBoard without its package, before any
    work."""
    if kind not in LOGGERS:
        raise ConfigError(f"logger {kind!r} is not one of {list(LOGGERS)}")
    if kind == "tensorboard" and not any(importlib.util.find_spec(p) for p in
                                         ("tensorboard", "tensorboardX")):
        raise ConfigError("--logger tensorboard needs the tensorboard package: pip install "
                          "tensorboard (or pip install 'dmrnet[tensorboard]'), or use --logger csv")


def create_logger(kind: str, save_dir: str | Path, name: str = "lightning_logs",
                  version: str | int | None = None) -> Logger:
    """Lightning's logger of ``kind`` ("csv" or "tensorboard") writing to
    ``save_dir/name/version_N`` (or ``save_dir/name/version``)."""
    check_logger(kind)
    cls = CSVLogger if kind == "csv" else TensorBoardLogger
    return cls(save_dir=str(save_dir), name=name, version=version)

FLOPS_PER_THREAD = 1e9
"""Work of one training step (forward + backward, 2 x multiply-adds) that keeps one more CPU
thread busy; below it, synchronising threads costs about what it saves. Measured on the 2-core
CI machine (ms per step, 1 thread vs 2): mfeat MLPs, 0.29 GFLOP a step, 8.9 vs 8.8; synthetic,
0.12 GFLOP, 4.9 vs 4.8; rgbd-shapes, 4.4 GFLOP, 152 vs 106; a 10-GFLOP MLP, 246 vs 150. With
torch's default of one thread per core, the mfeat benchmark took 2 min 41 s on 16 cores
against 1 min 29 s on 2."""

MIN_THREADS = 2
"""Threads even the smallest model gets (where there are that many cores): validation stacks
every subset into large head batches, which two threads do run faster (the mfeat benchmark took
about 20 % longer on one thread than on two on the 2-core CI machine)."""


def check_precision(precision: str | int | None) -> str | None:
    """A Lightning precision name, or a one-line error listing them."""
    if precision is None:
        return None
    text = str(precision)
    if text not in PRECISIONS:
        raise ConfigError(f"unknown precision {text!r}; choose one of {list(PRECISIONS)} "
                          "(bf16-mixed runs on CPU and GPU)")
    return text


def training_flops(model: torch.nn.Module, input_shapes: dict[str, Any], batch_size: int) -> int:
    """Floating-point operations of one training step: 3 x the forward of ``batch_size``
    samples, counted (matmuls and convolutions) on a forward of two zero samples."""
    inputs = {m: torch.zeros(2, *shape) for m, shape in input_shapes.items()}
    availability = torch.ones(2, len(inputs), dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs, availability)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() * 3 * batch_size / 2)


def cpu_threads_for(flops_per_step: float, cores: int | None = None) -> int:
    """Intra-op threads for a model whose training step costs ``flops_per_step``: one per
    :data:`FLOPS_PER_THREAD`, at least :data:`MIN_THREADS`, at most the cores. The choice
    depends only on the model and the core count, so more cores never give a small model more
    threads than it can use, and a small model computes the same on every machine with at
    least two cores (the thread count changes the order of floating-point sums)."""
    cores = cores or os.cpu_count() or 1
    return min(cores, max(MIN_THREADS, int(flops_per_step // FLOPS_PER_THREAD)))


class DeviceSetup(L.Callback):
    """Device settings for the run (the benchmark and ``dmrnet fit|validate|test`` add it).

    Args:
        matmul_precision: on CUDA, ``torch.set_float32_matmul_precision`` ("high" = TF32
            matmuls and convolutions, the default; "highest" = strict float32).
        cpu_threads: on CPU, intra-op threads: "auto" sizes them to the model's work per step
            (:func:`cpu_threads_for`), a number sets them, None keeps torch's default. "auto"
            leaves the default alone when ``OMP_NUM_THREADS`` is set.
        batch_size: samples per training step for "auto" (None: the data module's).
    """

    def __init__(self, matmul_precision: str = "high", cpu_threads: int | str | None = "auto",
                 batch_size: int | None = None) -> None:
        if matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"matmul_precision must be one of {list(MATMUL_PRECISIONS)}; got "
                              f"{matmul_precision!r}")
        if not (cpu_threads is None or cpu_threads == "auto"
                or (isinstance(cpu_threads, int) and cpu_threads >= 1)):
            raise ConfigError(f"cpu_threads must be 'auto', a positive number or None; got "
                              f"{cpu_threads!r}")
        self.matmul_precision = matmul_precision
        self.cpu_threads = cpu_threads
        self.batch_size = batch_size
        self._restore: dict[str, Any] = {}
        self.threads: int | None = None  # what was chosen on CPU

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self._restore = {"matmul": torch.get_float32_matmul_precision(),
                             "cudnn_tf32": torch.backends.cudnn.allow_tf32}
            torch.set_float32_matmul_precision(self.matmul_precision)
            torch.backends.cudnn.allow_tf32 = self.matmul_precision != "highest"
        elif device.type == "cpu" and self.cpu_threads is not None:
            if self.cpu_threads == "auto":
                if "OMP_NUM_THREADS" in os.environ:
                    return
                batch = self.batch_size or int(getattr(trainer.datamodule, "batch_size", 64))
                shapes = {m: tuple(s) for m, s in pl_module.hparams["input_shapes"].items()}
                # processes on this machine share its cores (CPU DDP runs one per device)
                cores = max(1, (os.cpu_count() or 1) // max(1, int(trainer.num_devices)))
                threads = cpu_threads_for(training_flops(pl_module.model, shapes, batch), cores)
            else:
                threads = int(self.cpu_threads)
            self._restore = {"threads": torch.get_num_threads()}
            torch.set_num_threads(threads)
            self.threads = threads

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "threads" in self._restore:
            torch.set_num_threads(self._restore["threads"])
        if "matmul" in self._restore:
            torch.set_float32_matmul_precision(self._restore["matmul"])
            torch.backends.cudnn.allow_tf32 = self._restore["cudnn_tf32"]
        self._restore = {}
