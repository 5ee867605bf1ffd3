"""``dmrnet fit|validate|test|predict``: Lightning's CLI over MultimodalModule and the DataModule.

The data module's metadata (modalities, input shapes, class count and names) is linked into
the model, so a config names a dataset and a method and nothing twice. Checkpoints are selected
on ``val/mean`` (the validation split's mean over subsets), never on the test split.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dmrnet.data import DatasetDefaults
from dmrnet.errors import ConfigError, checkpoint_error, local_checkpoint
from dmrnet.methods import METHODS, get_method, upgrade_settings
from dmrnet.metrics import selection_mode
from dmrnet.report import subset_table
from dmrnet.runtime import (
    FIT_CHECKPOINTS,
    SELECTED_ON,
    TRAINER_DEFAULTS,
    DeviceSetup,
    ResumableCheckpoint,
    create_logger,
)
from dmrnet.settings import CONCERNS, SHORT_NAMES
from dmrnet.training import MultimodalDataModule, MultimodalModule


class InterruptNote(Callback):
    """Remembers what a Ctrl-C left behind: Lightning stops with exit code 1 and no word of
    the checkpoints; ``dmrnet`` turns this note into its message (exit 130)."""

    def __init__(self) -> None:
        self.message: str | None = None

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        saved = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        files = sorted({p for cb in saved for p in (cb.best_model_path, cb.last_model_path)
                        if p})
        where = {str(cb.dirpath) for cb in saved if cb.dirpath}
        if files:
            kept = (f"checkpoints kept in {', '.join(sorted(where))}; continue with --resume "
                    f"{sorted(where)[0]}")
        else:
            kept = "no checkpoint had been written yet"
        stage = trainer.state.fn.value if trainer.state.fn is not None else "the run"
        self.message = (f"interrupted during {stage} at epoch "
                        f"{trainer.current_epoch}, step {trainer.global_step}: {kept}")


class ConsoleReport(Callback):
    """Console output a log file can hold: without a progress bar (output not a terminal),
    one line per epoch; at the end of ``fit``, the best checkpoint's path, epoch and
    validation score, and its per-subset validation table."""

    def __init__(self) -> None:
        self.best: tuple[float, int, dict[str, float]] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        # the CPU thread choice, made in DeviceSetup.setup, and why
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, DeviceSetup) and cb.reason and trainer.is_global_zero:
                print(cb.reason, flush=True)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn is None or trainer.state.fn.value != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/")}
        cb = trainer.checkpoint_callback
        monitor = getattr(cb, "monitor", None) or SELECTED_ON
        value = metrics.get(monitor)
        if value is not None:
            higher = getattr(cb, "mode", "max") == "max"
            if self.best is None or (value > self.best[0] if higher else value < self.best[0]):
                self.best = (value, trainer.current_epoch, metrics)
        if trainer.progress_bar_callback is None and trainer.is_global_zero:
            shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val/mean", "val/worst")
                              if k in metrics)
            print(f"epoch {trainer.current_epoch} ({trainer.current_epoch + 1} of "
                  f"{trainer.max_epochs}): {shown}",
                  flush=True)

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero or self.best is None:
            return
        cb = trainer.checkpoint_callback
        monitor = getattr(cb, "monitor", None) or SELECTED_ON
        value, epoch, metrics = self.best
        path = getattr(cb, "best_model_path", "") or "(not saved)"
        score = getattr(cb, "best_model_score", None)
        if score is not None and float(score) != value:  # a resumed run's earlier best stands
            print(f"best checkpoint: {path} (from before the resume, {monitor} "
                  f"{float(score):.4f}; the best since: epoch {epoch}, {value:.4f})")
            return
        print(subset_table(metrics, "val", f"validation at epoch {epoch}:"))
        print(f"best checkpoint: {path} (epoch {epoch}, {monitor} {value:.4f})")


CONCERN_KEYS = tuple(c.key for c in CONCERNS)

# model arguments filled from the data module (compared through the data's modalities)
LINKED = ("modalities", "input_shapes", "num_classes", "class_names", "class_weights",
          "preprocessing", "sequences")


def _plain(value: Any) -> Any:
    """A config value as plain Python (jsonargparse Namespaces -> dicts, tuples -> lists)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Module settings as plain values, a concern's (``network``, ``training``, ``optim``)
    field by field (``network.embed_dim``)."""
    out: dict[str, Any] = {}
    for key, value in _plain(settings).items():
        if key in (*CONCERN_KEYS, "optim") and isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def run_difference(hparams: Mapping[str, Any], model: Mapping[str, Any],
                   modalities: Any) -> str | None:
    """How a checkpoint's hyperparameters differ from this run's model arguments and data
    modalities (``None``: all of the dataset's), first difference only; None if they match."""
    mine, theirs = _fields(model), _fields(hparams)
    for key in sorted(mine):
        if key in LINKED or key not in theirs:
            continue
        if theirs[key] != mine[key]:
            return f"{key} is {theirs[key]!r} there and {mine[key]!r} here"
    if modalities is not None and _plain(hparams.get("modalities")) != _plain(modalities):
        return f"modalities are {hparams.get('modalities')!r} there and {_plain(modalities)!r} here"
    return None


def _hyperparameters(path: Path) -> dict[str, Any]:
    """A checkpoint's module settings in today's layout (one line for a damaged or unsafe
    file)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for damaged or unsafe files
        raise checkpoint_error(str(path), err) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    return upgrade_settings(hparams) if isinstance(hparams, Mapping) else {}


def choose_resume_checkpoint(target: str, model: Mapping[str, Any], modalities: Any) -> Path:
    """``--resume`` target -> the checkpoint of this run: the file given, or the newest
    ``last*.ckpt`` under the folder whose method, model arguments and modalities are this
    run's. A mismatch is refused with the first difference named."""
    if "://" in target:
        local_checkpoint(target, "--resume")  # refuses URLs with the reason
    path = Path(target)
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = sorted(path.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime,
                            reverse=True)
        if not candidates:
            raise ConfigError(f"no last.ckpt under {str(path)!r} to resume from")
    else:
        raise ConfigError(f"--resume {target!r}: no such checkpoint or folder")
    first = None
    for ckpt in candidates:
        why = run_difference(_hyperparameters(ckpt), model, modalities)
        if why is None:
            return ckpt
        first = first or (ckpt, why)
    assert first is not None
    ckpt, why = first
    more = f" (nor do {len(candidates) - 1} older ones)" if len(candidates) > 1 else ""
    raise ConfigError(f"--resume {target!r}: {str(ckpt)!r} is not this run: {why}{more}; "
                      "resume with the settings it was trained with, or start a new run")


class DMRNetCLI(LightningCLI):
    def __init__(self, interrupt_note: InterruptNote | None = None, resume: str | None = None,
                 logger: str | None = None, dataset_defaults: DatasetDefaults | None = None,
                 **kwargs: object) -> None:
        self.resume = resume
        self.logger_kind = logger
        self.dataset_defaults = dataset_defaults  # the named dataset's (read before parsing)
        kwargs.setdefault("seed_everything_default", 0)
        # progress bars on a terminal only; otherwise ConsoleReport's line per epoch
        kwargs.setdefault("trainer_defaults", {**TRAINER_DEFAULTS,
                                               "enable_progress_bar": sys.stdout.isatty()})
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        self.interrupt_note = interrupt_note or InterruptNote()
        super().__init__(MultimodalModule, MultimodalDataModule, **kwargs)  # type: ignore[arg-type]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend([self.interrupt_note, ConsoleReport()])
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else None
        chosen = cfg.get("trainer", {}).get("logger") if cfg is not None else None
        if chosen not in (None, True):  # --trainer.logger given: Lightning's own setting
            if self.logger_kind is not None:
                raise ConfigError("give --logger or --trainer.logger, not both")
            return trainer
        # csv unless told otherwise, whether or not tensorboard is installed (Lightning's
        # default would switch to TensorBoard when it is): the same files on every machine
        trainer.logger = create_logger(self.logger_kind or "csv", trainer.default_root_dir)
        return trainer

    def validate(self, **kwargs: Any) -> None:
        """``dmrnet validate``: one table instead of Lightning's list of every metric."""
        self._evaluate("validate", "val", kwargs)

    def test(self, **kwargs: Any) -> None:
        """``dmrnet test``: one table instead of Lightning's list of every metric."""
        self._evaluate("test", "test", kwargs)

    def _evaluate(self, verb: str, stage: str, kwargs: dict[str, Any]) -> None:
        results = getattr(self.trainer, verb)(**{**kwargs, "verbose": False})
        if self.trainer.is_global_zero and results:
            where = kwargs.get("ckpt_path") or "the model as configured"
            print(subset_table(results[0], stage, f"{stage} split, {where}:"))

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Parse errors are raised (and shown as one line by ``dmrnet``), not printed after
        a usage block of every option."""
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` must be a local file (or Lightning's "best" / "last"), read with
        ``weights_only=True``: a checkpoint never runs code when it is loaded. Checked before
        Lightning reads the file's hyperparameters."""
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else None
        if cfg is not None and self.resume is not None:
            if cfg.get("ckpt_path") is not None:
                raise ConfigError("give --resume or --ckpt_path, not both")
            data = cfg.get("data")
            ckpt = choose_resume_checkpoint(self.resume, cfg.get("model") or {},
                                            data.get("modalities") if data else None)
            print(f"resuming from {ckpt}", file=sys.stderr)
            cfg["ckpt_path"] = str(ckpt)
        if cfg is None:
            return
        if cfg.get("weights_only") is False:
            raise ConfigError("--weights_only false would let a checkpoint run code when it "
                              "is loaded; dmrnet always loads with weights_only=True")
        if "weights_only" in cfg:
            cfg["weights_only"] = True
        path = cfg.get("ckpt_path")
        if path is None or str(path) in ("best", "last"):
            return
        local_checkpoint(path, "--ckpt_path")
        # As Lightning's CLI does, the checkpoint's model settings become the run's; those
        # an earlier dmrnet saved are read in today's layout first
        hparams = {k: v for k, v in _hyperparameters(Path(path)).items()
                   if not str(k).startswith("_")}
        if hparams:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": hparams}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        # TF32 on CUDA, CPU threads sized to the model: --device.matmul_precision highest,
        # --device.cpu_threads 8
        parser.add_lightning_class_args(DeviceSetup, "device")
        parser.set_defaults(FIT_CHECKPOINTS.parser_defaults())
        parser.add_argument("--plugins", type=list[str] | None, default=None,
                            help="Python files (relative to the config file's folder) or "
                            "modules that register methods, datasets, encoders, ... (a config "
                            "file's key; on the command line use --plugin FILE.py)")
        parser.set_defaults(dataset_parser_defaults(self.dataset_defaults))

    def before_instantiate_classes(self) -> None:
        """The dataset's default options go to the method where it has them and the config
        gives none; its default mappings (e.g. ``encoder_kwargs``) under the config's own,
        key by key, as the benchmark applies them."""
        defaults = self.dataset_defaults
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else None
        if cfg is None or cfg.get("model") is None:
            return
        self._resolve_mode(cfg)
        if defaults is None:
            return
        model = cfg.model
        # the config's mappings (e.g. network.encoder_kwargs) over the defaults', which name
        # them by short name; its other values are the parser's
        mappings = {k: v for concern in CONCERNS for k, v in (model.get(concern.key) or {}).items()
                    if isinstance(v, Mapping)}
        merged = defaults.model_under(mappings)
        for key in mappings:
            model[SHORT_NAMES[key]][key] = merged[key]
        method = model.get("method")
        if defaults.options and isinstance(method, str) and method in METHODS:
            given = dict(model.get("method_kwargs") or {})
            offered = defaults.options_for(get_method(method).option_names())
            if any(k not in given for k in offered):
                model["method_kwargs"] = {**offered, **given}


    def _resolve_mode(self, cfg: Any) -> None:
        """``checkpoint.mode: auto`` (the default) selects in the task metric's direction, as
        the benchmark does: the lowest ACER, the highest accuracy or mIoU."""
        checkpoint = cfg.get("checkpoint")
        if checkpoint is not None and checkpoint.get("mode") == "auto":
            training = cfg.model.get("training") or {}
            checkpoint["mode"] = selection_mode(training.get("metric") or "accuracy")


def dataset_parser_defaults(defaults: DatasetDefaults | None) -> dict[str, Any]:
    """A dataset's defaults as the CLI parser's: module settings under their concern
    (``model.network.encoder``, ``model.optim.lr``), ``trainer.max_epochs`` and
    ``data.batch_size``."""
    if defaults is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in defaults.model.items():
        if key == "optim":
            out.update({f"model.optim.{k}": v for k, v in value.items()})
        elif key in SHORT_NAMES:  # a concern's field by its short name
            out[f"model.{SHORT_NAMES[key]}.{key}"] = value
        else:
            raise ConfigError(f"the dataset's defaults set {key!r}, which is not a model "
                              f"setting; model settings: {sorted([*SHORT_NAMES, 'optim'])}")
    if defaults.epochs is not None:
        out["trainer.max_epochs"] = defaults.epochs
    if defaults.batch_size is not None:
        out["data.batch_size"] = defaults.batch_size
    return out
