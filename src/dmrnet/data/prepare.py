"""``dmrnet prepare cremad``: extract frames from the CREMA-D videos with PyAV (one per second,
the ``Image-01-FPS`` layout the loader reads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dmrnet.data.base import DataError

VIDEO_SUFFIXES = (".flv", ".mp4", ".avi", ".mkv", ".mov", ".webm")


def extract_frames(video: Path, out_dir: Path, fps: float = 1.0) -> int:
    """Write frames ``00000.jpg, 00001.jpg, ...`` taken every 1/fps seconds; returns the count."""
    try:
        import av
    except ImportError as err:
        raise DataError("frame extraction needs PyAV: pip install av") from err
    try:
        container = av.open(str(video))
    except Exception as err:  # PyAV raises its own error hierarchy for unreadable files
        raise DataError(f"cannot open video {str(video)!r}: {err}") from err
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


def prepare_cremad(videos: str | Path, out: str | Path, fps: float = 1.0,
                   overwrite: bool = False, echo: Callable[[str], None] = print) -> int:
    """Extract frames of every video in ``videos`` into ``out/<clip>/``. Clips whose folder
    already holds frames are skipped unless ``overwrite``. Returns the number of clips done."""
    src, dst = Path(videos), Path(out)
    if not src.is_dir():
        raise DataError(f"video folder {str(src)!r} does not exist")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"no video ({', '.join(VIDEO_SUFFIXES)}) in {str(src)!r}")
    done = skipped = 0
    for i, video in enumerate(files, start=1):
        target = dst / video.stem
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            skipped += 1
            continue
        if target.is_dir() and overwrite:
            for old in target.glob("*.jpg"):
                old.unlink()
        extract_frames(video, target, fps)
        done += 1
        if i % 500 == 0:
            echo(f"{i}/{len(files)} videos")
    echo(f"extracted frames of {done} clip(s) into {str(dst)!r}"
         + (f"; kept {skipped} existing (--overwrite to redo)" if skipped else ""))
    return done
