"""Methods x seeds orchestration: train, select on validation, test every subset, write results.

``run_benchmark`` trains each method for each seed with Lightning, picks the checkpoint with the
best validation mean-over-subsets metric, evaluates every non-empty subset on the test split and
writes ``results.json``, ``results.csv``, ``report.md`` and ``per_subset.png`` (see
:mod:`dmrnet.report`). A method's run is its stages in order (most methods have one; see
:class:`dmrnet.methods.Method`); the glue names no method.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import multiprocessing
import numbers
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dmrnet.analysis import analysis_markdown, analyze_run, model_statistics
from dmrnet.comparison import (
    MIN_SEEDS,
    default_seed_count,
    difference,
    reducer,
    shared_test_noise,
)
from dmrnet.data import DATASETS
from dmrnet.data.cache import SampleCache, check_cache_mode
from dmrnet.errors import (
    COUNT,
    COUNT_FROM_1,
    FRACTION,
    DivergedError,
    DMRNetError,
    Rule,
    RunInterruptedError,
    first_line,
    require,
)
from dmrnet.methods import (
    METHODS,
    RunRecord,
    Stage,
    StageResult,
    get_method,
    options_summary,
    upgrade_record,
)
from dmrnet.methods.base import LEGACY_OPTIM, LEGACY_OPTIONS
from dmrnet.metrics import get_task_metric, worst_subset
from dmrnet.optim import OptimConfig
from dmrnet.outputs import MARKER, OutputError, RunFolder
from dmrnet.report import format_summary, robustness_profile, write_results
from dmrnet.runtime import (
    FLOPS_PER_THREAD,
    DeviceSetup,
    check_logger,
    check_precision,
    create_logger,
    free_cores,
    set_threads,
    training_flops,
    usable_cores,
    user_threads,
)
from dmrnet.signals import Stopped, exit_code, lightning_interrupts, stop_word
from dmrnet.subsets import SubsetSpace
from dmrnet.training import (
    SELECTIONS,
    MultimodalDataModule,
    MultimodalModule,
    ValidationHistory,
    check_batch_size,
    last_batch_of_one,
)

log = logging.getLogger("dmrnet")


class BenchmarkError(DMRNetError):
    """A benchmark request that cannot run as given."""


@dataclass
class BenchmarkConfig:
    """What to run. ``model`` holds :class:`~dmrnet.training.MultimodalModule` keyword arguments
    shared by every method (encoder, embed_dim, optim, ...); ``options`` the methods' own
    options: "KEY" for every method in the run that has KEY, "METHOD.KEY" for one method."""

    out: str
    dataset: str = "mfeat"
    root: str | None = None
    modalities: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: ["baseline", "dmrnet"])
    seeds: list[int] | None = None  # None = 0-4 (comparison.default_seed_count)
    epochs: int | None = None  # None = the dataset's default (mfeat 30, rgbd-shapes 10)
    batch_size: int | None = None  # None = the dataset's default (64; rgbd-shapes 32)
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None  # Lightning's names; None = "32-true"
    progress: bool | None = None  # None = a progress bar when the terminal is interactive
    overwrite: bool = False
    keep_checkpoints: bool = True
    logger: str = "csv"  # Lightning's CSVLogger or TensorBoardLogger, see runtime.LOGGERS
    min_steps: int = 300  # with epochs None and no dataset default: at least this many steps
    epochs_note: str = ""  # set by prepare() when the epochs were scaled to the data
    cache: str = "auto"  # decoded samples in memory: auto (a budget), memory, none
    threads: int | None = None  # CPU intra-op threads; None = chosen per run (runtime.py)
    max_validations: int = 30  # validate every ceil(epochs / this) epochs; 0 = every epoch
    jobs: int | None = None  # runs trained at once; None = one per free core for small models
    select: str = "best"  # the checkpoint tested: best validation, last epoch, or smoothed


_TEXT = ("text", (str,))
_WHOLE = ("a whole number", (numbers.Integral,))
_FLAG = ("true or false", (bool,))
_MAP = ("a mapping", (Mapping,))
_NAMES = ("a list of names, e.g. ['a', 'b']", (list, tuple))
FIELD_TYPES: dict[str, tuple[str, tuple[type, ...], bool]] = {
    "out": ("a folder path", (str, os.PathLike), False), "dataset": (*_TEXT, False),
    "root": ("a folder path", (str, os.PathLike), True), "modalities": (*_NAMES, True),
    "methods": (*_NAMES, False), "seeds": ("a list of whole numbers, e.g. [0, 1, 2]",
                                          (list, tuple), True),
    "epochs": (*_WHOLE, True), "batch_size": (*_WHOLE, True), "model": (*_MAP, False),
    "options": (*_MAP, False), "dataset_kwargs": (*_MAP, False), "accelerator": (*_TEXT, False),
    "devices": ("a whole number, a list of device indices or text such as 'auto'",
                (numbers.Integral, str, list, tuple), False),
    "precision": ("text such as 'bf16-mixed'", (str, numbers.Integral), True),
    "progress": (*_FLAG, True), "overwrite": (*_FLAG, False),
    "keep_checkpoints": (*_FLAG, False), "logger": (*_TEXT, False),
    "min_steps": (*_WHOLE, False), "epochs_note": (*_TEXT, False), "cache": (*_TEXT, False),
    "threads": (*_WHOLE, True), "max_validations": (*_WHOLE, False), "jobs": (*_WHOLE, True),
    "select": (*_TEXT, False),
}
"""Each :class:`BenchmarkConfig` field's type: its wording, the accepted types, and whether
None is allowed (checked first, so a string for a list or a float for a count is one line)."""


def check_types(cfg: object) -> None:
    """A :class:`BenchmarkError` naming the first setting of ``cfg`` (a BenchmarkConfig) whose
    value has the wrong type: the API's callers get what the command line's parser gives."""
    if not isinstance(cfg, BenchmarkConfig):
        raise BenchmarkError(f"run_benchmark takes a BenchmarkConfig, not {type(cfg).__name__}"
                             " (e.g. BenchmarkConfig(**settings))")
    for name, (wording, types, optional) in FIELD_TYPES.items():
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        items = value if isinstance(value, list | tuple) and name != "devices" else []
        if name in ("modalities", "methods"):
            bad = bad or not all(isinstance(v, str) for v in items)
        if name == "seeds":
            bad = bad or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in items)
        if bad:
            raise BenchmarkError(f"{name} must be {wording}{' or None' if optional else ''}; "
                                 f"got {value!r}")


def apply_dataset_defaults(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """``cfg`` with the dataset's defaults filled in (its default options only where a method
    in the run has them); ``model.method_kwargs`` (e.g. from a config file) counts as options
    for every method."""
    defaults = DATASETS.defaults(cfg.dataset)
    model = _merge(defaults.model, cfg.model)
    given = model.pop("method_kwargs", None) or {}
    # a dataset's default options apply to the methods in the run that have them
    offered = {k: v for k, v in defaults.options.items()
               if any(m in METHODS and k in get_method(m).option_names() for m in cfg.methods)}
    options = {**offered, **given, **cfg.options}
    epochs = cfg.epochs if cfg.epochs is not None else defaults.epochs or 30
    batch = cfg.batch_size if cfg.batch_size is not None else defaults.batch_size or 64
    seeds = cfg.seeds if cfg.seeds is not None else list(range(default_seed_count()))
    return replace(cfg, model=model, options=options, epochs=epochs, batch_size=batch,
                   seeds=seeds)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``; where both hold a mapping, key by key (one level)."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = {**old, **value} if both else value
    return out


def set_dotted(settings: dict[str, Any], path: str, value: Any) -> None:
    """Set ``settings[a][b] = value`` for the path "a.b" (mappings made as needed)."""
    *parents, key = path.split(".")
    target = settings
    for part in parents:
        target[part] = dict(target.get(part) or {})
        target = target[part]
    target[key] = value


def method_settings(cfg: BenchmarkConfig, method: str) -> dict[str, Any]:
    """The shared model settings of ``method``'s own model, with its options (those in
    ``cfg.options`` that it has; "METHOD.KEY" entries for it win over plain "KEY" ones)."""
    known = set(get_method(method).option_names())
    shared = {k: v for k, v in cfg.options.items() if "." not in k and k in known}
    own = {k.split(".", 1)[1]: v for k, v in cfg.options.items()
           if k.startswith(method + ".")}
    kwargs = {**shared, **own}
    return {**cfg.model, **({"method_kwargs": kwargs} if kwargs else {}), "method": method}


def _check_options(cfg: BenchmarkConfig) -> None:
    """Every option names a method in the run that has it (values are checked by the
    method when its models are built)."""
    for key in cfg.options:
        method, _, name = key.rpartition(".")
        if method:
            if method not in cfg.methods:
                raise BenchmarkError(f"option {key!r} is for method {method!r}, which is not "
                                     f"in this run ({', '.join(cfg.methods)})")
            if name not in get_method(method).option_names():
                raise BenchmarkError(f"method {method!r} has no option {name!r}; its "
                                     f"options: {get_method(method).option_names() or 'none'}")
        elif not any(key in get_method(m).option_names() for m in cfg.methods):
            raise BenchmarkError(f"no method in this run ({', '.join(cfg.methods)}) has option "
                                 f"{key!r}. {options_summary()}")


def _check_config(cfg: BenchmarkConfig) -> None:
    DATASETS.get(cfg.dataset)
    if not cfg.methods:
        raise BenchmarkError("no method given; choose from " + ", ".join(METHODS.names()))
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(f"unknown method {unknown[0]!r}; choose from {METHODS.names()}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise BenchmarkError(f"a method is listed twice: {cfg.methods}")
    for what, items in (("seed", cfg.seeds or []), ("modality", cfg.modalities or [])):
        twice = next((v for v in items if list(items).count(v) > 1), None)
        if twice is not None:  # a seed twice would count one run as two in every statistic
            raise BenchmarkError(f"{what} {twice!r} is listed twice in {list(items)}; list "
                                 "each once")
    if not cfg.seeds:
        raise BenchmarkError("no seed given, e.g. --seeds 0,1,2")
    check_cache_mode(cfg.cache)
    if cfg.select not in SELECTIONS:
        raise BenchmarkError(f"--select {cfg.select!r} is not one of {', '.join(SELECTIONS)}")
    if cfg.epochs < 1:
        raise BenchmarkError(f"epochs must be at least 1; got {cfg.epochs}")
    _check_numbers(cfg)
    check_precision(cfg.precision)
    check_logger(cfg.logger)
    what = (f"accelerator {cfg.accelerator!r}, devices {cfg.devices!r}, precision "
            f"{cfg.precision or '32-true'!r}")
    try:  # Lightning's own checks of accelerator x devices x precision, before any work
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices,
                              precision=cfg.precision, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False)
    except (ValueError, RuntimeError, MisconfigurationException) as err:
        raise BenchmarkError(f"{what}: {first_line(err)}") from err
    if cfg.precision is not None and probe.precision != cfg.precision:
        device = probe.strategy.root_device.type
        raise BenchmarkError(f"{what}: {cfg.precision} does not run on {device} (Lightning "
                             f"would silently use {probe.precision}); pass --precision "
                             f"{probe.precision}")
    known = set(inspect.signature(MultimodalModule.__init__).parameters) - {
        "self", "modalities", "input_shapes", "num_classes", "class_names", "preprocessing",
        "method", "method_kwargs"}
    unknown = sorted(set(cfg.model) - known)
    if unknown:
        hint = (" (choose methods with --methods)" if unknown[0] == "method" else
                " (method options go in --option or 'options:')"
                if unknown[0] in LEGACY_OPTIONS else
                " (optimisation settings go under optim, e.g. --set optim.lr=0.01)"
                if unknown[0] in LEGACY_OPTIM else
                " (data settings go in dataset_kwargs of a --config file)")
        raise BenchmarkError(f"{unknown[0]!r} is not a model setting; model settings: "
                             f"{sorted(known)}{hint}")
    OptimConfig.of(cfg.model.get("optim"))
    _check_options(cfg)


NUMBER_RULES: dict[str, Rule] = {"embed_dim": COUNT_FROM_1, "label_smoothing": FRACTION}
"""Ranges of the numeric shared model settings, checked before any work (the optimisation's
and the methods' own options check themselves)."""


def _check_numbers(cfg: BenchmarkConfig) -> None:
    bad_seeds = [s for s in cfg.seeds or [] if not isinstance(s, int) or not 0 <= s < 2**32]
    if bad_seeds:  # numpy's and the data splits' seeds are 32-bit
        raise BenchmarkError(f"seeds must be whole numbers from 0 to {2**32 - 1}; got "
                             f"{bad_seeds[0]!r}")
    if not isinstance(cfg.min_steps, int) or isinstance(cfg.min_steps, bool) or cfg.min_steps < 0:
        raise BenchmarkError(f"min_steps must be a whole number >= 0; got {cfg.min_steps!r}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise BenchmarkError(f"batch size must be at least 1; got {cfg.batch_size}")
    for key, rule in (("max_validations", COUNT), ("threads", COUNT_FROM_1),
                      ("jobs", COUNT_FROM_1)):
        if getattr(cfg, key) is not None:
            require(key.replace("_", "-"), getattr(cfg, key), rule, BenchmarkError)
    for key, rule in NUMBER_RULES.items():
        if cfg.model.get(key) is not None:
            require(key, cfg.model[key], rule, BenchmarkError)


def quiet_lightning() -> None:
    """Keep the benchmark's console to its own progress lines."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    filter_noise()


def filter_noise() -> None:
    """Silence Lightning warnings that do not apply to in-memory data on one process."""
    for pattern in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*number of training batches.*is smaller than the logging interval.*",
        ".*litlogger.*",
        ".*tensorboardX.*",
        ".*The dirpath has changed from.*",  # test/validate of a checkpoint of an earlier run
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _module(data: MultimodalDataModule, module_kwargs: dict[str, Any]) -> MultimodalModule:
    """A method's module for ``data`` (its modalities, shapes, classes and statistics)."""
    linked = {"class_names": data.class_names, "preprocessing": data.preprocessing}
    if data.class_weights is not None and "class_weights" not in module_kwargs:
        linked["class_weights"] = data.class_weights
    return MultimodalModule(
        data.modalities, data.input_shapes, data.num_classes, **linked, **module_kwargs,
    )


def _with_inputs(stage: Stage, checkpoints: dict[str, str]) -> dict[str, Any]:
    """A stage's settings with the checkpoints it takes from earlier stages filled in (a
    dotted path sets a key of a nested mapping, e.g. ``method_kwargs.teacher_checkpoint``)."""
    settings = dict(stage.settings)
    for path, source in stage.needs.items():
        set_dotted(settings, path, checkpoints[source])
    return settings


def _run_method(cfg: BenchmarkConfig, out: Path, name: str, seed: int,
                data: MultimodalDataModule, higher_is_better: bool, progress: bool,
                echo: Callable[[str], None], statistics: dict[tuple[str, int], Any] | None,
                shown: set[str] | None = None) -> RunRecord:
    """Train and test each stage of a method in order; its results make the run's record.
    With ``statistics``, the analysis statistics of the run's own model (its stage named "")
    are computed while it is loaded and stored there under (method, seed)."""
    method = get_method(name)
    stages = method.stages(method_settings(cfg, name), data.modalities)
    later = {src for stage in stages for src in stage.needs.values()}  # kept for later stages
    results: list[StageResult] = []
    checkpoints: dict[str, str] = {}
    try:
        for i, stage in enumerate(stages):
            stage_data = data if stage.modalities is None else _data_module(
                cfg, seed, stage.modalities, data.cache)
            run_name = stage.run_name(name, seed)
            module, tr_s, ev_s, best, threads = _fit_and_test(
                cfg, out, run_name, seed, stage_data, _with_inputs(stage, checkpoints), progress,
                keep=True if stage.name in later else None, echo=echo, shown=shown)
            checkpoints[stage.name] = str(out / "checkpoints" / run_name / "best.ckpt")
            if statistics is not None and not stage.name:  # the best weights are loaded
                statistics[(name, seed)] = model_statistics(
                    module, map(stage_data.on_after_batch_transfer, stage_data.test_dataloader()))
            res = module.test_results
            results.append(StageResult(
                stage=stage, per_subset=res["per_subset"], mean=res["mean"], worst=res["worst"],
                best_epoch=best, objective_state=dict(module.objective_state),
                selections=list(module.selections),
                per_subset_all=res.get("per_subset_all"), loss_terms=list(module.loss_terms),
                train_seconds=tr_s, eval_seconds=ev_s, cpu_threads=threads,
                test_samples=module.test_samples))
            if len(stages) > 1 and (progress or (i + 1) % 8 == 0 or i + 1 == len(stages)):
                echo(f"      {name}: {i + 1}/{len(stages)} stages trained")
    except DivergedError:  # the run is left out (see _attempt); its checkpoints are not kept
        for stage in stages:
            shutil.rmtree(out / "checkpoints" / stage.run_name(name, seed), ignore_errors=True)
        raise
    if not cfg.keep_checkpoints:
        for stage in stages:
            if stage.name in later:
                shutil.rmtree(out / "checkpoints" / stage.run_name(name, seed),
                              ignore_errors=True)
    combined = {"train_seconds": sum(r.train_seconds for r in results),
                "eval_seconds": results[-1].eval_seconds,
                **method.combine(results, higher_is_better)}
    save_samples(out / SAMPLES / f"{name}-seed{seed}.npz", method.combine_samples(results))
    stage_seconds = ({r.stage.name: r.train_seconds for r in results if r.stage.name}
                     if len(results) > 1 else {})
    stage_threads = ({r.stage.name: r.cpu_threads for r in results if r.stage.name}
                     if len(results) > 1 else {})
    return RunRecord(method=name, seed=seed, stage_train_seconds=stage_seconds,
                     cpu_threads=results[-1].cpu_threads, stage_cpu_threads=stage_threads,
                     **combined)


def _fit_and_test(
    cfg: BenchmarkConfig,
    out: Path,
    run_name: str,
    seed: int,
    data: MultimodalDataModule,
    module_kwargs: dict[str, Any],
    progress: bool,
    keep: bool | None = None,
    echo: Callable[[str], None] = print,
    shown: set[str] | None = None,
) -> tuple[MultimodalModule, float, float, int, int | None]:
    """Train one stage, select its checkpoint on validation and test it; the CPU thread
    choice is echoed unless ``shown`` holds it already. Returns the module, the training and
    evaluation seconds, the checkpoint's epoch and the CPU threads it trained with (None:
    not on CPU)."""
    shown = set() if shown is None else shown
    L.seed_everything(seed, workers=True, verbose=False)
    module = _module(data, module_kwargs)
    ckpt_dir = out / "checkpoints" / run_name
    mode = "max" if module.task_metric.higher_is_better else "min"
    # the weights, settings and choices (export, analysis and later stages read them), not
    # the optimiser's state: a third of the bytes, written at every improvement
    interval = validation_interval(cfg)
    history = ValidationHistory(window=min(5, max(1, cfg.epochs // interval)),
                                higher_is_better=module.task_metric.higher_is_better)
    if cfg.select == "last":  # the weights after the last epoch, validated or not
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor=None, save_top_k=1,
            save_weights_only=True, save_on_train_epoch_end=True, every_n_epochs=cfg.epochs)
    else:
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", mode=mode, save_top_k=1, save_last=False,
            monitor="val/smoothed" if cfg.select == "smoothed" else "val/mean",
            save_weights_only=True)
    device = DeviceSetup(batch_size=cfg.batch_size, cpu_threads=cfg.threads or "auto")
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        deterministic=True,
        logger=create_logger(cfg.logger, out / "logs", name=run_name, version=""),
        precision=cfg.precision,
        callbacks=[history, checkpoint, device],
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        check_val_every_n_epoch=interval,
    )
    try:
        with lightning_interrupts(trainer):
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=data)
            train_seconds = time.perf_counter() - t0
            note = history.chance_note(len(data.data.val)) \
                if cfg.select == "best" and module.task_metric.name == "accuracy" else None
            for line in (device.reason, note):
                if line and line not in shown:  # said once per benchmark
                    shown.add(line)
                    echo(f"      {line}")
            t0 = time.perf_counter()
            trainer.test(module, datamodule=data, ckpt_path="best", verbose=False,
                         weights_only=True)
            eval_seconds = time.perf_counter() - t0
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say which run it stopped
        stage = trainer.state.fn.value if trainer.state.fn is not None else "start-up"
        raise Stopped(f"{run_name} ({stage}, epoch {trainer.current_epoch})") from None
    best_epoch = -1 if module.checkpoint_epoch is None else module.checkpoint_epoch
    if not (cfg.keep_checkpoints if keep is None else keep):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return module, train_seconds, eval_seconds, best_epoch, device.threads


def validation_interval(cfg: BenchmarkConfig) -> int:
    """Epochs between validations: every epoch up to ``cfg.max_validations`` epochs, then
    every k-th epoch so that a run validates at most that many times (a 300-epoch run of
    one-step epochs validates 30 times, not 300). The checkpoint is still the best validated
    epoch; the last epoch is validated when k divides the epochs."""
    if not cfg.max_validations or cfg.epochs is None:
        return 1
    return max(1, math.ceil(cfg.epochs / cfg.max_validations))


def run_benchmark(
    cfg: BenchmarkConfig, echo: Callable[[str], None] = print,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every method for every seed; write and return the results dict. ``previous``:
    the results of the benchmark in ``cfg.out`` whose runs are kept, not run again (see
    :func:`resume_benchmark`)."""
    quiet_lightning()
    cfg, first = prepare(cfg)
    folder = output_folder(cfg, first)
    try:
        with folder as work:
            if previous is not None:
                _carry_over(Path(cfg.out), work)
            results = _run_all(cfg, work, echo, first, previous)
    except KeyboardInterrupt as stop:  # the unfinished run is gone (RunFolder), --out as it was
        during = f" during {stop.where}" if isinstance(stop, Stopped) else ""
        raise RunInterruptedError(f"{stop_word()}{during}: {cfg.out!r} is as it was and "
                                  "nothing was left beside it", exit_code()) from None
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        where = f" ({err.filename})" if err.filename else ""
        raise OutputError(f"{err.strerror or err}{where}: {cfg.out!r} is as it was"
                          + _kept(folder)) from err
    echo(f"wrote {str(folder.path)!r}")
    return results


REGENERATED = ("results.json", "results.csv", "report.md", "analysis.json", "analysis.md",
               "*.png")
"""The files a benchmark writes from all its runs at the end: written anew, not carried over,
when runs are added (:func:`resume_benchmark`)."""

RESUME_FREE = {"seeds", "methods", "out", "overwrite", "progress", "jobs", "threads", "cache"}
"""Settings that ``--resume`` may take other values of: the runs to add, and how fast they run;
every other setting is the finished run's."""


def resume_benchmark(out: str, given: Mapping[str, Any],
                     echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Add the (method, seed) runs of ``given["seeds"]`` and ``given["methods"]`` that the
    finished benchmark in ``out`` lacks, with its settings, and write its results anew from
    every run (equal, run for run, to one benchmark of all the seeds). ``given``: the
    settings the user gave; any that differs from the finished run's is refused."""
    found = Path(out).expanduser() / "results.json"
    try:
        old = json.loads(found.read_text())
        stored = dict(old["config"])
        cfg = BenchmarkConfig(**{k: v for k, v in stored.items()
                                 if k in BenchmarkConfig.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchmarkError(f"--resume {out!r}: cannot read the finished benchmark's "
                             f"results.json ({first_line(err)}); give a folder written by dmrnet "
                             "benchmark") from None
    for key, value in given.items():
        ours = {"model": cfg.model, "options": cfg.options,
                "dataset_kwargs": cfg.dataset_kwargs}.get(key)
        if key == "out" and Path(str(value)).expanduser() != Path(out).expanduser():
            raise BenchmarkError(f"--resume writes into {out!r}: leave --out out")
        if key in RESUME_FREE:
            continue
        pairs = value.items() if ours is not None and isinstance(value, Mapping) else \
            [(None, value)]
        for sub, v in pairs:
            was = getattr(cfg, key) if sub is None else ours.get(sub)
            if v != was:
                name = key if sub is None else f"{key}.{sub}"
                raise BenchmarkError(f"--resume keeps the finished run's settings: {name} is "
                                     f"{v!r} here but {was!r} in {str(found)!r}; leave it out, "
                                     "or start a new benchmark")
    seeds = list(dict.fromkeys([*(cfg.seeds or []), *(given.get("seeds") or [])]))
    methods = list(dict.fromkeys([*cfg.methods, *(given.get("methods") or [])]))
    kept = {(r["method"], r["seed"]) for r in [*old.get("runs", []),
                                                *old.get("failed_runs", [])]}
    new = [(m, s) for s in seeds for m in methods if (m, s) not in kept]
    if not new:
        raise BenchmarkError(f"--resume {out!r}: every run of methods {methods} and seeds "
                             f"{seeds} is there already; name new ones, e.g. --seeds "
                             f"{max(seeds) + 1},{max(seeds) + 2}")
    fast = {k: v for k, v in given.items() if k in RESUME_FREE - {"seeds", "methods", "out"}}
    cfg = replace(cfg, **{**fast, "seeds": seeds, "methods": methods, "out": out,
                          "overwrite": True})
    echo(f"adding {len(new)} run(s) to {out!r}, which holds {len(kept)}: "
         + ", ".join(f"{m} seed {s}" for m, s in new))
    return run_benchmark(cfg, echo, previous=old)


def _carry_over(source: Path, work: Path) -> None:
    """The finished run's files (checkpoints, logs, anything of the user's) into the new
    run's ``work`` folder, as hard links where the file system allows (no copy of the
    bytes; nothing is written to them), except those written anew (:data:`REGENERATED`)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in source.iterdir():
        if entry.name == MARKER or (entry.is_file() and
                                    any(entry.match(p) for p in REGENERATED)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, work / entry.name, copy_function=link, symlinks=True)
        else:
            link(str(entry), str(work / entry.name))


def prepare(cfg: BenchmarkConfig, data: MultimodalDataModule | None = None
            ) -> tuple[BenchmarkConfig, MultimodalDataModule]:
    """``cfg`` with the dataset's defaults, checked, and the first seed's data, read (every
    split's files checked) with every model built once: all before any output is touched.
    ``data``: already read data of the same dataset and seed (not read again)."""
    check_types(cfg)
    DATASETS.get(cfg.dataset)
    chosen = cfg.epochs is not None or DATASETS.defaults(cfg.dataset).epochs is not None
    cfg = apply_dataset_defaults(cfg)
    _check_config(cfg)
    first = data if data is not None else _data_module(cfg, cfg.seeds[0])
    if not chosen:
        cfg = scale_epochs(cfg, first)
    _check_models(cfg, first)  # and every model's settings (e.g. a method's --option)
    return cfg, first


def steps_per_epoch(cfg: BenchmarkConfig, data: MultimodalDataModule) -> int:
    """Optimiser steps in one training epoch of ``data`` (per process with several devices)."""
    devices = cfg.devices if isinstance(cfg.devices, int) and cfg.devices > 0 else 1
    per_process = math.ceil(len(data.data.train) / devices)
    batch = int(cfg.batch_size or 1)
    steps = math.ceil(per_process / batch)  # less a last batch of one, which is left out
    return max(1, steps - last_batch_of_one(len(data.data.train), batch, devices))


def scale_epochs(cfg: BenchmarkConfig, data: MultimodalDataModule) -> BenchmarkConfig:
    """``cfg`` with enough epochs for ``cfg.min_steps`` optimiser steps per run: a small
    training split (30 samples at batch 64 is one step per epoch) would otherwise get a few
    dozen steps. Used only where neither the user nor the dataset chose the epochs."""
    per_epoch = steps_per_epoch(cfg, data)
    assert cfg.epochs is not None
    need = math.ceil(cfg.min_steps / per_epoch)
    if need <= cfg.epochs:
        return cfg
    note = (f"{len(data.data.train)} training samples make {per_epoch} optimiser step(s) per "
            f"epoch at batch {cfg.batch_size}: training {need} epochs instead of "
            f"{cfg.epochs}, so that every run takes at least {cfg.min_steps} steps (--epochs N "
            "to choose)")
    return replace(cfg, epochs=need, epochs_note=note)


def output_folder(cfg: BenchmarkConfig, data: MultimodalDataModule | None = None
                  ) -> RunFolder:
    """The run's output folder, checked (it is created when entered): not in the data root,
    the manifest's folder or any folder holding one of ``data``'s files."""
    protected: set[str | Path] = {p for p in (cfg.root, cfg.dataset_kwargs.get("manifest")) if p}
    if data is not None:
        for split in (data.data.train, data.data.val, data.data.test):
            folders = getattr(split, "folders", None)
            protected |= folders() if callable(folders) else set()
    return RunFolder(cfg.out, cfg.overwrite, protected)  # checks only; touches nothing


def _check_models(cfg: BenchmarkConfig, data: MultimodalDataModule) -> None:
    """Build every distinct stage model once, so bad settings stop the run before training.
    A stage that takes a checkpoint trained first has only its options checked."""
    checked: set[str] = set()
    for method in cfg.methods:
        for stage in get_method(method).stages(method_settings(cfg, method), data.modalities):
            if stage.needs:
                settings = _with_inputs(stage, dict.fromkeys(stage.needs.values(), ""))
                get_method(settings["method"]).options(settings.get("method_kwargs"))
                continue
            key = repr(sorted(stage.settings.items()))
            if key not in checked:
                checked.add(key)
                try:
                    module = _module(data, stage.settings)
                except (MemoryError, RuntimeError) as err:  # e.g. a huge --embed-dim
                    if not isinstance(err, MemoryError) and "alloc" not in str(err).lower():
                        raise
                    raise BenchmarkError(f"the {stage.settings.get('method')!r} model does not "
                                         "fit in memory with these settings (embed_dim "
                                         f"{stage.settings.get('embed_dim')!r}); use smaller "
                                         "ones") from None
                check_batch_size(data.batch_size, module.model, "--batch-size")
                if module.context is not None:  # files the user gave (e.g. a teacher): read now
                    module.context.setup()


def _kept(folder: RunFolder) -> str:
    kept = folder.kept
    return f"; the unfinished run is in {str(kept)!r} (delete it when done)" if kept else ""


def _data_module(cfg: BenchmarkConfig, seed: int, modalities: list[str] | None = None,
                 cache: SampleCache | None = None) -> MultimodalDataModule:
    """The data of one seed (of ``modalities``, default the configured ones), read (and every
    split's files checked) now; ``cache``: decoded samples shared with the run's other data
    (its keys are files, so every seed's split and every stage reads through one)."""
    data = MultimodalDataModule(
        cfg.dataset, root=cfg.root, modalities=modalities or cfg.modalities, seed=seed,
        batch_size=cfg.batch_size, dataset_kwargs=cfg.dataset_kwargs, cache=cfg.cache,
    )
    data.share_cache(cache)
    _ = data.data
    return data


def _run_all(cfg: BenchmarkConfig, out: Path, echo: Callable[[str], None],
             first: MultimodalDataModule, previous: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """The benchmark itself, written into the folder ``out``; ``first`` is the data module of
    the first seed, already read; ``previous``: results whose runs are kept, not run."""
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    metric = get_task_metric(str(cfg.model.get("metric", "accuracy")))
    # the analysis (variance vs error, directions) is computed from each model in memory
    statistics: dict[tuple[str, int], Any] | None = (
        {} if metric.name == "accuracy" and cfg.keep_checkpoints else None)
    runs: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    per_seed: list[dict[str, Any]] = []
    modalities: list[str] = []
    shown: set[str] = set()  # the thread choices said so far
    if cfg.epochs_note:
        echo(cfg.epochs_note)
    steps = cfg.epochs * steps_per_epoch(cfg, first)
    datas: dict[int, MultimodalDataModule] = {}
    for seed in cfg.seeds:
        data = first if seed == cfg.seeds[0] else _data_module(cfg, seed, cache=first.cache)
        datas[seed] = data
        modalities = data.modalities
        info = {k2: v for k2, v in data.data.info.items() if k2 != "standardizer"}
        per_seed.append({"seed": seed, **info})
    every = [(seed, method) for seed in cfg.seeds for method in cfg.methods]
    # kept runs in today's layout (a method's record written by an earlier version upgraded)
    before = {(r["seed"], r["method"]): upgrade_record(r) for r in
              [*previous.get("runs", []), *previous.get("failed_runs", [])]} if previous else {}
    jobs = [job for job in every if job not in before]  # the runs to train now
    at_once, why = concurrent_runs(cfg, first, len(jobs))
    if at_once > 1:
        echo(f"training {at_once} runs at a time ({why}; --jobs 1 for one at a time)")
        progress = False

    def head(k: int) -> str:
        seed, method = jobs[k]
        return (f"[{k + 1}/{len(jobs)}] {method} seed {seed}: training {cfg.epochs} epochs "
                f"({steps} steps) on {len(SubsetSpace(modalities))} subsets of {modalities}")

    def tail(run: dict[str, Any]) -> str:
        if "failed" in run:
            return f"      failed, left out of the results: {run['failed']}"
        return (f"      test {metric.name}: mean {run['mean']:.4f}, worst {run['worst']:.4f} "
                f"({worst_subset(run['per_subset'], metric.higher_is_better)}); train "
                f"{run['train_seconds']:.1f}s, eval {run['eval_seconds']:.2f}s")

    done: dict[int, dict[str, Any]] = {}
    if at_once > 1:
        for k, (run, stats, lines) in _run_concurrently(
                at_once, jobs, cfg, out, datas, metric.higher_is_better, statistics is not None):
            echo(head(k))
            for line in lines:
                if line not in shown:
                    echo(line)
                    shown.add(line)
            if statistics is not None and stats is not None:
                statistics[jobs[k]] = stats
            done[k] = run
            echo(tail(run))
    else:
        for k, (seed, method) in enumerate(jobs):
            echo(head(k))
            done[k] = _attempt(cfg, out, method, seed, datas[seed], metric.higher_is_better,
                               progress, echo, statistics, shown)
            echo(tail(done[k]))
    # in seed, method order, however they ran; a run that failed is reported, not averaged
    record = {**before, **{jobs[k]: run for k, run in done.items()}}
    runs = [record[job] for job in every if "failed" not in record[job]]
    failed = [record[job] for job in every if "failed" in record[job]]
    if not runs:
        first = failed[0]
        raise DivergedError(f"every run failed ({first['method']} seed {first['seed']}: "
                            f"{first['failed']}); {cfg.out!r} is as it was")
    samples = load_samples(out, runs)
    results = {
        "dataset": info.get("name") or cfg.dataset,  # a manifest's file name, else the source
        "data_source": cfg.dataset,
        "modalities": modalities,
        "subsets": SubsetSpace(modalities).names,
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "runs": runs,
        "failed_runs": failed,
        "summary": summarize_runs(runs, metric.higher_is_better),
        "comparisons": paired_comparisons(runs, metric.higher_is_better, samples, metric.value),
        "gap_to_reference": gap_to_reference(runs, metric.higher_is_better, _roles(cfg),
                                             samples, metric.value),
        "roles": _roles(cfg),
        "config": asdict(cfg),
        "data": info,  # the last seed's; every seed's (its split) in data_per_seed
        "data_per_seed": per_seed,
    }
    results["robustness_profile"] = robustness_profile(results)
    analysis = None
    if statistics is not None:
        analysis = analyze_run(out, echo=lambda _: None, results=results, statistics=statistics)
    write_results(results, out, appendix=analysis_markdown(analysis) if analysis else "")
    echo(format_summary(results))
    echo("wrote results.json, results.csv, report.md, per_subset.png, robustness_profile.png"
         + (", gap_to_reference.png" if results["gap_to_reference"] else ""))
    if analysis is not None:
        for method, s in analysis["summary"].items():
            parts = [f"{k} {v:+.3f}" for k, v in s.items() if isinstance(v, float)]
            if parts:
                echo(f"analysis {method}: " + ", ".join(parts))
        echo("wrote analysis.json, analysis.md and analysis_*.png")
    return results


MIN_CONCURRENT_GFLOP = 20.0
"""Training work of one run (GFLOP) from which runs are trained side by side: below it a run
takes about as long as starting another process."""

_FORKED: dict[str, Any] = {}  # what the forked worker processes inherit (see _run_concurrently)


def concurrent_runs(cfg: BenchmarkConfig, data: MultimodalDataModule, runs: int
                    ) -> tuple[int, str]:
    """How many runs to train at once, and why. A small model's step runs best on one thread
    (runtime.thread_choice), so on a machine with free cores the runs themselves share them:
    one run per free core, in forked processes. Only on CPU, one device per run, one thread
    per run, without progress bars the user asked for, and where fork exists; ``cfg.jobs``
    chooses the count instead."""
    if cfg.jobs is not None:
        return max(1, min(cfg.jobs, runs)), f"--jobs {cfg.jobs}"
    if runs < 2 or cfg.progress or cfg.devices != 1 or \
            "fork" not in multiprocessing.get_all_start_methods() or \
            (cfg.threads or 1) != 1 or user_threads() not in (None, 1):
        return 1, ""
    if cfg.accelerator not in ("cpu", "auto") or (
            cfg.accelerator == "auto" and (torch.cuda.is_available() or
                                           torch.backends.mps.is_available())):
        return 1, ""
    module = _module(data, method_settings(cfg, cfg.methods[0]))
    shapes = {m: tuple(s) for m, s in data.input_shapes.items()}
    flops = training_flops(module.model, shapes, int(cfg.batch_size or 1))
    if flops >= FLOPS_PER_THREAD or \
            flops * cfg.epochs * steps_per_epoch(cfg, data) < MIN_CONCURRENT_GFLOP * 1e9:
        return 1, ""
    cores = usable_cores()
    free = free_cores(cores)
    at_once = min(runs, free)
    return at_once, (f"each run's {flops / 1e9:.2g}-GFLOP step takes one CPU thread; {free} of "
                     f"{cores} cores are free")


def _run_concurrently(at_once: int, jobs: list[tuple[int, str]], cfg: BenchmarkConfig,
                      out: Path, datas: dict[int, MultimodalDataModule],
                      higher_is_better: bool, want_statistics: bool
                      ) -> Iterator[tuple[int, tuple[dict[str, Any], Any, list[str]]]]:
    """Yield ``(k, (run record, analysis statistics, output lines))`` of each job as it ends,
    ``at_once`` of them running in forked processes that inherit the data read here."""
    _FORKED.update(cfg=cfg, out=out, datas=datas, jobs=jobs, higher=higher_is_better,
                   statistics=want_statistics)
    # garbage collected here, and what is left frozen while the workers fork: a worker's own
    # collector never destroys an object it inherited (a native destructor, e.g. an ONNX
    # Runtime session's, waits forever there for threads that did not fork with it)
    gc.collect()
    gc.freeze()
    pool = ProcessPoolExecutor(max_workers=at_once,
                               mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(_run_job, k): k for k in range(len(jobs))}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()  # Lightning's fit bypasses SIGTERM; a run's folder is thrown away
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        _FORKED.clear()


def _run_job(k: int) -> tuple[dict[str, Any], Any, list[str]]:
    """One job of :func:`_run_concurrently`, in a forked worker process."""
    set_threads(1)  # as the run will; no thread team is started after the fork
    # Ctrl-C in a terminal reaches every process of the group: the parent stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_lightning()
    cfg, (seed, method) = _FORKED["cfg"], _FORKED["jobs"][k]
    lines: list[str] = []
    statistics: dict[tuple[str, int], Any] | None = {} if _FORKED["statistics"] else None
    run = _attempt(cfg, _FORKED["out"], method, seed, _FORKED["datas"][seed],
                   _FORKED["higher"], False, lines.append, statistics, set())
    return run, (statistics or {}).get((method, seed)), lines


def _attempt(cfg: BenchmarkConfig, out: Path, method: str, seed: int,
             data: MultimodalDataModule, higher_is_better: bool, progress: bool,
             echo: Callable[[str], None], statistics: dict[tuple[str, int], Any] | None,
             shown: set[str]) -> dict[str, Any]:
    """One run's record (:func:`_run_method`), or ``{"method", "seed", "failed": why}`` for
    a run whose training diverged: the benchmark goes on with the next one."""
    try:
        return _run_method(cfg, out, method, seed, data, higher_is_better, progress, echo,
                           statistics, shown).to_dict()
    except DivergedError as err:
        return {"method": method, "seed": seed, "failed": str(err)}


SAMPLES = "test_samples"
"""The benchmark's folder of each run's per-sample test statistics (``METHOD-seedN.npz``)."""


def save_samples(path: Path, samples: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """One run's test samples (:data:`dmrnet.comparison.Samples`) as ``path`` (.npz)."""
    if not samples:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"subsets": np.array(list(samples))}
    for i, s in enumerate(samples.values()):
        arrays[f"ids{i}"], arrays[f"rows{i}"] = s["ids"], s["rows"]
    np.savez_compressed(path, **arrays)


def load_samples(out: Path, runs: Sequence[Mapping[str, Any]]
                 ) -> dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]:
    """(method, seed) -> that run's test samples, for the runs whose file is in ``out``."""
    found = {}
    for r in runs:
        path = out / SAMPLES / f"{r['method']}-seed{r['seed']}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                found[(r["method"], r["seed"])] = {
                    str(name): {"ids": z[f"ids{i}"], "rows": z[f"rows{i}"]}
                    for i, name in enumerate(z["subsets"])}
    return found


def _shared_noise(samples: Mapping[tuple[str, int], Any] | None, value: Any, a: str, b: str,
                  seeds: Sequence[int], key: str, higher_is_better: bool,
                  cache: dict[int, Any] | None = None) -> float | None:
    """The test-sample variance of a - b on ``key`` that ``seeds`` share (None: no samples
    recorded; see :func:`dmrnet.comparison.shared_test_noise`)."""
    if samples is None or value is None:
        return None
    pairs = [(samples.get((a, s)), samples.get((b, s))) for s in seeds]
    if any(x is None or y is None for x, y in pairs):
        return None
    if key not in ("mean", "worst"):  # one subset: its samples alone
        pairs = [({key: x[key]} if key in x else {}, {key: y[key]} if key in y else {})
                 for x, y in pairs]  # type: ignore[index]
        cache = None  # the pairs are new objects
    return shared_test_noise(pairs, value, reducer(key, higher_is_better),  # type: ignore[arg-type]
                             cache=cache)


def paired_comparisons(
    runs: Sequence[dict[str, Any]], higher_is_better: bool,
    samples: Mapping[tuple[str, int], Any] | None = None, value: Any = None,
) -> list[dict[str, Any]]:
    """Every method pair compared seed by seed, on the mean over subsets and the worst subset.

    The interval of a - b accounts for seed noise and, where each run's test samples were
    recorded (``samples``, and the task metric's ``value``), test-sample noise
    (:func:`dmrnet.comparison.difference`); a verdict names a winner only with at least 2
    seeds and an interval that excludes 0. ``resolution`` is the interval's half-width: a
    smaller difference cannot be told from noise with these seeds and test samples.
    """
    by = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = r
    methods = list(by)
    out = []
    cache: dict[int, Any] = {}  # each run's test-sample draws, made once
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            seeds = sorted(set(by[a]) & set(by[b]))
            if not seeds:
                continue
            for key in ("mean", "worst"):
                shared = _shared_noise(samples, value, a, b, seeds, key, higher_is_better,
                                       cache)
                d = difference([by[a][s][key] for s in seeds], [by[b][s][key] for s in seeds],
                               shared)
                better = d.diff > 0 if higher_is_better else d.diff < 0
                verdict = (f"{a if better else b} better" if d.clear else
                           f"too few seeds (< {MIN_SEEDS})" if d.seeds < MIN_SEEDS
                           else "no clear difference")
                out.append({"a": a, "b": b, "on": key, "seeds": d.seeds, "diff": d.diff,
                            "diff_std": d.seed_sd, "test_se": d.test_sd,
                            "ci95": [d.lo, d.hi], "resolution": (d.hi - d.lo) / 2,
                            "noise": "seeds and test samples" if shared is not None
                            else "seeds only (test samples not recorded)",
                            "verdict": verdict})
    return out


def _roles(cfg: BenchmarkConfig) -> dict[str, str]:
    """role -> the run's method with it (see ``Method.role``)."""
    return {get_method(m).role: m for m in cfg.methods if get_method(m).role}


def gap_to_reference(runs: Sequence[dict[str, Any]], higher_is_better: bool,
                     roles: Mapping[str, str],
                     samples: Mapping[tuple[str, int], Any] | None = None,
                     value: Any = None) -> dict[str, Any] | None:
    """How far each method is from the reference (the method whose role is "reference") per
    subset, and how much of the baseline's gap it closes. None without a reference in the run.

    Per subset and method: ``gap`` = reference - method (method - reference where lower is
    better), averaged over the seeds both ran; ``closed`` = (baseline gap - method gap) /
    baseline gap where the baseline's gap is > 0 (1 = as good as the reference, 0 = no better
    than the baseline, < 0 = worse). ``behind`` lists the subsets where the reference beats
    the baseline beyond seed and test-sample noise (the interval of
    :func:`dmrnet.comparison.difference` excludes 0). ``closed_behind`` averages ``closed``
    over them: the fraction of the baseline's gap a method closes where there is one.
    """
    ref = roles.get("reference")
    if ref is None:
        return None
    base = roles.get("baseline")
    sign = 1.0 if higher_is_better else -1.0
    by: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = r["per_subset"]
    if ref not in by:
        return None
    subsets = list(next(iter(by[ref].values())))

    def common(method: str) -> list[int]:
        return sorted(set(by[ref]) & set(by[method]))

    def gaps(method: str, subset: str) -> np.ndarray:
        return np.array([sign * (by[ref][s][subset] - by[method][s][subset])
                         for s in common(method)])

    behind: list[str] = []
    if base is not None and base in by:
        seeds = common(base)
        for subset in subsets:
            shared = _shared_noise(samples, value, ref, base, seeds, subset, higher_is_better)
            d = difference([sign * by[ref][s][subset] for s in seeds],
                           [sign * by[base][s][subset] for s in seeds], shared)
            if d.clear and d.diff > 0:
                behind.append(subset)
    base_gap = ({s: float(gaps(base, s).mean()) for s in subsets}
                if base is not None and base in by else {})
    per_method: dict[str, Any] = {}
    for method in by:
        if method == ref:
            continue
        cells = {}
        for subset in subsets:
            g = float(gaps(method, subset).mean())
            bg = base_gap.get(subset)
            closed = (bg - g) / bg if bg is not None and bg > 0 else None
            cells[subset] = {"gap": g, "closed": closed}
        closed_behind = [cells[s]["closed"] for s in behind]
        per_method[method] = {
            "per_subset": cells,
            "closed_behind": float(np.mean(closed_behind)) if closed_behind else None,
            "mean_gap": float(np.mean([c["gap"] for c in cells.values()])),
        }
    return {"reference": ref, "baseline": base, "behind": behind, "per_method": per_method}


def summarize_runs(runs: Sequence[dict[str, Any]], higher_is_better: bool) -> dict[str, Any]:
    """Per method: mean and std over seeds of the mean-over-subsets and worst-subset metric,
    and each subset's mean over seeds."""

    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        means = np.array([r["mean"] for r in rs])
        worsts = np.array([r["worst"] for r in rs])
        subsets = list(rs[0]["per_subset"])
        per_subset = {s: float(np.mean([r["per_subset"][s] for r in rs])) for s in subsets}
        per_subset_std = {s: float(np.std([r["per_subset"][s] for r in rs])) for s in subsets}
        out[method] = {
            "mean": float(means.mean()),
            "mean_std": float(means.std()),
            "worst": float(worsts.mean()),
            "worst_std": float(worsts.std()),
            "seeds": len(rs),
            "per_subset": per_subset,
            "per_subset_std": per_subset_std,
            "train_seconds": float(np.mean([r["train_seconds"] for r in rs])),
        }
    return out
