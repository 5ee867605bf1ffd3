"""``dmrnet configs list|show``: the shipped recipes, light (no torch), so listing them is
quick."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dmrnet.cli.parsing import COMMANDS
from dmrnet.errors import UsageError
from dmrnet.recipes import recipes, summary


def configs_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("configs", help=COMMANDS["configs"])
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


PARSERS: dict[str, Callable[[Any], argparse.ArgumentParser]] = {"configs": configs_parser}
RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"configs": run_configs_command}
