"""The ``dmrnet`` command's entry point, light enough to run before torch is loaded.

Importing the command line (torch, Lightning, torchmetrics) takes seconds, more on a busy
machine; a Ctrl-C or SIGTERM then ends the start-up with one line and the shell's exit code
(130 or 143), not a traceback from inside an import. Once the command has finished, its exit
code is final: a late Ctrl-C no longer interrupts Python's own clean-up at exit.
"""

from __future__ import annotations

import os
import signal
import sys

from dmrnet import signals
from dmrnet.version import __version__


def main() -> int:
    """Run ``dmrnet`` (see :func:`dmrnet.cli.main`)."""
    if sys.argv[1:] == ["--version"]:  # without the seconds of importing torch
        print(f"dmrnet {__version__}")
        return 0

    def stop(signum: int, frame: object) -> None:
        # nothing has been read or written yet, and an exception raised here could be caught
        # half-way through an extension module's import (numpy then fails with an ImportError)
        word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        os.write(2, f"dmrnet: {word} while starting; nothing was read or written\n".encode())
        os._exit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from dmrnet.cli import command_of, load_command
        from dmrnet.cli import main as command

        load_command(command_of(sys.argv[1:]))  # torch and Lightning, for a command that runs
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    try:
        return command()
    except KeyboardInterrupt:  # between the command's own handling and the return
        print(f"dmrnet: {signals.stop_word()}", file=sys.stderr)
        return signals.exit_code()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # the exit code is final
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
