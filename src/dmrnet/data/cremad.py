"""CREMA-D (audio + visual, 6 emotions), from the user's local copy.

Layout under ``root``::

    AudioWAV/<clip>.wav                 e.g. AudioWAV/1001_DFA_ANG_XX.wav
    Image-01-FPS/<clip>/*.jpg           one or more frames per clip (``dmrnet prepare cremad``)

Splits: CSV files of lines ``clip_id,LABEL`` (``train_csv``, ``test_csv``, optional
``val_csv``; relative to ``root`` or absolute). Without a validation file, one is carved from the
training list by speaker. Without any split file, a deterministic speaker-independent split is
built from the actor id in the clip name (70/10/20 % of actors), and the log says so.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from dmrnet.data.base import DATASETS, DataError, DatasetDefaults, SplitData, require_root
from dmrnet.data.files import (
    AudioReader,
    FramesReader,
    Record,
    check_records,
    file_splits,
    select_modalities,
)
from dmrnet.data.io import read_text
from dmrnet.data.transforms import AudioSpec

log = logging.getLogger("dmrnet")

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def read_split_csv(path: Path, classes: list[str]) -> list[tuple[str, int, str]]:
    """Lines ``clip_id,LABEL`` -> [(clip_id, class index, "file line N")]."""
    if not path.is_file():
        raise DataError(f"split file {str(path)!r} does not exist")
    out = []
    with io.StringIO(read_text(path, "split file"), newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{path.name} line {n}"
            if len(row) != 2:
                raise DataError(f"{where}: expected 2 fields 'clip_id,LABEL', got {len(row)}")
            clip, label = row[0].strip(), row[1].strip()
            if label not in classes:
                raise DataError(f"{where}: label {label!r} is not one of {classes}")
            out.append((clip, classes.index(label), where))
    if not out:
        raise DataError(f"split file {str(path)!r} lists no clip")
    return out


def _actor(clip: str) -> str:
    return clip.split("_")[0]


def speaker_split(actors: list[str], seed: int, fractions=(0.7, 0.1, 0.2)) -> list[set[str]]:
    """Assign actors (sorted, then shuffled from ``seed``) to parts with the given fractions;
    every part with a positive fraction gets at least one actor."""
    order = sorted(set(actors))
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    n = len(order)
    if n < sum(f > 0 for f in fractions):
        raise DataError(f"{n} speaker(s) cannot be split into {len(fractions)} speaker-disjoint "
                        "parts; give split files")
    counts = [max(round(f * n), 1 if f > 0 else 0) for f in fractions]
    counts[int(np.argmax(counts))] += n - sum(counts)
    bounds = np.cumsum([0, *counts])
    return [set(order[bounds[i] : bounds[i + 1]]) for i in range(len(fractions))]


@DATASETS.register("cremad", DatasetDefaults(model={"encoder": "resnet18"}))
def cremad(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    train_csv: str | None = None,
    val_csv: str | None = None,
    test_csv: str | None = None,
    frames: int = 1,
    image_size: int = 224,
    audio: dict | None = None,
) -> SplitData:
    """CREMA-D as SplitData with modalities ``audio`` (1 x 257 x 188) and ``visual``."""
    base = require_root(root, "CREMA-D")
    mods = select_modalities(["audio", "visual"], modalities, "CREMA-D")
    wav_dir, img_dir = base / "AudioWAV", base / "Image-01-FPS"
    for m, d in (("audio", wav_dir), ("visual", img_dir)):
        if m in mods and not d.is_dir():
            raise DataError(f"CREMA-D {m} folder {str(d)!r} does not exist")

    def record(clip: str, label: int, where: str) -> Record:
        paths = {"audio": wav_dir / f"{clip}.wav", "visual": img_dir / clip}
        return Record({m: paths[m] for m in mods}, label, where)

    info: dict = {"source": "CREMA-D", "root": str(base)}
    if train_csv or test_csv:
        if not (train_csv and test_csv):
            raise DataError("give both train_csv and test_csv (val_csv is optional)")
        train = [record(*r) for r in read_split_csv(base / train_csv, CLASSES)]
        test = [record(*r) for r in read_split_csv(base / test_csv, CLASSES)]
        if val_csv:
            val = [record(*r) for r in read_split_csv(base / val_csv, CLASSES)]
        else:  # speaker-independent validation carved from the training list
            _, va_actors = speaker_split([_actor(_clip(r)) for r in train], seed, (0.9, 0.1))
            val = [r for r in train if _actor(_clip(r)) in va_actors]
            train = [r for r in train if _actor(_clip(r)) not in va_actors]
            info["validation"] = "10% of the training actors"
    else:
        source = wav_dir if "audio" in mods else img_dir
        clips = sorted(p.stem if p.suffix else p.name for p in source.iterdir()
                       if p.suffix.lower() == ".wav" or p.is_dir())
        if not clips:
            raise DataError(f"no CREMA-D clip found in {str(source)!r}")
        recs = []
        for clip in clips:
            parts = clip.split("_")
            if len(parts) < 3 or parts[2] not in CLASSES:
                raise DataError(f"clip name {clip!r} does not follow ACTOR_SENTENCE_EMOTION_LEVEL")
            recs.append(record(clip, CLASSES.index(parts[2]), f"clip {clip}"))
        tr_a, va_a, te_a = speaker_split([_actor(c) for c in clips], seed)
        train = [r for r in recs if _actor(_clip(r)) in tr_a]
        val = [r for r in recs if _actor(_clip(r)) in va_a]
        test = [r for r in recs if _actor(_clip(r)) in te_a]
        info["split"] = "speaker-independent from actor ids (70/10/20 % of actors)"
        log.warning("CREMA-D: no split files given; built a deterministic speaker-independent "
                    "split from the actor ids (seed %d): %d / %d / %d clips",
                    seed, len(train), len(val), len(test))
    for name, recs in (("training split", train), ("validation split", val),
                       ("test split", test)):
        check_records(recs, mods, f"CREMA-D {name}")
    readers = {}
    if "audio" in mods:
        # CREMA-D's AudioWAV files are 16 kHz: the device resamples whole batches to 22,050
        readers["audio"] = AudioReader(AudioSpec.of(audio, {"source_rate": 16000}))
    if "visual" in mods:
        readers["visual"] = FramesReader(size=image_size, frames=frames)
    return file_splits(train, val, test, readers, CLASSES, info)


def _clip(rec: Record) -> str:
    p = next(v for v in rec.paths.values() if v is not None)
    return Path(p).stem if Path(p).suffix else Path(p).name
