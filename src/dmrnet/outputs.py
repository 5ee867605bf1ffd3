"""Output folders that are never destroyed by accident.

:class:`RunFolder` is how ``dmrnet benchmark`` writes ``--out``: the run goes into a hidden
sibling folder (``.NAME.partial-PID``) and is moved into place only when it is complete, so a
failure, a full disk or Ctrl-C never leaves a half-written run under ``--out`` and never touches
what was there. ``--overwrite`` replaces an existing folder only at that final moment, and only
one that dmrnet wrote (it holds the marker file ``.dmrnet-run``). Paths that hold more than a
run are refused: ``''``, the current folder, the home folder, ``/``, and the data (or any folder
above it). A lock file beside the folder keeps a second process from writing the same run; it
is removed when the run ends. A run stopped by Ctrl-C or SIGTERM leaves nothing behind, and a
folder at ``--out`` that a user filled while the run trained is never replaced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from dmrnet.errors import DivergedError, DMRNetError, RunInterruptedError, first_line

MARKER = ".dmrnet-run"
"""File in every folder dmrnet writes a run into; only such folders may be replaced."""

KINDS = {"run": "benchmark run", "model": "model folder"}
"""What a marked folder holds; ``--overwrite`` replaces a folder only with one of its kind."""


def folder_kind(path: Path) -> str:
    """The kind of a folder dmrnet wrote (see :data:`KINDS`): as its marker says, or, for
    folders written before markers named it, from what is in it."""
    text = (path / MARKER).read_text(errors="replace")
    for kind in KINDS:
        if f"kind: {kind}" in text:
            return kind
    model = (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return "model" if model and not (path / "results.json").exists() else "run"


class OutputError(DMRNetError):
    """An output path that dmrnet will not write to (or replace)."""


def real_path(path: str | Path, what: str = "--out") -> Path:
    """``path`` absolute, with ``~`` and symbolic links resolved; an :class:`OutputError`
    naming ``what`` for a path that runs through a loop of links."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11: RuntimeError("Symlink loop ...")
        raise OutputError(f"{what} {str(path)!r} runs through a loop of symbolic links "
                          f"({first_line(err)}); give a path without it") from None


def check_output_path(out: str | Path, protected: Iterable[str | Path] = ()) -> Path:
    """The resolved ``--out``, or an :class:`OutputError` if writing there could destroy
    something: '' or '.', the current folder, the home folder, '/', or a folder that is (or
    contains) one of ``protected`` (the data, a manifest)."""
    if not str(out).strip():
        raise OutputError("--out is empty; name a new folder for the results, e.g. "
                          "--out runs/my-run")
    path = real_path(out)
    forbidden = {Path.cwd().resolve(): "the current folder", Path.home().resolve():
                 "your home folder", Path(path.anchor): "the file system root"}
    if path in forbidden:
        raise OutputError(f"--out {str(out)!r} is {forbidden[path]}; name a new folder for the "
                          "results, e.g. --out runs/my-run")
    for item in protected:
        p = real_path(item, "the data path")
        if path == p or path in p.parents:
            raise OutputError(f"--out {str(out)!r} holds your data ({str(item)!r}); choose a "
                              "folder outside it")
    return path


class RunFolder:
    """``with RunFolder(out, overwrite, protected) as work:`` write everything into ``work``;
    on a clean exit it becomes ``out``. Checks run in the constructor, before any work."""

    def __init__(self, out: str | Path, overwrite: bool,
                 protected: Iterable[str | Path] = (), kind: str = "run") -> None:
        self.path = check_output_path(out, protected)
        self.overwrite = overwrite
        self.kind = kind
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"output path {str(out)!r} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise OutputError(f"output folder {str(out)!r} is not empty; choose another "
                                  "--out or pass --overwrite to replace it")
            if not (self.path / MARKER).is_file():
                raise OutputError(f"output folder {str(out)!r} was not written by dmrnet (no "
                                  f"{MARKER} in it), so --overwrite will not replace it; "
                                  "choose another --out")
            existing = folder_kind(self.path)
            if existing != kind:
                raise OutputError(f"output folder {str(out)!r} is a {KINDS[existing]}; "
                                  f"--overwrite replaces only a {KINDS[kind]}: choose another "
                                  "--out")
        parent = self.path.parent
        above = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if above is not None and not above.is_dir():
            raise OutputError(f"--out {str(out)!r} is under {str(above)!r}, which is a file; "
                              "choose a folder path")
        if above is not None and not os.access(above, os.W_OK):
            raise OutputError(f"cannot write to {str(above)!r} (for --out {str(out)!r}): "
                              "permission denied; choose a writable folder")
        self.work = parent / f".{self.path.name}.partial-{os.getpid()}"
        self._lock_file: object = None

    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return
        while True:
            lock = open(self.lock_path, "a")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                lock.close()
                raise OutputError(f"another dmrnet process is writing {str(self.path)!r}; wait "
                                  "for it or choose another --out") from err
            try:  # the file its holder removes on release: locked, but no longer the lock
                if os.stat(self.lock_path).st_ino == os.fstat(lock.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            lock.close()
        self._lock_file = lock  # held (and released by the OS if we die) until the end

    def _unlock(self) -> None:
        if self._lock_file is None:
            return
        try:  # removed while held: a process waiting on it then takes a new one
            self.lock_path.unlink()
        except FileNotFoundError:
            pass
        finally:
            self._lock_file.close()  # type: ignore[attr-defined]
            self._lock_file = None

    def __enter__(self) -> Path:
        try:  # created only now: the checks above touch nothing
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create the folder for --out {str(self.path)!r}: "
                              f"{err.strerror}") from err
        self._lock()
        self.work.mkdir()
        (self.work / MARKER).write_text(f"written by dmrnet; kind: {self.kind}; --overwrite may "
                                        f"replace this folder with another {KINDS[self.kind]}\n")
        return self.work

    def _commit(self) -> None:
        old = None
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # an empty folder: the run takes its place
        elif self.path.exists() or self.path.is_symlink():
            if not (self.overwrite and (self.path / MARKER).is_file()
                    and folder_kind(self.path) == self.kind):
                # e.g. a file the user put there while the run trained: never replaced
                raise OutputError(f"{str(self.path)!r} was created or filled while the run "
                                  f"trained, so it is left as it is; the finished run is in "
                                  f"{str(self.work)!r}")
            old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            self.path.rename(old)  # the previous run stays whole until the new one is in place
        self.work.rename(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self._commit()
            elif issubclass(kind, (KeyboardInterrupt, RunInterruptedError, DivergedError)) \
                    or self.kind != "run" \
                    or not any(p.is_file() and p.name != MARKER for p in self.work.rglob("*")):
                # stopped by Ctrl-C or SIGTERM, every run diverged, a model folder (half of
                # one is of no use), or nothing worth keeping: no trace is left
                shutil.rmtree(self.work, ignore_errors=True)
        finally:
            self._unlock()

    @property
    def kept(self) -> Path | None:
        """The partial folder left by an interrupted or failed run, if any."""
        return self.work if self.work.exists() else None
