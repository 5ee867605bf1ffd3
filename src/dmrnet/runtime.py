"""Device settings for a training run: TF32 on CUDA, a CPU thread count that suits the model,
Lightning's precision names, and the run's logger (CSV or TensorBoard).

Nothing here changes what a model computes on CPU in float32; on CUDA, ``matmul_precision
"high"`` lets float32 matmuls and convolutions use TF32 tensor cores (about 10 bits of
mantissa in the products, float32 accumulation), PyTorch's own recommendation for training.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.flop_counter import FlopCounterMode

from dmrnet.errors import ConfigError
from dmrnet.metrics import selection_mode

log = logging.getLogger("dmrnet")

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


def brief_hparams(params: Any) -> Any:
    """The hyperparameters as a logger records them: the data's preprocessing statistics
    (one number per input element, about 1,300 YAML lines for mfeat: most of a small run's
    logging time) are named, not listed; the checkpoint and the model folder hold them."""
    if not isinstance(params, typing.Mapping) or not params.get("preprocessing"):
        return params
    kept = {k: v for k, v in params.items() if k != "preprocessing"}
    kept["preprocessing"] = ("statistics of " + ", ".join(sorted(params["preprocessing"]))
                             + ": stored in the checkpoint")
    return kept


class _BriefCSVLogger(CSVLogger):
    def log_hyperparams(self, params: Any = None) -> None:  # type: ignore[override]
        super().log_hyperparams(brief_hparams(params))


class _BriefTensorBoardLogger(TensorBoardLogger):
    def log_hyperparams(self, params: Any, metrics: Any = None,  # type: ignore[override]
                        step: int | None = None) -> None:
        super().log_hyperparams(brief_hparams(params), metrics, step)


def create_logger(kind: str, save_dir: str | Path, name: str = "lightning_logs",
                  version: str | int | None = None) -> Logger:
    """Lightning's logger of ``kind`` ("csv" or "tensorboard") writing to
    ``save_dir/name/version_N`` (or ``save_dir/name/version``); its ``hparams.yaml`` names
    the preprocessing statistics instead of listing them (:func:`brief_hparams`)."""
    check_logger(kind)
    cls = _BriefCSVLogger if kind == "csv" else _BriefTensorBoardLogger
    return cls(save_dir=str(save_dir), name=name, version=version)


FLOPS_PER_THREAD = 1e9
"""Work of one training step (forward + backward, 2 x multiply-adds) that keeps one more CPU
thread busy; below it, synchronising threads costs about what it saves. Measured on the 2-core
CI machine (ms per step, 1 thread vs 2): mfeat MLPs, 0.29 GFLOP a step, 8.9 vs 8.8; synthetic,
0.12 GFLOP, 4.9 vs 4.8; rgbd-shapes, 4.4 GFLOP, 152 vs 106; a 10-GFLOP MLP, 246 vs 150.
``benchmarks/threads.py`` measures the choice against 1 thread and every core, idle and
beside a busy process."""

BUSY_SAMPLE_SECONDS = 0.2
"""How long :func:`busy_cores` watches the machine's CPU use before a run with more than one
thread's work chooses its threads."""


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (a container's ``--cpus``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_busy(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) jiffies of ``cpus`` (None: every CPU) from /proc/stat, or None."""
    busy = total = 0.0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                values = [float(v) for v in fields[:8]]
                idle = values[3] + values[4]  # idle + iowait
                busy += sum(values) - idle
                total += sum(values)
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total > 0 else None


def busy_cores(seconds: float = BUSY_SAMPLE_SECONDS) -> float:
    """How many of this process's cores other processes keep busy: watched for ``seconds``
    in /proc/stat (Linux), less this process's own use; elsewhere the 1-minute load average.
    """
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    before, own_before, t0 = _cpu_busy(cpus), _own_cpu(), time.perf_counter()
    if before is None:
        try:
            return max(0.0, os.getloadavg()[0] - 1.0)  # less this process
        except (AttributeError, OSError):
            return 0.0
    time.sleep(seconds)
    after, own_after, wall = _cpu_busy(cpus), _own_cpu(), time.perf_counter() - t0
    if after is None or after[1] <= before[1]:
        return 0.0
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    machine = n * (after[0] - before[0]) / (after[1] - before[1])  # busy cores, all processes
    return max(0.0, machine - (own_after - own_before) / max(wall, 1e-9))


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def cpu_threads_for(flops_per_step: float, cores: int | None = None,
                    busy: float = 0.0) -> int:
    """Intra-op threads for a model whose training step costs ``flops_per_step``: one per
    :data:`FLOPS_PER_THREAD` (a small model gets one), at most the ``cores`` that ``busy``
    cores of other processes leave free (at least one).

    PyTorch's threads wait for each other at every op: on a core another process is using,
    a thread stalls all of them, so a loaded machine gets fewer threads, never more than are
    free. The count is the same for the same model on any machine with that many free cores,
    and results are reproducible for a given count (it changes the order of float sums).
    """
    return max(1, min(free_cores(cores, busy), int(flops_per_step // FLOPS_PER_THREAD)))


def free_cores(cores: int | None = None, busy: float | None = None) -> int:
    """Of ``cores`` (default :func:`usable_cores`), those that ``busy`` cores of other
    processes (default: :func:`busy_cores`, measured now) leave free; at least one."""
    cores = cores or usable_cores()
    busy = busy_cores() if busy is None else busy
    return max(1, cores - math.floor(busy + 0.5))


def thread_choice(flops_per_step: float, processes: int = 1) -> tuple[int, str]:
    """Threads for a run's training step and why, in words for the run's output.
    ``processes``: training processes on this machine (CPU DDP) sharing its cores."""
    cores = max(1, usable_cores() // max(1, processes))
    gflop = flops_per_step / 1e9
    wanted = max(1, int(flops_per_step // FLOPS_PER_THREAD))
    if wanted == 1 or cores == 1:
        why = (f"a {gflop:.2g}-GFLOP step is under 2 threads' work" if wanted == 1 else
               f"{cores} core{'s' if cores > 1 else ''} for this process")
        return 1, why
    busy = busy_cores()
    threads = cpu_threads_for(flops_per_step, cores, busy)
    share = f" of {processes} processes" if processes > 1 else ""
    return threads, (f"a {gflop:.2g}-GFLOP step; {cores} cores{share}, other processes busy "
                     f"on {busy:.1f}")


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


class DeviceSetup(L.Callback):
    """Device settings for the run (the benchmark and ``dmrnet fit|validate|test`` add it).

    Args:
        matmul_precision: on CUDA, ``torch.set_float32_matmul_precision`` ("high" = TF32
            matmuls and convolutions, the default; "highest" = strict float32).
        cpu_threads: on CPU, intra-op threads: "auto" sizes them to the model's work per step
            and the cores other processes leave free (:func:`thread_choice`), a number sets
            them, None keeps torch's. "auto" leaves the user's choice alone: an
            ``OMP_NUM_THREADS`` or a ``torch.set_num_threads`` call (:func:`user_threads`).
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
        self._flops: tuple[Any, int] = (None, 0)  # (model, shapes, batch) and its step's FLOPs
        self.threads: int | None = None  # what was chosen on CPU
        self.reason = ""  # the choice in words, for the run's output

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self._restore = {"matmul": torch.get_float32_matmul_precision(),
                             "cudnn_tf32": torch.backends.cudnn.allow_tf32}
            torch.set_float32_matmul_precision(self.matmul_precision)
            torch.backends.cudnn.allow_tf32 = self.matmul_precision != "highest"
        elif device.type == "cpu" and self.cpu_threads is not None:
            if self.cpu_threads == "auto":
                user = user_threads()
                if user is not None:
                    self.threads = user
                    self.reason = (f"{_threads(user)}, as set by the user "
                                   f"({user_threads_source()})")
                    return
                batch = self.batch_size or int(getattr(trainer.datamodule, "batch_size", 64))
                shapes = {m: tuple(s) for m, s in pl_module.hparams["input_shapes"].items()}
                key = (id(pl_module.model), tuple(sorted(shapes.items())), batch)
                if self._flops[0] != key:  # counted once for a fit and the test after it
                    self._flops = (key, training_flops(pl_module.model, shapes, batch))
                # processes on this machine share its cores (CPU DDP runs one per device)
                threads, why = thread_choice(self._flops[1], int(trainer.num_devices))
            else:
                threads, why = int(self.cpu_threads), "as asked"
            self._restore = {"threads": torch.get_num_threads()}
            set_threads(threads)
            self.threads = threads
            self.reason = f"{_threads(threads)} ({why})"
            log.info("%s", self.reason)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "threads" in self._restore:
            set_threads(self._restore["threads"])
        if "matmul" in self._restore:
            torch.set_float32_matmul_precision(self._restore["matmul"])
            torch.backends.cudnn.allow_tf32 = self._restore["cudnn_tf32"]
        self._restore = {}


_SET_BY_DMRNET: list[int] = []  # the thread count dmrnet set last (empty: none)
_AT_IMPORT = torch.get_num_threads()  # torch's count when dmrnet was imported


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)``, remembered as dmrnet's choice (not the user's)."""
    torch.set_num_threads(n)
    _SET_BY_DMRNET[:] = [n]


def user_threads() -> int | None:
    """The intra-op thread count the user chose, or None: ``OMP_NUM_THREADS`` in the
    environment, or a ``torch.set_num_threads`` call (seen as a count that is neither the one
    torch had when dmrnet was imported nor the last one dmrnet set)."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    now = torch.get_num_threads()
    ours = _SET_BY_DMRNET[0] if _SET_BY_DMRNET else None
    if now != ours and now != _AT_IMPORT:
        return now
    return None


def user_threads_source() -> str:
    return ("OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS", "").strip()
            else "torch.set_num_threads")


def _threads(n: int) -> str:
    return f"{n} CPU thread{'s' if n != 1 else ''}"


TRAINER_DEFAULTS: dict[str, Any] = {"deterministic": True}
"""What every dmrnet training gives Lightning's Trainer: deterministic kernels (a rerun on the
same machine and thread count is bit-exact). ``dmrnet fit`` takes them as its CLI's defaults
(a user's ``--trainer.*`` wins); the benchmark with its own settings (:func:`make_trainer`)."""

SELECTED_ON = "val/mean"
"""What checkpoints are selected on: the validation split's mean over subsets, never test."""


def make_trainer(**settings: Any) -> L.Trainer:
    """A Trainer with :data:`TRAINER_DEFAULTS` under ``settings``."""
    return L.Trainer(**{**TRAINER_DEFAULTS, **settings})


class ResumableCheckpoint(ModelCheckpoint):
    """``dmrnet fit``'s checkpoints: Lightning's, except that a run resumed into a new version
    folder keeps the earlier folder's best epoch as its best (Lightning keeps only its path
    there, so the next epoch became "best" whatever its score) and never deletes a file of
    the earlier folder when a better epoch replaces it."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.earlier: set[str] = set()
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            self.best_model_score = state_dict.get("best_model_score")
            self.best_k_models = dict(state_dict.get("best_k_models") or {})
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.earlier = {str(Path(p).resolve()) for p in self.best_k_models}

    def _remove_checkpoint(self, trainer: Any, filepath: str) -> None:
        if str(Path(filepath).resolve()) in getattr(self, "earlier", set()):
            return  # the resumed run's folder stays as it was
        super()._remove_checkpoint(trainer, filepath)


@dataclass(frozen=True)
class Checkpointing:
    """Which checkpoint files a training keeps; selection is the same for every training
    (:data:`SELECTED_ON`, in the task metric's direction). ``dmrnet fit`` and a benchmark run
    keep different files on purpose: see :data:`FIT_CHECKPOINTS` and :data:`RUN_CHECKPOINTS`.
    """

    filename: str
    save_last: bool
    weights_only: bool

    def callback(self, dirpath: str | Path, metric: str, select: str = "best",
                 epochs: int | None = None) -> ModelCheckpoint:
        """The callback: the best validated epoch on :data:`SELECTED_ON` (``select``
        "smoothed": on ``val/smoothed``), or with "last" the weights after the last of
        ``epochs``, validated or not."""
        if select == "last":
            return ModelCheckpoint(dirpath=dirpath, filename=self.filename, monitor=None,
                                   save_top_k=1, save_weights_only=self.weights_only,
                                   save_on_train_epoch_end=True, every_n_epochs=epochs)
        return ModelCheckpoint(dirpath=dirpath, filename=self.filename,
                               mode=selection_mode(metric), save_top_k=1,
                               save_last=self.save_last,
                               monitor="val/smoothed" if select == "smoothed" else SELECTED_ON,
                               save_weights_only=self.weights_only)

    def parser_defaults(self) -> dict[str, Any]:
        """The same as defaults of the CLI's ``checkpoint.*`` arguments (``mode: auto``: the
        metric's direction, resolved once the metric is known)."""
        return {"checkpoint.monitor": SELECTED_ON, "checkpoint.mode": "auto",
                "checkpoint.filename": self.filename, "checkpoint.save_last": self.save_last}


FIT_CHECKPOINTS = Checkpointing("best-{epoch}", save_last=True, weights_only=False)
"""``dmrnet fit``: the epoch in the best file's name, and ``last.ckpt`` with the optimiser's
state for ``--resume``."""

RUN_CHECKPOINTS = Checkpointing("best", save_last=False, weights_only=True)
"""A benchmark run: one ``best.ckpt`` at a path its later stages, analyses and exports name;
whole runs resume, so no ``last.ckpt``; weights, settings and choices only (a third of the
bytes, written at every improvement)."""
