"""Error types. Every error dmrnet raises for bad input or configuration is a
:class:`DMRNetError` (a ValueError) whose message names the offending thing and the fix."""

import math
from collections.abc import Callable
from pathlib import Path


class DMRNetError(ValueError):
    """Base class of dmrnet's user-facing errors."""


class ConfigError(DMRNetError):
    """A method, model or training setting that cannot be used."""


class RunInterruptedError(DMRNetError):
    """Ctrl-C or SIGTERM: the run stopped; the message says what was kept. ``exit_code``: the
    shell's (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DivergedError(DMRNetError):
    """Training stopped because its loss (or weights) became NaN or infinite."""


class UsageError(DMRNetError):
    """A command line that cannot be parsed (an unknown option, a value of the wrong type)."""


def local_checkpoint(path: object, what: str = "checkpoint") -> str:
    """``path`` as a local file that exists, or a :class:`ConfigError` naming the fix.

    URLs are refused: a downloaded file would be read by whatever loader handles URLs, and
    Lightning's loads remote checkpoints with pickle enabled (code in the file would run).
    """
    text = str(path)
    if "://" in text:
        raise ConfigError(f"{what} {text!r} is a URL; dmrnet reads only local files (a remote "
                          "checkpoint could run code when loaded): download it, check where it "
                          "comes from, and pass its path")
    if not Path(text).expanduser().is_file():
        raise ConfigError(f"{what} {text!r} does not exist; give the path of a file")
    return text


def checkpoint_error(path: object, err: BaseException, what: str = "checkpoint"
                     ) -> ConfigError:
    """A one-line error for a checkpoint ``torch.load(weights_only=True)`` refused: damaged,
    or holding objects that would run code (torch's own message is a page long)."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line),
                      "it holds objects other than tensors and plain values")
        return ConfigError(f"cannot load {what} {str(path)!r}: {detail}; such a file could run "
                           "code when unpickled, so dmrnet does not load it (use checkpoints "
                           "written by dmrnet or Lightning, from a source you trust)")
    return ConfigError(f"cannot load {what} {str(path)!r}: {first_line(err)}")


def one_line(text: str, limit: int = 400) -> str:
    """A message that may span lines (jsonargparse's do) as one line of at most ``limit``
    characters."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none): how errors
    from torch, Lightning or the OS are shown in one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


Rule = tuple[str, Callable[[float], bool]]
"""A numeric setting's range: its wording for errors, and the test."""

NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
POSITIVE: Rule = ("a finite number > 0", lambda v: math.isfinite(v) and v > 0)
COUNT: Rule = ("a whole number >= 0", lambda v: v >= 0 and float(v).is_integer())
COUNT_FROM_1: Rule = ("a whole number >= 1", lambda v: v >= 1 and float(v).is_integer())
FRACTION: Rule = ("a number in [0, 1)", lambda v: 0 <= v < 1)


def require(name: str, value: object, rule: Rule, error: type[DMRNetError] | None = None
            ) -> None:
    """Raise ``error`` (ConfigError) "NAME must be RULE; got VALUE" unless ``value`` is a
    number (not a bool) that passes ``rule``."""
    text, ok = rule
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise (error or ConfigError)(f"{name} must be {text}; got {value!r}")
