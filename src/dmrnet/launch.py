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


def main() -> int:
    """Run ``dmrnet`` (see :func:`dmrnet.cli.main`)."""
    got: list[int] = []

    def stop(signum: int, frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from dmrnet.cli import main as command
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:  # also where an import caught the KeyboardInterrupt and went on
        word = "terminated (SIGTERM)" if got[0] == signal.SIGTERM else "interrupted"
        print(f"dmrnet: {word} while starting; nothing was read or written", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # half-imported extension modules are not finalised: at exit they could turn the
        # interrupt into a death by SIGINT (exit -2 instead of 130) now and then
        os._exit(128 + got[0])
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
