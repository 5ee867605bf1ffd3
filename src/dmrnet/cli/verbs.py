"""``dmrnet fit|validate|test``: single runs through Lightning's CLI (``model:``, ``data:``,
``trainer:`` sections), with dmrnet's own ``--resume``, ``--logger`` and ``--config NAME``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmrnet import signals
from dmrnet.benchmark import filter_noise
from dmrnet.cli.commands import load_config_plugins
from dmrnet.cli.parsing import load_yaml
from dmrnet.data import DATASETS
from dmrnet.data.io import read_text
from dmrnet.errors import ConfigError, RunInterruptedError, UsageError
from dmrnet.lightning_cli import DMRNetCLI, InterruptNote
from dmrnet.methods import option_lines
from dmrnet.recipes import config_args
from dmrnet.runtime import LOGGERS, check_logger
from dmrnet.settings import SHORT_NAMES
from dmrnet.training import DEFAULT_DATASET

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
