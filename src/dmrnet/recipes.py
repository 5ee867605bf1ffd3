"""The recipes shipped in the package (``dmrnet/configs``): the paper's configs and the smoke
configs, named by their path without ``.yaml`` (``mfeat_dmrnet``, ``smoke/cremad``), so that
``dmrnet fit --config mfeat_dmrnet`` works from a wheel install, outside any checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dmrnet.errors import UsageError


def recipe_folder() -> Path:
    """The folder of the shipped configs."""
    return Path(str(resources.files("dmrnet") / "configs"))


def recipes() -> dict[str, Path]:
    """Shipped config name -> its file, sorted by name."""
    folder = recipe_folder()
    found = {p.relative_to(folder).with_suffix("").as_posix(): p
             for p in folder.rglob("*.yaml")}
    return dict(sorted(found.items()))


def summary(path: Path) -> str:
    """A config's first comment line (what it is)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve(value: str) -> str:
    """``--config`` as given: an existing file, or a shipped config's name (``.yaml``
    optional) as its file's path; anything else is a one-line :class:`UsageError`."""
    if Path(value).expanduser().exists():
        return value
    name = value[: -len(".yaml")] if value.endswith(".yaml") else value
    name = name.removeprefix("configs/")
    shipped = recipes()
    if name in shipped:
        return str(shipped[name])
    raise UsageError(f"config {value!r} is neither a file nor a shipped config; shipped: "
                     f"{', '.join(shipped)} (dmrnet configs list)")


def config_args(args: list[str]) -> list[str]:
    """A Lightning verb's arguments with each ``--config NAME`` (``--config=NAME``, ``-c
    NAME``) of a shipped config replaced by its file."""
    out, i = [], 0
    while i < len(args):
        word = args[i]
        if word in ("--config", "-c") and i + 1 < len(args):
            out += [word, resolve(args[i + 1])]
            i += 2
            continue
        if word.startswith("--config="):
            word = "--config=" + resolve(word.split("=", 1)[1])
        out.append(word)
        i += 1
    return out
