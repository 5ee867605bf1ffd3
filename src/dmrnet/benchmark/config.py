"""A benchmark's configuration: :class:`BenchmarkConfig`, its checks (before any work) and
the dataset's defaults and epochs applied to it."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dmrnet.comparison import (
    default_seed_count,
)
from dmrnet.data import DATASETS
from dmrnet.data.cache import check_cache_mode
from dmrnet.errors import (
    COUNT,
    COUNT_FROM_1,
    FRACTION,
    ConfigError,
    DMRNetError,
    Rule,
    first_line,
    require,
)
from dmrnet.methods import (
    METHODS,
    get_method,
    options_summary,
)
from dmrnet.methods.base import LEGACY_OPTIM, LEGACY_OPTIONS
from dmrnet.optim import OptimConfig
from dmrnet.runtime import (
    check_logger,
    check_precision,
)
from dmrnet.settings import SHARED_SETTINGS, flatten_settings
from dmrnet.training import (
    SELECTIONS,
    MultimodalDataModule,
    last_batch_of_one,
)


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
    try:  # a fit config's network: and training: mappings, by their fields' short names
        flat = flatten_settings(cfg.model)
    except ConfigError as err:
        raise BenchmarkError(str(err)) from None
    model = defaults.model_under(flat)
    given = model.pop("method_kwargs", None) or {}
    # a dataset's default options apply to the methods in the run that have them
    offered = defaults.options_for(k for m in cfg.methods if m in METHODS
                                   for k in get_method(m).option_names())
    options = {**offered, **given, **cfg.options}
    epochs = cfg.epochs if cfg.epochs is not None else defaults.epochs or 30
    batch = cfg.batch_size if cfg.batch_size is not None else defaults.batch_size or 64
    seeds = cfg.seeds if cfg.seeds is not None else list(range(default_seed_count()))
    return replace(cfg, model=model, options=options, epochs=epochs, batch_size=batch,
                   seeds=seeds)


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


def check_config(cfg: BenchmarkConfig) -> None:
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
    known = SHARED_SETTINGS
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


def validation_interval(cfg: BenchmarkConfig) -> int:
    """Epochs between validations: every epoch up to ``cfg.max_validations`` epochs, then
    every k-th epoch so that a run validates at most that many times (a 300-epoch run of
    one-step epochs validates 30 times, not 300). The checkpoint is still the best validated
    epoch; the last epoch is validated when k divides the epochs."""
    if not cfg.max_validations or cfg.epochs is None:
        return 1
    return max(1, math.ceil(cfg.epochs / cfg.max_validations))

RESUME_FREE = {"seeds", "methods", "out", "overwrite", "progress", "jobs", "threads", "cache"}
"""Settings that ``--resume`` may take other values of: the runs to add, and how fast they run;
every other setting is the finished run's."""


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
