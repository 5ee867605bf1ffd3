"""CASIA-SURF face anti-spoofing (RGB, depth, IR; label 1 = real, 0 = attack).

List files under ``root`` with lines ``rgb_path depth_path ir_path label`` (paths relative to
``root``); ``train_list``, ``val_list`` and ``test_list`` name them. Checkpoints are selected on
the validation list (by ACER, see the CASIA-SURF configs).
"""

from __future__ import annotations

from pathlib import Path

from dmrnet.data.base import DATASETS, DataError, DatasetDefaults, SplitData, require_root
from dmrnet.data.files import ImageReader, Record, check_records, file_splits, select_modalities
from dmrnet.data.io import read_text

MODALITIES = ["rgb", "depth", "ir"]
CLASSES = ["attack", "real"]


def read_list(base: Path, name: str, mods: list[str]) -> list[Record]:
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        raise DataError(f"CASIA-SURF list file {str(path)!r} does not exist")
    records = []
    for n, line in enumerate(read_text(path, "CASIA-SURF list").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path.name} line {n}"
        if len(fields) != 4:
            raise DataError(f"{where}: expected 4 fields 'rgb_path depth_path ir_path label', "
                            f"got {len(fields)}")
        if fields[3] not in ("0", "1"):
            raise DataError(f"{where}: label {fields[3]!r} is not 0 (attack) or 1 (real)")
        paths = dict(zip(MODALITIES, fields[:3], strict=True))
        records.append(Record({m: base / paths[m] for m in mods}, int(fields[3]), where))
    return records


@DATASETS.register("casia_surf", DatasetDefaults(model={
    "encoder": "se_resnet_stem", "trunk": "resnet_trunk", "metric": "acer", "embed_dim": 512}))
def casia_surf(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    train_list: str = "train_list.txt",
    val_list: str = "val_list.txt",
    test_list: str = "test_list.txt",
    image_size: int = 112,
) -> SplitData:
    """CASIA-SURF as SplitData with modalities ``rgb``, ``depth``, ``ir`` (3 x 112 x 112)."""
    base = require_root(root, "CASIA-SURF")
    mods = select_modalities(MODALITIES, modalities, "CASIA-SURF")
    splits = [read_list(base, name, mods) for name in (train_list, val_list, test_list)]
    for name, recs in zip((train_list, val_list, test_list), splits, strict=True):
        check_records(recs, mods, f"CASIA-SURF list {name}")
    # CASIA-SURF depth and IR are stored as images; like the authors, read all as 3 channels
    readers = {m: ImageReader(channels=3, recipe="casia", size=(image_size, image_size))
               for m in mods}
    info = {"source": "CASIA-SURF", "root": str(base), "positive_class": "real (1)"}
    return file_splits(*splits, readers, CLASSES, info)
