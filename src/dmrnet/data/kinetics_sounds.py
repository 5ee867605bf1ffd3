"""Kinetics-Sounds (audio + visual), from the user's local copy.

Layout under ``root``::

    visual/<split>_img/Image-01-FPS/<class>/<clip>/*.jpg
    audio/<split>/<class>/<clip>.wav

with ``<split>`` in train / test (and val, if present; otherwise 10 % of train, stratified, is
held out for validation). Classes come from ``class_list`` (a text file, one class per line) or
the sorted class folders; their number is read from the data. A clip with only one modality on
disk is a sample with that modality missing.
"""

from __future__ import annotations

from pathlib import Path

from dmrnet.data.base import DATASETS, DataError, DatasetDefaults, SplitData, require_root
from dmrnet.data.files import (
    AudioReader,
    FramesReader,
    Record,
    carve_validation,
    check_records,
    file_splits,
    select_modalities,
)
from dmrnet.data.io import read_text
from dmrnet.data.transforms import AudioSpec

DEFAULT_AUDIO = {"sample_rate": 16000, "seconds": 3.0, "tile": 1, "train_crop": "random"}


def _classes(base: Path, class_list: str | None) -> list[str]:
    if class_list is not None:
        path = Path(class_list) if Path(class_list).is_absolute() else base / class_list
        if not path.is_file():
            raise DataError(f"class list {str(path)!r} does not exist")
        names = [line.strip() for line in read_text(path, "class list").splitlines()
                 if line.strip()]
        if len(set(names)) != len(names):
            raise DataError(f"class list {str(path)!r} names a class twice")
    else:
        found = set()
        for d in (base / "audio" / "train", base / "visual" / "train_img" / "Image-01-FPS"):
            if d.is_dir():
                found |= {p.name for p in d.iterdir() if p.is_dir()}
        names = sorted(found)
    if len(names) < 2:
        raise DataError(f"Kinetics-Sounds needs at least 2 classes; found {names} under "
                        f"{str(base)!r}")
    return names


def _records(base: Path, split: str, classes: list[str], mods: list[str]) -> list[Record]:
    audio_dir = base / "audio" / split
    visual_dir = base / "visual" / f"{split}_img" / "Image-01-FPS"
    clips: dict[tuple[str, str], dict[str, Path]] = {}
    for m, d in (("audio", audio_dir), ("visual", visual_dir)):
        if m not in mods or not d.is_dir():
            continue
        for cls_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            if cls_dir.name not in classes:
                raise DataError(f"class folder {str(cls_dir)!r} is not in the class list "
                                f"({len(classes)} classes)")
            for item in sorted(cls_dir.iterdir()):
                is_clip = item.suffix.lower() == ".wav" if m == "audio" else item.is_dir()
                if is_clip:
                    clips.setdefault((cls_dir.name, item.stem if m == "audio" else item.name),
                                     {})[m] = item
    return [
        Record({m: paths.get(m) for m in mods}, classes.index(cls), f"{split}/{cls}/{clip}")
        for (cls, clip), paths in sorted(clips.items())
    ]


@DATASETS.register("kinetics_sounds", DatasetDefaults(model={"encoder": "resnet18"}))
def kinetics_sounds(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    class_list: str | None = None,
    frames: int = 1,
    image_size: int = 224,
    audio: dict | None = None,
    val_fraction: float = 0.1,
) -> SplitData:
    """Kinetics-Sounds as SplitData with modalities ``audio`` and ``visual``."""
    base = require_root(root, "Kinetics-Sounds")
    mods = select_modalities(["audio", "visual"], modalities, "Kinetics-Sounds")
    classes = _classes(base, class_list)
    train = _records(base, "train", classes, mods)
    test = _records(base, "test", classes, mods)
    has_val = (base / "audio" / "val").is_dir() or (base / "visual" / "val_img").is_dir()
    if has_val:
        val = _records(base, "val", classes, mods)
    else:
        train, val = carve_validation(train, val_fraction, seed)
    for name, recs in (("train", train), ("val", val), ("test", test)):
        check_records(recs, mods, f"Kinetics-Sounds {name} split")
    readers = {}
    if "audio" in mods:
        readers["audio"] = AudioReader(AudioSpec.of(audio, DEFAULT_AUDIO))
    if "visual" in mods:
        readers["visual"] = FramesReader(size=image_size, frames=frames)
    info = {"source": "Kinetics-Sounds", "root": str(base), "classes": len(classes),
            "validation": "val folder" if has_val else f"{val_fraction:.0%} of train"}
    return file_splits(train, val, test, readers, classes, info)
