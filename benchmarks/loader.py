"""Loader throughput at the CREMA-D recipe shapes, per worker, before and after moving the
batchable steps to the device.

Builds a CREMA-D copy in a temporary folder (2.5-s WAVs at 16 kHz like the real AudioWAV files,
480x360 JPEG frames like `dmrnet prepare cremad` writes), then times the training loader
(audio -> 1x257x188 log-spectrogram, frame -> 3x224x224 random resized crop + flip):

- before: every step per sample in the loader (spectrogram by one STFT per clip, frame decoded
  whole and cropped/resized in float32; float32 items);
- after: the loader yields the waveform window and a uint8 frame cropped and resized while
  decoding (Pillow, JPEG draft mode); the STFT, log, standardisation and ImageNet
  normalisation run once per batch on the device (`SplitData.finish_batch`).

"per worker" is one process doing a worker's whole job (num_workers=0; the collate included),
so it is what each DataLoader worker can deliver. The device-side finish is timed separately
on this CPU (on a GPU it is a few batched kernels). Before and after alternate, medians of
``--reps`` runs, and the ratio is printed.

    python benchmarks/loader.py [--clips 96] [--reps 3] [--rate 16000] [--frames smooth|noise]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmrnet.data import cremad
from dmrnet.data.io import write_wav
from dmrnet.training import MultimodalDataModule

MODEL_STEP = 1200  # samples/s of the CREMA-D model step on one H100 (issue 9)


def frame(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A 360x480 RGB frame: "smooth" (a low-frequency colour field plus sensor noise, which
    compresses like video frames, ~45 KB at quality 90) or "noise" (uniform noise, ~150 KB: the
    slowest case for the JPEG decoder)."""
    if kind == "noise":
        return rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
    low = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    field = np.asarray(low.resize((480, 360), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)


def build(root: Path, clips: int, rate: int, kind: str) -> None:
    rng = np.random.default_rng(0)
    emotions = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    (root / "AudioWAV").mkdir(parents=True)
    for i in range(clips):
        clip = f"{1001 + i % 10}_S{i:03d}_{emotions[i % 6]}_XX"
        write_wav(root / "AudioWAV" / f"{clip}.wav", 0.3 * rng.standard_normal(int(2.5 * rate)),
                  rate)
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True)
        for f in range(3):
            Image.fromarray(frame(rng, kind)).save(frames / f"{f:05d}.jpg", quality=90)


def loader(root: Path, data, workers: int) -> MultimodalDataModule:
    dm = MultimodalDataModule("cremad", root=str(root), batch_size=16, num_workers=workers)
    dm._data = data  # the same split for every contender
    return dm


def rate(dm: MultimodalDataModule, finish: bool) -> float:
    """Samples/s through the training loader (and the device-side finish, if asked)."""
    t0 = time.perf_counter()
    n = 0
    for batch in dm.train_dataloader():
        if finish:
            batch = dm.on_after_batch_transfer(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=int, default=16000, help="WAV sample rate (CREMA-D: 16000)")
    p.add_argument("--frames", choices=["smooth", "noise"], default="smooth")
    p.add_argument("--workers", type=int, default=2, help="also time this many workers")
    args = p.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.clips, args.rate, args.frames)
        after = cremad(root, seed=0)
        before = cremad(root, seed=0)
        for reader in before.train.readers.values():
            reader.on_device = False
        before.device_transforms.clear()
        print(f"{len(after.train)} training clips ({args.rate} Hz WAVs, {args.frames} 480x360 "
              f"JPEG frames); model inputs {after.input_shapes}")
        print(f"loader items before: {before.item_shapes} float32; after: {after.item_shapes}, "
              f"visual {after.item_dtypes['visual']}\n")
        cases = {
            "before, per worker": (before, 0, False),
            "after, per worker": (after, 0, False),
            "after, per worker + finish on this CPU": (after, 0, True),
        }
        if args.workers:
            cases[f"before, {args.workers} workers"] = (before, args.workers, False)
            cases[f"after, {args.workers} workers + finish"] = (after, args.workers, True)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.reps):
            for name, (data, workers, finish) in cases.items():
                times[name].append(rate(loader(root, data, workers), finish))
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, value in med.items():
            print(f"{name:<42} {value:8.1f} samples/s")
        b, a = med["before, per worker"], med["after, per worker"]
        print(f"\nper-worker throughput, after / before: {a / b:.2f}x")
        print(f"workers to feed the {MODEL_STEP} samples/s of the model step on one H100: "
              f"before {math.ceil(MODEL_STEP / b)}, after {math.ceil(MODEL_STEP / a)}")
        if args.workers:
            k = args.workers
            print(f"{k} workers, after / before: "
                  f"{med[f'after, {k} workers + finish'] / med[f'before, {k} workers']:.2f}x "
                  "(this machine's cores are shared by the workers and the main process)")


if __name__ == "__main__":
    main()
