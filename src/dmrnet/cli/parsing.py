"""What every ``dmrnet`` command parses with, light enough for ``dmrnet --help``: argparse
with one-line errors, YAML 1.2 values, and each command's one-line help."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import yaml

from dmrnet.errors import UsageError

LIGHTNING_VERBS = ("fit", "validate", "test")

COMMANDS = {
    "benchmark": "train methods x seeds and evaluate every modality subset",
    "analyze": "variance vs error, direction alignment, each method's own",
    "export": "write a model folder (config + safetensors) or ONNX",
    "predict": "predict one sample for every subset of its inputs",
    "prepare": "prepare a dataset's files (e.g. CREMA-D frames)",
    "configs": "list or show the shipped recipes (dmrnet fit --config NAME takes them by name)",
    **{verb: f"Lightning CLI '{verb}' from a YAML config" for verb in LIGHTNING_VERBS},
}
"""Each command's line in ``dmrnet --help``, in its order."""

PLUGIN_HELP = ("a Python file or module that registers methods, datasets, encoders, ... "
               "(repeatable; any command takes it; installed 'dmrnet.plugins' entry points "
               "load too)")


class Parser(argparse.ArgumentParser):
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


class CommandsFormatter(argparse.HelpFormatter):
    """argparse's help, with each command's line beside its name: argparse sizes the name
    column without the commands' extra indent, so ``benchmark``'s line went below it."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.choices:
            longest = max(map(len, action.choices)) + self._current_indent
            self._action_max_length = max(self._action_max_length,
                                          longest + 2 * self._indent_increment)


def csv_list(kind: type) -> Any:
    """An argparse type: ``"a, b"`` as ``[kind("a"), kind("b")]``."""
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


def key_value(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE`` as ``(KEY, VALUE read as YAML)``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), load_yaml(value)


def sweep_values(text: str) -> tuple[str, list[Any]]:
    """An argparse type: ``KEY=V1,V2`` as ``(KEY, [V1, V2])``, each value read as YAML."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--sweep takes KEY=V1,V2,..., got {text!r}")
    key, values = text.split("=", 1)
    return key.strip(), [load_yaml(v) for v in values.split(",") if v.strip()]
