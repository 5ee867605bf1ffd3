"""Ctrl-C (SIGINT) and SIGTERM end a dmrnet command the same way: the work stops, nothing
unfinished is left where a finished result would be, one line says what was kept, and the exit
code is the shell's (130 for SIGINT, 143 for SIGTERM).

Lightning ends the process with ``sys.exit(1)`` when Ctrl-C reaches ``fit`` or ``test`` (and
ignores further Ctrl-C from then on): :func:`lightning_interrupts` turns that back into a
:class:`KeyboardInterrupt` so that the caller's clean-up runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_RECEIVED: list[int] = []  # SIGTERM, once received by this command


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM inside a run; ``where`` names the run (e.g. ``baseline-seed0,
    epoch 3``)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Inside, SIGTERM stops the command as Ctrl-C does (a :class:`KeyboardInterrupt`) and
    :func:`exit_code` says 143; the previous handler is back afterwards. Only the main thread
    can set signal handlers; elsewhere this changes nothing."""
    _RECEIVED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: Any) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def terminated() -> bool:
    """Whether a SIGTERM (not Ctrl-C) stopped this command."""
    return signal.SIGTERM in _RECEIVED


def exit_code() -> int:
    """The shell's exit code for the signal that stopped the command: 143 or 130."""
    return 128 + (signal.SIGTERM if terminated() else signal.SIGINT)


def stop_word() -> str:
    return "terminated (SIGTERM)" if terminated() else "interrupted"


@contextmanager
def lightning_interrupts(trainer: Any) -> Iterator[None]:
    """Around ``trainer.fit|validate|test``: Lightning's exit after a Ctrl-C becomes a
    :class:`KeyboardInterrupt` again, and Ctrl-C its default handler."""
    try:
        yield
    except SystemExit:
        if not getattr(trainer, "interrupted", False):
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
