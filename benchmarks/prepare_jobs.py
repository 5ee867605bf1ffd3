"""``dmrnet prepare kinetics_sounds`` in one process vs ``--jobs N`` processes: seconds for
the same clips, measured side by side (runs alternate), idle and beside a busy process.

    .venv/bin/python benchmarks/prepare_jobs.py

The clips (MPEG-4 video and an AAC track, made here with PyAV) are Kinetics-Sounds-shaped:
10-second clips at 25 fps; the default size is smaller than Kinetics' to keep the run short.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_process
from dmrnet.data.prepare import prepare_kinetics_sounds


def write_clip(path: Path, seconds: float, size: tuple[int, int], seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    rate, fps = 44100, 25
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for _ in range(int(seconds * fps)):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        step = audio.codec_context.frame_size or 1024
        sound = (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        for start in range(0, len(sound), step):
            chunk = np.zeros((1, step), np.float32)
            part = sound[start:start + step]
            chunk[0, :len(part)] = part
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=(180, 320), metavar=("H", "W"))
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--reps", type=int, default=2, help="runs of each (medians printed)")
    args = parser.parse_args()
    if args.clips < 2:
        parser.error("--clips: at least 2 (a training and a test clip)")
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "clips"
        for i in range(args.clips):
            split = "test" if i % 4 == 1 else "train"  # a test clip from 2 clips on
            write_clip(videos / split / f"class{i % 2}" / f"clip{i}.mp4", args.seconds,
                       tuple(args.size), i)
        for label, busy in (("idle", 0), ("beside 1 busy process", 1)):
            times: dict[int, list[float]] = {1: [], args.jobs: []}
            with busy_process(busy) if busy else contextlib.nullcontext():
                for _ in range(args.reps):
                    for jobs in times:  # alternating, so machine noise hits both alike
                        out = Path(tmp) / "out"
                        t0 = time.perf_counter()
                        prepare_kinetics_sounds(videos, out, jobs=jobs, echo=lambda _: None)
                        times[jobs].append(time.perf_counter() - t0)
                        shutil.rmtree(out)
            one, many = statistics.median(times[1]), statistics.median(times[args.jobs])
            print(f"{label}: {args.clips} clips in {one:.2f} s with 1 process, {many:.2f} s "
                  f"with {args.jobs}: ratio {one / many:.2f}x")


if __name__ == "__main__":
    main()
