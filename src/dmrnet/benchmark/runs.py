"""Running a benchmark: methods x seeds x stages, each stage trained, selected on validation and
tested on every subset; runs side by side; resuming with new runs; the results written."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dmrnet.analysis import analysis_markdown, analyze_run, model_statistics
from dmrnet.benchmark.config import (
    RESUME_FREE,
    BenchmarkConfig,
    BenchmarkError,
    apply_dataset_defaults,
    check_config,
    check_types,
    method_settings,
    scale_epochs,
    set_dotted,
    steps_per_epoch,
    validation_interval,
)
from dmrnet.benchmark.statistics import (
    SAMPLES,
    gap_to_reference,
    load_samples,
    paired_comparisons,
    roles,
    save_samples,
    summarize_runs,
)
from dmrnet.data import DATASETS
from dmrnet.data.cache import SampleCache
from dmrnet.errors import (
    DivergedError,
    RunInterruptedError,
    first_line,
)
from dmrnet.methods import (
    RunRecord,
    Stage,
    StageResult,
    get_method,
    upgrade_record,
)
from dmrnet.metrics import get_task_metric, worst_subset
from dmrnet.outputs import MARKER, OutputError, RunFolder
from dmrnet.report import format_summary, robustness_profile, write_results
from dmrnet.runtime import (
    FLOPS_PER_THREAD,
    RUN_CHECKPOINTS,
    DeviceSetup,
    create_logger,
    free_cores,
    make_trainer,
    set_threads,
    training_flops,
    usable_cores,
    user_threads,
)
from dmrnet.settings import flatten_settings, nest_settings
from dmrnet.signals import Stopped, exit_code, lightning_interrupts, stop_word
from dmrnet.subsets import SubsetSpace
from dmrnet.training import (
    MultimodalDataModule,
    MultimodalModule,
    ValidationHistory,
    check_batch_size,
    text_tokenizer_kwargs,
)

log = logging.getLogger("dmrnet")


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
    linked = {"class_names": data.class_names, "preprocessing": data.preprocessing,
              "sequences": data.sequences}
    if data.class_weights is not None and "class_weights" not in module_kwargs:
        linked["class_weights"] = data.class_weights
    return MultimodalModule(  # the benchmark's settings name each concern's fields alone
        data.modalities, data.input_shapes, data.num_classes, **linked,
        **nest_settings(module_kwargs),
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
    interval = validation_interval(cfg)
    history = ValidationHistory(window=min(5, max(1, cfg.epochs // interval)),
                                higher_is_better=module.task_metric.higher_is_better)
    checkpoint = RUN_CHECKPOINTS.callback(ckpt_dir, module.task_metric.name, cfg.select,
                                          cfg.epochs)
    device = DeviceSetup(batch_size=cfg.batch_size, cpu_threads=cfg.threads or "auto")
    trainer = make_trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
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
    check_config(cfg)
    first = data if data is not None else _data_module(cfg, cfg.seeds[0])
    if not chosen:
        cfg = scale_epochs(cfg, first)
    _check_models(cfg, first)  # and every model's settings (e.g. a method's --option)
    return cfg, first


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
    # text for a pretrained encoder is read with its tokenizer
    kwargs = text_tokenizer_kwargs(cfg.dataset, cfg.dataset_kwargs, flatten_settings(cfg.model))
    data = MultimodalDataModule(
        cfg.dataset, root=cfg.root, modalities=modalities or cfg.modalities, seed=seed,
        batch_size=cfg.batch_size, dataset_kwargs=kwargs, cache=cfg.cache,
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
        "gap_to_reference": gap_to_reference(runs, metric.higher_is_better, roles(cfg),
                                             samples, metric.value),
        "roles": roles(cfg),
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
