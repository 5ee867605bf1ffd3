"""Pre-extracted features: one array file per modality holding every sample, as feature
releases ship them.

A small YAML (``features.yaml`` in ``root``, or the file named by ``spec``) names the files::

    modalities:
      audio: audio.npy                      # (N, ...) one row per sample
      visual: {file: feats.npz, key: visual}
      text: text.pt                         # a tensor, or {file: x.pt, key: name} in a dict
      words: {file: words.npy, lengths: words_len.npy}   # (N, T, D) padded + (N,) steps
    labels: labels.npy                      # (N,) class ids or names
    split: split.npy                        # optional (N,): train / val / test (or 0 / 1 / 2)
    available:                              # optional (N,) bool per modality
      visual: visual_present.npy
    class_names: [neg, pos]                 # optional, for class ids 0..K-1

Paths are relative to the YAML's folder. A sample misses a modality where ``available`` says so
or where its row is entirely NaN (a row with some NaN is an error).

A modality with ``lengths`` is a variable-length sequence: its array is (N, T, D) padded to the
longest T, and ``lengths`` (a file entry like the others) gives each sample's real steps; what
the padding holds is never read. A length of 0 (or real steps all NaN) means the sample lacks
the modality. Models read such a modality with a sequence encoder (``auto`` picks a GRU) and
never see the padding; its statistics are per feature D, fitted on the real steps.

Without ``split``, a stratified 60/20/20 split is drawn from the seed; a split without
validation rows has 20 % of its training rows carved out. Arrays are standardised per element
on the training rows that have them; the statistics are stored with a trained model, which
then takes raw rows.

Files: ``.npy``, ``.npz`` (``key`` names the array), ``.pt`` (read with
``weights_only=True``: a tensor, or a dict of tensors and ``key``), ``.h5`` / ``.hdf5``
(``key`` names the dataset, e.g. ``audio/features``; needs ``pip install h5py``). Pickled
objects are refused.
Every other modality has one fixed shape per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dmrnet.data.base import (
    DATASETS,
    ArrayDataset,
    DataError,
    DatasetDefaults,
    SplitData,
    Standardizer,
    stratified_split,
)
from dmrnet.data.files import select_modalities
from dmrnet.data.io import array_problem, load_npy, read_text

SPEC_NAME = "features.yaml"
SUFFIXES = (".npy", ".npz", ".pt", ".h5", ".hdf5")
SPLIT_CODES = {"train": 0, "val": 1, "validation": 1, "test": 2, "0": 0, "1": 1, "2": 2}
SPEC_KEYS = ("modalities", "labels", "split", "available", "class_names")


def _spec_path(root: str | Path | None, spec: str | Path | None) -> Path:
    if spec is not None:
        path = Path(spec).expanduser()
        if not path.is_absolute() and root is not None:
            path = Path(root).expanduser() / path
    elif root is not None:
        path = Path(root).expanduser()
        path = path / SPEC_NAME if path.is_dir() else path
    else:
        raise DataError(f"features needs its {SPEC_NAME}: --root DIR (the folder holding it) "
                        "or dataset_kwargs spec: FILE")
    if not path.is_file():
        raise DataError(f"features spec {str(path)!r} does not exist; write a {SPEC_NAME} "
                        "naming each modality's array file and the labels")
    return path


def _entry(value: Any, what: str, keys: tuple[str, ...] = ("file", "key")
           ) -> tuple[str, str | None]:
    """A file entry (``x.npy`` or ``{file: x.npz, key: k}``) -> (file, key); ``keys``: what
    the entry may hold (a modality's may also name its ``lengths``)."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping) and isinstance(value.get("file"), str):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise DataError(f"{what}: unknown key {unknown[0]!r} (this entry takes "
                            f"{', '.join(keys)})")
        key = value.get("key")
        if key is not None and not isinstance(key, str):
            raise DataError(f"{what}: key must be a name; got {key!r}")
        return value["file"], key
    raise DataError(f"{what} must be a file name or {{file: NAME, key: KEY}}; got {value!r}")


MODALITY_KEYS = ("file", "key", "lengths")


def read_array(folder: Path, value: Any, what: str, keys: tuple[str, ...] = ("file", "key")
               ) -> np.ndarray:
    """The array a spec entry names (no pickled object is ever loaded)."""
    name, key = _entry(value, what, keys)
    path = folder / name
    if not path.is_file():
        raise DataError(f"{what}: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = load_npy(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                pick = key or (keys[0] if len(keys) == 1 else None)
                if pick not in keys:
                    raise DataError(f"{what}: {str(path)!r} holds {keys}; name one with "
                                    "{file: ..., key: ...}")
                arr = np.asarray(archive[pick])
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, Mapping):
                keys = [str(k) for k in obj]
                pick = key or (keys[0] if len(keys) == 1 else None)
                if pick not in obj:
                    raise DataError(f"{what}: {str(path)!r} holds {keys}; name one with "
                                    "{file: ..., key: ...}")
                obj = obj[pick]
            if not isinstance(obj, torch.Tensor):
                raise DataError(f"{what}: {str(path)!r} holds a {type(obj).__name__}, not a "
                                "tensor")
            arr = obj.detach().cpu().numpy()
        elif suffix in (".h5", ".hdf5"):
            arr = _read_hdf5(path, key, what)
        else:
            raise DataError(f"{what}: {str(path)!r} is not one of the array files "
                            f"{', '.join(SUFFIXES)}")
    except DataError:
        raise
    except Exception as err:  # numpy and torch raise several types for bad or unsafe files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{what}: cannot read {str(path)!r}: {first}") from err
    return arr


def _read_hdf5(path: Path, key: str | None, what: str) -> np.ndarray:
    """One dataset of an HDF5 file (``key``: its path inside; the only one if there is one)."""
    try:
        import h5py
    except ImportError as err:
        raise DataError(f"{what}: reading {str(path)!r} needs h5py: pip install h5py (or save "
                        "the array as .npy)") from err
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name)
                     if isinstance(obj, h5py.Dataset) else None)
        pick = key or (names[0] if len(names) == 1 else None)
        if pick not in names:
            raise DataError(f"{what}: {str(path)!r} holds the datasets {names}; name one with "
                            "{file: ..., key: ...}")
        data = f[pick]
        if data.dtype.kind not in "biufSU":
            raise DataError(f"{what}: dataset {pick!r} of {str(path)!r} holds {data.dtype}, "
                            "not numbers or names")
        arr = np.asarray(data[()])
    if arr.dtype.kind == "S":  # names stored as bytes
        arr = arr.astype(str)
    return arr


def _labels(raw: np.ndarray, names: Any, n: int) -> tuple[np.ndarray, list[str]]:
    if raw.ndim != 1 or len(raw) != n:
        raise DataError(f"labels must be one value per sample, shape ({n},); got "
                        f"{tuple(raw.shape)}")
    if raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0)):
        ids = raw.astype(np.int64)
        if ids.min() < 0:
            raise DataError(f"class ids must be >= 0; got {int(ids.min())}")
        k = int(ids.max()) + 1
        if names is None:
            names = [str(c) for c in range(k)]
        if (not isinstance(names, list) or len(set(map(str, names))) != len(names)
                or len(names) < k):
            raise DataError(f"class_names must list at least {k} distinct names (ids go to "
                            f"{k - 1}); got {names!r}")
        return ids, [str(c) for c in names]
    if raw.dtype.kind in "US":
        values = sorted({str(v) for v in raw})
        if names is not None:
            missing = sorted(set(values) - set(map(str, names)))
            if not isinstance(names, list) or missing:
                raise DataError(f"labels {missing[:3]} are not in class_names {names!r}")
            values = [str(c) for c in names]
        index = {c: i for i, c in enumerate(values)}
        return np.array([index[str(v)] for v in raw], dtype=np.int64), values
    raise DataError(f"labels must be class ids or names; got dtype {raw.dtype}")


def _sequence_lengths(raw: np.ndarray, arr: np.ndarray, modality: str) -> np.ndarray:
    """(N,) real steps of a padded (N, T, D) sequence array, each 0..T (0: absent)."""
    n = arr.shape[0]
    if arr.ndim < 3:
        raise DataError(f"modality {modality!r} has lengths, so it must be a padded sequence "
                        f"array (N, T, D); got {tuple(arr.shape)}")
    whole = raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.isfinite(raw).all()
                                       and np.all(np.mod(raw, 1) == 0))
    if raw.shape != (n,) or not whole or (n and (raw.min() < 0 or raw.max() > arr.shape[1])):
        raise DataError(f"lengths of {modality!r} must be ({n},) whole numbers 0..{arr.shape[1]} "
                        f"(T of its array; 0 = the sample lacks it); got shape "
                        f"{tuple(raw.shape)}, dtype {raw.dtype}")
    return raw.astype(np.int64)


def _split_codes(raw: np.ndarray, n: int) -> np.ndarray:
    if raw.ndim != 1 or len(raw) != n:
        raise DataError(f"split must be one value per sample, shape ({n},); got "
                        f"{tuple(raw.shape)}")
    words = [str(v.decode() if isinstance(v, bytes) else v).strip().lower() for v in raw]
    bad = next((w for w in words if w not in SPLIT_CODES), None)
    if bad is not None:
        raise DataError(f"split value {bad!r} is not train, val, test (or 0, 1, 2)")
    return np.array([SPLIT_CODES[w] for w in words], dtype=np.int64)


@DATASETS.register("features", DatasetDefaults(model={"encoder": "auto"}))
def features(
    root: str | Path | None = None,
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    spec: str | Path | None = None,
    standardize: bool = True,
) -> SplitData:
    """Pre-extracted feature arrays named by a YAML spec (see the module's docstring)."""
    path = _spec_path(root, spec)
    try:
        config = yaml.safe_load(read_text(path, "features spec"))
    except yaml.YAMLError as err:
        raise DataError(f"{str(path)!r} is not YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(config, dict) or not isinstance(config.get("modalities"), dict) \
            or not config["modalities"] or "labels" not in config:
        raise DataError(f"{str(path)!r} must map modalities (name: file) and labels (file)")
    unknown = sorted(set(config) - set(SPEC_KEYS))
    if unknown:
        raise DataError(f"{str(path)!r}: unknown key {unknown[0]!r}; a features spec takes "
                        f"{list(SPEC_KEYS)}")
    folder = path.parent
    mods = select_modalities([str(m) for m in config["modalities"]], modalities, "features")
    raw_labels = read_array(folder, config["labels"], "labels")
    n = int(raw_labels.shape[0]) if raw_labels.ndim else 0
    labels, class_names = _labels(raw_labels, config.get("class_names"), n)
    if len(class_names) < 2:
        raise DataError(f"{str(path)!r}: the labels hold one class; a classifier needs two")
    given = config.get("available") or {}
    if not isinstance(given, dict) or any(m not in config["modalities"] for m in given):
        raise DataError(f"available must map some of the modalities {list(config['modalities'])} "
                        f"to (N,) bool files; got {given!r}")
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    present = np.ones((n, len(mods)), dtype=bool)
    for j, m in enumerate(mods):
        what = f"modality {m!r}"
        entry = config["modalities"][m]
        arr = read_array(folder, entry, what, MODALITY_KEYS)
        problem = array_problem(arr, _entry(entry, what, MODALITY_KEYS)[0])
        if problem:
            raise DataError(f"{what}: {problem}")
        if arr.ndim < 2 or arr.shape[0] != n:
            raise DataError(f"{what} must hold one row per sample, shape ({n}, ...); got "
                            f"{tuple(arr.shape)}")
        arr = arr.astype(np.float32)
        if isinstance(entry, Mapping) and entry.get("lengths") is not None:
            steps = _sequence_lengths(read_array(folder, entry["lengths"], f"lengths of {m!r}"),
                                      arr, m)
            real = np.arange(arr.shape[1])[None, :] < steps[:, None]  # (N, T)
            lengths[m] = steps
            finite = np.isfinite(arr.reshape(n, arr.shape[1], -1)).all(axis=2)
            nan = ~finite & real  # NaN in the real steps; the padding may hold anything
            empty = ~(finite & real).any(axis=1)
        else:
            real = np.ones((n, 1), dtype=bool)
            nan = ~np.isfinite(arr.reshape(n, -1))
            empty = nan.all(axis=1)
        partly = np.flatnonzero(nan.any(axis=1) & ~empty)
        if len(partly):
            where = "the real steps of sample" if m in lengths else "row"
            raise DataError(f"{what}: {where} {int(partly[0])} holds some NaN or inf values; "
                            "fill them, or make the whole row NaN (or mark it in available:) "
                            "to say the sample has no such modality")
        present[:, j] = ~empty
        if m in given:
            mask = read_array(folder, given[m], f"available[{m!r}]")
            if mask.shape != (n,) or not np.isin(mask, (0, 1)).all():
                raise DataError(f"available[{m!r}] must be (N,) = ({n},) of true/false; got "
                                f"shape {tuple(mask.shape)}")
            present[:, j] &= mask.astype(bool)
        arr[~present[:, j]] = 0.0
        if m in lengths:
            arr[~real] = 0.0  # the padding, whatever the file held
            lengths[m][~present[:, j]] = 0
        arrays[m] = arr
    none = np.flatnonzero(~present.any(axis=1))
    if len(none) and set(mods) == set(config["modalities"]):
        raise DataError(f"sample {int(none[0])} has none of the modalities {mods}; drop it "
                        "(every sample needs at least one)")
    full = ArrayDataset(arrays, labels, present, lengths)
    if config.get("split") is not None:
        codes = _split_codes(read_array(folder, config["split"], "split"), n)
        tr, va, te = (np.flatnonzero(codes == k) for k in range(3))
        if len(va) == 0:  # a release with train and test only: validation from train
            keep, carve = stratified_split(labels[tr], [0.8, 0.2], seed)
            tr, va = tr[keep], tr[carve]
    else:
        tr, va, te = stratified_split(labels, [0.6, 0.2, 0.2], seed)
    # a model of some modalities (a dedicated one, a teacher) leaves out the samples that
    # have none of them, after the split: the others keep the split of every modality's model
    has_any = present.any(axis=1)
    tr, va, te = (part[has_any[part]] for part in (tr, va, te))
    for name, part in (("training", tr), ("validation", va), ("test", te)):
        if len(part) == 0:
            raise DataError(f"the {name} split holds no sample; every split needs at least one")
    train, val, test = full.subset(tr), full.subset(va), full.subset(te)
    info: dict[str, Any] = {"source": f"feature files ({path.name})", "seed": seed,
                            "sizes": {"train": len(tr), "val": len(va), "test": len(te)},
                            "left_out": len(none),  # samples with none of ``mods``
                            "availability": {m: float(present[:, j].mean())
                                             for j, m in enumerate(mods)}}
    if standardize:
        stats = Standardizer.fit(train)
        train, val, test = stats.apply(train), stats.apply(val), stats.apply(test)
        # absent rows stay zeros, as the collate gives them
        for part in (train, val, test):
            for j, m in enumerate(mods):
                part.features[m][~part.availability[:, j]] = 0.0
        info["standardizer"] = {"mean": stats.mean, "std": stats.std}
    return SplitData(train=train, val=val, test=test, modalities=mods,
                     input_shapes=full.input_shapes, class_names=class_names, info=info,
                     sequences=full.sequences)
