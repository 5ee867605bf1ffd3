"""The ``dmrnet`` command.

- ``dmrnet benchmark ...``: methods x seeds on a dataset, every subset evaluated, results files.
- ``dmrnet fit|validate|test --config FILE.yaml ...``: single runs through Lightning's CLI
  (``model:``, ``data:``, ``trainer:`` sections; ``dmrnet fit --help`` lists every option).
- ``dmrnet predict --checkpoint CKPT --input MOD=FILE ...``: every subset of the given inputs.
- ``dmrnet prepare cremad|kinetics_sounds ...``: the loader's layout from the videos.
- ``dmrnet configs list|show``, ``analyze``, ``export``: recipes, analyses, model files.

This module is light (no torch): ``dmrnet --help`` and a mistyped command answer at once; a
command's own module (torch, Lightning) is imported once the command is known.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from dmrnet import signals
from dmrnet.cli.parsing import (
    COMMANDS,
    LIGHTNING_VERBS,
    PLUGIN_HELP,
    CommandsFormatter,
    Parser,
    load_yaml,
)
from dmrnet.errors import DMRNetError, RunInterruptedError, UsageError, first_line, one_line
from dmrnet.plugins import load_plugins
from dmrnet.version import __version__

__all__ = ["load_yaml", "main"]


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


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (``fit``, ``benchmark``, ...); None for help, ``--version``
    or a mistake."""
    try:
        words, _ = take_plugins([a for a in argv if a != "--debug"])
    except UsageError:
        return None
    return words[0] if words and words[0] in COMMANDS else None


def load_command(command: str | None) -> ModuleType | None:
    """The module that runs ``command``, imported: torch and Lightning take seconds, so the
    launcher calls this while a Ctrl-C still ends the start-up with one line."""
    if command in LIGHTNING_VERBS:
        from dmrnet.cli import verbs

        return verbs
    if command == "configs":  # recipes only: no torch
        from dmrnet.cli import configs

        return configs
    if command is not None:
        from dmrnet.cli import commands

        return commands
    return None


def _parser() -> tuple[Parser, Any]:
    """The ``dmrnet`` parser and its (empty) subparsers."""
    parser = Parser(
        prog="dmrnet",
        formatter_class=CommandsFormatter,
        description="Multimodal learning robust to missing modalities (DMRNet, ECCV 2024).",
        epilog="Single runs: dmrnet {fit,validate,test} --config FILE.yaml; resume a fit with "
        "'dmrnet fit --config FILE.yaml --resume RUN_DIR_OR_CKPT' "
        "(Lightning CLI; see 'dmrnet fit --help'). Every command takes --plugin "
        f"FILE.py|MODULE: {PLUGIN_HELP}.",
    )
    parser.add_argument("--version", action="version", version=f"dmrnet {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def _main(argv: list[str]) -> int:
    from_shell = argv == sys.argv[1:]
    argv, plugins = take_plugins(argv)
    load_plugins(plugins)  # before any parser lists the registries' names
    if from_shell:
        sys.argv[1:] = argv
    module = load_command(argv[0] if argv and argv[0] in COMMANDS else None)
    if argv and argv[0] in LIGHTNING_VERBS:
        return module.lightning_cli(argv)
    parser, sub = _parser()
    if module is None:  # help, --version or a mistake: no torch needed
        for name, line in COMMANDS.items():
            sub.add_parser(name, help=line, add_help=False)
        parser.parse_args(argv)
        parser.print_help()
        return 2
    module.PARSERS[argv[0]](sub)
    args = parser.parse_args(argv)
    return module.RUNNERS[args.command](args)


def _lightning_errors() -> tuple[type[BaseException], ...]:
    """Lightning's configuration error, once Lightning is loaded (``dmrnet --help`` is not)."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return () if module is None else (module.MisconfigurationException,)


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
    except (*_lightning_errors(), ImportError) as err:  # incl. a missing optional package
        print(f"dmrnet: error: {first_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # 'dmrnet configs list | head': the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):  # ValueError: a test's capture
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 128 + 13  # the shell's code for SIGPIPE
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
