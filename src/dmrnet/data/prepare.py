"""``dmrnet prepare``: turn a dataset's videos into the layout its loader reads, with PyAV.

- ``cremad``: frames of the CREMA-D videos, one per second (``Image-01-FPS/<clip>/``; the
  audio ships as WAV files).
- ``kinetics_sounds``: frames and the audio track (a mono 16-bit WAV at 16 kHz) of each clip
  of ``<videos>/<split>/<class>/<clip>.mp4``.

Each clip's output is written beside its place and moved there when complete, so an
interrupted run leaves no half-written clip (which a later run would skip as done).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dmrnet.data.base import DataError
from dmrnet.data.io import write_wav

VIDEO_SUFFIXES = (".flv", ".mp4", ".avi", ".mkv", ".mov", ".webm")


def _pyav() -> Any:
    """PyAV, or a one-line error saying how to install it."""
    try:
        import av
    except ImportError as err:
        raise DataError("reading videos needs PyAV: pip install av") from err
    return av


def _open(video: Path) -> Any:
    try:
        return _pyav().open(str(video))
    except DataError:
        raise
    except Exception as err:  # PyAV raises its own error hierarchy for unreadable files
        raise DataError(f"cannot open video {str(video)!r}: {err}") from err


def extract_frames(video: Path, out_dir: Path, fps: float = 1.0) -> int:
    """Write frames ``00000.jpg, 00001.jpg, ...`` taken every 1/fps seconds; returns the count."""
    container = _open(video)
    count, next_time = 0, 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else count / fps
                if t + 1e-6 >= next_time:
                    frame.to_image().save(out_dir / f"{count:05d}.jpg", quality=95)
                    count += 1
                    next_time = count / fps
    except Exception as err:
        raise DataError(f"cannot decode video {str(video)!r}: {err}") from err
    if count == 0:
        raise DataError(f"video {str(video)!r} has no frame")
    return count


def extract_audio(video: Path, out: Path, rate: int = 16000) -> bool:
    """Write the video's first audio track as a mono 16-bit WAV at ``rate``; False (nothing
    written) when it has none."""
    container = _open(video)
    chunks = []
    try:
        with container:
            if not container.streams.audio:
                return False
            resampler = _pyav().AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except Exception as err:
        raise DataError(f"cannot decode the audio of {str(video)!r}: {err}") from err
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise DataError(f"the audio track of {str(video)!r} holds no samples")
    write_wav(out, samples.astype(np.float32) / 32768.0, rate)
    return True


def _partial(target: Path) -> Path:
    """A hidden sibling of ``target`` to write into (moved to ``target`` when complete)."""
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def _frames_into(video: Path, target: Path, fps: float) -> None:
    """``target/`` filled with the video's frames, or left as it was if extraction fails."""
    partial = _partial(target)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        extract_frames(video, partial, fps)
        if target.is_dir():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _audio_into(video: Path, target: Path, rate: int) -> bool:
    """``target`` (a WAV) written from the video's audio track; False when it has none."""
    partial = _partial(target)
    try:
        found = extract_audio(video, partial, rate)
        if found:
            partial.replace(target)
        return found
    finally:
        partial.unlink(missing_ok=True)


T = TypeVar("T")
R = TypeVar("R")


def each_clip(work: Sequence[T], fn: Callable[[T], R], jobs: int = 1) -> Iterator[R]:
    """``fn`` over ``work`` in order, in ``jobs`` processes when more than one (decoding is
    CPU-bound, and threads gave no speed-up). ``fn`` must be picklable (a module-level
    function, or a ``functools.partial`` of one). An error or Ctrl-C stops what is not
    started; a clip being written is left whole or not at all."""
    jobs = max(1, min(int(jobs), len(work)))
    if jobs == 1:
        yield from map(fn, work)
        return
    # forked where the system can (Linux, macOS): a spawned process imports dmrnet (torch,
    # seconds) before its first clip. A child runs no torch, OpenMP or BLAS code (PyAV,
    # Pillow, NumPy copies), so thread pools of the parent do not matter to it
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        try:
            yield from pool.map(fn, work)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _cremad_clip(item: tuple[Path, Path], fps: float) -> None:
    video, target = item
    target.parent.mkdir(parents=True, exist_ok=True)
    _frames_into(video, target, fps)


def prepare_cremad(videos: str | Path, out: str | Path, fps: float = 1.0,
                   overwrite: bool = False, echo: Callable[[str], None] = print,
                   jobs: int = 1) -> int:
    """Extract frames of every video in ``videos`` into ``out/<clip>/``, ``jobs`` clips at
    a time. Clips whose folder already holds frames are skipped unless ``overwrite``.
    Returns the number of clips done."""
    src, dst = Path(videos), Path(out)
    if not src.is_dir():
        raise DataError(f"video folder {str(src)!r} does not exist")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"no video ({', '.join(VIDEO_SUFFIXES)}) in {str(src)!r}")
    work = [(video, dst / video.stem) for video in files]
    todo = [(v, t) for v, t in work if overwrite or not (t.is_dir() and any(t.iterdir()))]
    skipped, done = len(work) - len(todo), 0
    for _ in each_clip(todo, functools.partial(_cremad_clip, fps=fps), jobs):
        done += 1
        if done % 500 == 0:
            echo(f"{done}/{len(todo)} videos")
    echo(f"extracted frames of {done} clip(s) into {str(dst)!r}"
         + (f"; kept {skipped} existing (--overwrite to redo)" if skipped else ""))
    return done


def _kinetics_clip(item: tuple[Path, Path, Path], fps: float, rate: int) -> str | None:
    """A clip's frames and audio written; what went wrong (naming the video), or None."""
    video, frames, wav = item
    wrote = False
    try:
        frames.parent.mkdir(parents=True, exist_ok=True)
        wav.parent.mkdir(parents=True, exist_ok=True)
        _frames_into(video, frames, fps)
        wrote = True
        if not _audio_into(video, wav, rate):  # remembered: a rerun does not retry it
            (frames.parent / f".{video.stem}.no-audio").touch()
        return None
    except BaseException as err:  # the clip is left out whole: no frames without its audio
        if wrote:  # (Ctrl-C between the two included)
            shutil.rmtree(frames, ignore_errors=True)
        if not isinstance(err, DataError):
            raise
        return f"{video}: {err}"


ERRORS_HEADER = "# dmrnet prepare: clips that could not be read, one per line"
"""The first line of the list of unreadable clips (only such a file is replaced or removed)."""


def prepare_kinetics_sounds(videos: str | Path, out: str | Path, fps: float = 1.0,
                            rate: int = 16000, overwrite: bool = False,
                            echo: Callable[[str], None] = print, jobs: int = 1) -> int:
    """The Kinetics-Sounds layout in ``out`` from the clips ``videos/<split>/<class>/<clip>``
    (split: train, test, and val if present): each clip's frames in
    ``out/visual/<split>_img/Image-01-FPS/<class>/<clip>/`` and its audio in
    ``out/audio/<split>/<class>/<clip>.wav``. A clip without an audio track gets frames only
    (a sample with its audio missing); a clip that cannot be read is left out, named in
    ``out/prepare_errors.txt``. Clips already done are kept unless ``overwrite``; ``jobs``
    clips are prepared at a time. Returns the number of clips done."""
    src, dst = Path(videos), Path(out)
    if not src.is_dir():
        raise DataError(f"video folder {str(src)!r} does not exist")
    splits = [d for d in sorted(src.iterdir()) if d.is_dir() and d.name in ("train", "val", "test")]
    if not any(d.name == "train" for d in splits) or not any(d.name == "test" for d in splits):
        raise DataError(f"{str(src)!r} must hold train/ and test/ (and optionally val/), each "
                        "with a folder of clips per class: <videos>/<split>/<class>/<clip>.mp4")
    clips = [(split.name, cls.name, video) for split in splits
             for cls in sorted(p for p in split.iterdir() if p.is_dir())
             for video in sorted(cls.iterdir()) if video.suffix.lower() in VIDEO_SUFFIXES]
    if not clips:
        raise DataError(f"no video ({', '.join(VIDEO_SUFFIXES)}) in {str(src)!r}/<split>/<class>/")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DataError(f"--out {str(dst)!r} is inside the videos' folder; choose another")
    work = []
    for split, cls, video in clips:
        frames = dst / "visual" / f"{split}_img" / "Image-01-FPS" / cls / video.stem
        wav = dst / "audio" / split / cls / f"{video.stem}.wav"
        if overwrite or not (frames.is_dir() and any(frames.iterdir()) and (
                wav.is_file() or (frames.parent / f".{video.stem}.no-audio").is_file())):
            work.append((video, frames, wav))
    skipped, done = len(clips) - len(work), 0
    failed: list[str] = []
    for i, problem in enumerate(each_clip(work, functools.partial(
            _kinetics_clip, fps=fps, rate=rate), jobs), start=1):
        if problem is None:
            done += 1
        else:
            failed.append(problem)
        if i % 500 == 0:
            echo(f"{i}/{len(work)} clips")
    errors = dst / "prepare_errors.txt"
    ours = errors.is_file() and errors.read_text(errors="replace").startswith(ERRORS_HEADER)
    if failed and (ours or not errors.exists()):
        errors.write_text(ERRORS_HEADER + "\n" + "\n".join(failed) + "\n")
    elif failed:  # a file of the user's by that name: kept, the list goes beside it
        errors = dst / f"prepare_errors-{os.getpid()}.txt"
        errors.write_text(ERRORS_HEADER + "\n" + "\n".join(failed) + "\n")
    elif ours:
        errors.unlink()  # an earlier run's list: every clip is done now
    echo(f"prepared {done} clip(s) into {str(dst)!r}"
         + (f"; kept {skipped} existing (--overwrite to redo)" if skipped else "")
         + (f"; {len(failed)} clip(s) could not be read and are left out (listed in "
            f"{str(errors)!r})" if failed else ""))
    return done
