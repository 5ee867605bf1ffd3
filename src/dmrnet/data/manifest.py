"""Bring your own data: a manifest CSV, one row per sample.

Columns: one per modality holding a file path (empty = that modality is missing for the
sample), a label column, and optionally a split column (train / val / test). Paths are relative
to ``root`` (default: the manifest's folder). File kinds per modality are declared in ``kinds``
(``npy``, ``image``, ``audio``) or read from the file suffixes (.npy; .png/.jpg/.jpeg/.bmp;
.wav). Samples that miss modalities in training are trained on what they have.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dmrnet.data.base import DATASETS, DataError, DatasetDefaults, SplitData, stratified_split
from dmrnet.data.files import (
    IMAGE_SUFFIXES,
    AudioReader,
    ImageReader,
    NpyReader,
    Reader,
    Record,
    TextReader,
    carve_validation,
    check_records,
    file_splits,
    special_file,
)
from dmrnet.data.io import read_image, read_npy, read_text
from dmrnet.data.transforms import AudioSpec

KINDS = ("npy", "image", "audio", "text")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _kind_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".txt":
        return "text"
    if suffix == ".wav":
        return "audio"
    return None


def _sorted_labels(values: set[str]) -> list[str]:
    try:
        return [str(v) for v in sorted(values, key=float)]
    except ValueError:
        return sorted(values)


# encoder "auto": an MLP for arrays, a ResNet-18 for images
@DATASETS.register("manifest", DatasetDefaults(model={"encoder": "auto"}))
def manifest(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    manifest: str | None = None,
    kinds: dict[str, str] | None = None,
    label_column: str = "label",
    split_column: str = "split",
    classes: list[str] | None = None,
    image_size: list[int] | None = None,
    image_channels: int = 3,
    audio: dict | None = None,
    text: dict | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> SplitData:
    """Read a manifest CSV into SplitData. ``standardize``: array (``.npy``) modalities are
    standardised per element on the training split's statistics, which trained models store
    and apply to raw inputs (``False``: the arrays as they are). Text (``.txt``) modalities
    are token ids of a vocabulary fitted on the training split (``text``: ``max_tokens``,
    ``max_words``, ``min_count``, ``lowercase``), stored with trained models too."""
    if manifest is None:
        raise DataError("the manifest dataset needs --manifest FILE (data.dataset_kwargs.manifest)")
    path = Path(manifest).expanduser()
    if not path.is_file():
        raise DataError(special_file(path) or f"manifest {str(path)!r} does not exist")
    base = Path(root).expanduser() if root is not None else path.parent
    content = read_text(path, "manifest")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    header = list(reader.fieldnames or [])
    rows = list(enumerate(reader, start=2))
    blank = [i + 1 for i, c in enumerate(header) if not c.strip()]
    if blank:
        raise DataError(f"manifest {path.name}: column {blank[0]} of the header has no name; "
                        "name every column")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"manifest {path.name}: column {twice[0]!r} appears twice in the header "
                        "(only one of them would be read); give each column its own name")
    if label_column not in header:
        raise DataError(f"manifest {path.name} has no label column {label_column!r}; "
                        f"columns: {header}")
    mod_columns = [c for c in header if c not in (label_column, split_column)]
    mods = list(modalities) if modalities is not None else mod_columns
    unknown = [m for m in mods if m not in mod_columns]
    if unknown:
        raise DataError(f"modality {unknown[0]!r} is not a column of {path.name}; "
                        f"modality columns: {mod_columns}")
    if not mods:
        raise DataError(f"manifest {path.name} has no modality column")
    if not rows:
        raise DataError(f"manifest {path.name} has no sample row")
    for n, row in rows:
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path.name} line {n}: expected {len(header)} fields like the header")
    for n, row in rows:
        label = row[label_column].strip()
        if not label or label.lower() in ("nan", "inf", "-inf", "+inf", "none", "null"):
            raise DataError(f"{path.name} line {n}: label {row[label_column]!r} is not a class; "
                            "give every row a label")
    labels = {row[label_column].strip() for _, row in rows}
    if classes is None:
        _same_class_two_ways(labels, rows, label_column, path.name)
    class_names = [str(c) for c in classes] if classes is not None else _sorted_labels(labels)

    records, split_of = [], []
    has_split = split_column in header
    for n, row in rows:
        where = f"{path.name} line {n}"
        label = row[label_column].strip()
        if label not in class_names:
            raise DataError(f"{where}: label {label!r} is not one of the classes {class_names}")
        paths = {m: (base / row[m].strip()) if row[m].strip() else None for m in mods}
        records.append(Record(paths, class_names.index(label), where))
        if has_split:
            value = row[split_column].strip().lower()
            if value not in SPLITS:
                raise DataError(f"{where}: split {row[split_column]!r} is not train, val or test")
            split_of.append(SPLITS[value])
    # a model of some of the columns (a dedicated one, a teacher) leaves out the samples that
    # have none of them, after the split: the others keep the split of every column's model
    some = sorted(mods) != sorted(mod_columns)
    check_records(records, mods, f"manifest {path.name}", allow_none=some)

    readers = {m: _reader(m, records, (kinds or {}).get(m), image_size, image_channels, audio,
                          text) for m in mods}
    if has_split:
        train = [r for r, s in zip(records, split_of, strict=True) if s == "train"]
        val = [r for r, s in zip(records, split_of, strict=True) if s == "val"]
        test = [r for r, s in zip(records, split_of, strict=True) if s == "test"]
        if not val:
            train, val = carve_validation(train, val_fraction, seed)
    else:
        labels_arr = np.array([r.label for r in records])
        parts = stratified_split(
            labels_arr, [1 - val_fraction - test_fraction, val_fraction, test_fraction], seed
        )
        train, val, test = ([records[i] for i in p] for p in parts)
    if some:
        train, val, test = ([r for r in part if any(r.paths[m] is not None for m in mods)]
                            for part in (train, val, test))
        empty = next((n for n, p in (("training", train), ("validation", val),
                                     ("test", test)) if not p), None)
        if empty:
            raise DataError(f"manifest {path.name}: no {empty} sample has any of {mods}; "
                            "choose other modalities")
    _only_in_evaluation(train, {"validation": val, "test": test}, mods, class_names, path.name)
    # the name reports show: the file's ("my" for data/my.csv), not the source's ("manifest")
    info = {"name": path.stem, "source": f"manifest {path!s}",
            "kinds": {m: _name(r) for m, r in readers.items()}}
    return file_splits(train, val, test, readers, class_names, info, standardize=standardize)


def _same_class_two_ways(labels: set[str], rows: list, column: str, name: str) -> None:
    """Refuse labels that name one class in two spellings: '1' and '1.0', 'Cat' and 'cat'."""
    def key(label: str) -> str:
        try:
            return repr(float(label))
        except ValueError:
            return label.casefold()

    seen: dict[str, str] = {}
    for label in sorted(labels):
        other = seen.setdefault(key(label), label)
        if other != label:
            lines = [n for n, row in rows if row[column].strip() in (label, other)][:4]
            raise DataError(f"{name}: labels {other!r} and {label!r} (lines {lines}) look like "
                            "one class written two ways; write it one way, or pass classes: "
                            "[...] if they are different classes")


def _only_in_evaluation(train: list[Record], others: dict[str, list[Record]],
                        mods: list[str], classes: list[str], name: str) -> None:
    """Refuse classes or modalities that evaluation splits have and the training split never
    shows: no model can learn them."""
    seen_classes = {r.label for r in train}
    seen_mods = {m for r in train for m in mods if r.paths.get(m) is not None}
    for split, records in others.items():
        for r in records:
            if r.label not in seen_classes:
                raise DataError(f"{r.where}: class {classes[r.label]!r} is in the {split} split "
                                f"but never in training; add training rows of it ({name})")
            unseen = [m for m in mods if r.paths.get(m) is not None and m not in seen_mods]
            if unseen:
                raise DataError(f"{r.where}: modality {unseen[0]!r} has files in the {split} "
                                f"split but none in training; add training files ({name})")


def _name(reader: Reader) -> str:
    return {AudioReader: "audio", ImageReader: "image", NpyReader: "npy",
            TextReader: "text"}[type(reader)]


def _reader(mod: str, records: list[Record], kind: str | None, image_size: list[int] | None,
            channels: int, audio: dict | None, text: dict | None = None) -> Reader:
    listed = [r for r in records if r.paths[mod] is not None]
    files = [r.paths[mod] for r in listed]
    if not files:
        raise DataError(f"modality {mod!r} has no file in the manifest")
    if kind is None:
        found = {_kind_of(str(f)) for f in files}
        if None in found or len(found) != 1:
            raise DataError(
                f"cannot tell the file kind of modality {mod!r} from its suffixes "
                f"({sorted({Path(f).suffix for f in files})}); declare kinds: {{{mod}: npy|image|"
                "audio|text}"
            )
        kind = found.pop()
    if kind not in KINDS:
        raise DataError(f"file kind {kind!r} of modality {mod!r} is not one of {list(KINDS)}")
    if kind == "audio":
        return AudioReader(AudioSpec.of(audio))
    if kind == "text":
        options = dict(text or {})
        known = ("max_tokens", "max_words", "min_count", "lowercase", "tokenizer")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DataError(f"text option {unknown[0]!r} is not one of {', '.join(known)}")
        return TextReader(**options)
    if kind == "image" and image_size is not None:
        return ImageReader(channels=channels, size=(int(image_size[0]), int(image_size[1])))
    try:  # the first file sets the modality's shape
        if kind == "npy":
            return NpyReader(shape=tuple(read_npy(files[0]).shape))
        first = read_image(files[0], "RGB" if channels == 3 else "L")
    except DataError as err:
        raise DataError(f"{err} ({listed[0].where})") from err
    return ImageReader(channels=channels, expect=(int(first.shape[1]), int(first.shape[2])))
