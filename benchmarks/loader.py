"""Data loading speed for CREMA-D-shaped items: samples/s with 0 and 2 DataLoader workers.

Builds a small CREMA-D copy in a temporary folder (2.5-s 16 kHz WAVs, 480x360 JPEG frames, the
real sizes), then times the training loader (spectrogram 1x257x188, frame 3x224x224 with random
resized crop) with each worker count, alternating, and prints the ratio.

    python benchmarks/loader.py [--clips 96] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmrnet.data import cremad
from dmrnet.data.io import write_wav
from dmrnet.training import MultimodalDataModule


def build(root: Path, clips: int) -> None:
    rng = np.random.default_rng(0)
    emotions = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    (root / "AudioWAV").mkdir(parents=True)
    for i in range(clips):
        clip = f"{1001 + i % 10}_S{i:03d}_{emotions[i % 6]}_XX"
        write_wav(root / "AudioWAV" / f"{clip}.wav", 0.3 * rng.standard_normal(40000), 16000)
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True)
        for f in range(3):
            arr = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
            Image.fromarray(arr).save(frames / f"{f:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.clips)
        data = cremad(root, seed=0)
        print(f"{len(data.train)} training clips; item shapes {data.input_shapes}\n")
        times: dict[int, list[float]] = {0: [], 2: []}
        for _ in range(args.reps):
            for workers in (0, 2):
                dm = MultimodalDataModule("cremad", root=str(root), batch_size=16,
                                          num_workers=workers)
                dm._data = data  # same split for both
                t0 = time.perf_counter()
                n = sum(len(b) for b in dm.train_dataloader())
                times[workers].append(n / (time.perf_counter() - t0))
        rate = {w: statistics.median(v) for w, v in times.items()}
        print(f"workers 0: {rate[0]:7.1f} samples/s")
        print(f"workers 2: {rate[2]:7.1f} samples/s")
        print(f"ratio 2 workers / 0 workers: {rate[2] / rate[0]:.2f} (a 2-core machine)")


if __name__ == "__main__":
    main()
