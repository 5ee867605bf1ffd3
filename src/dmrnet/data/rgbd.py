"""RGB-D segmentation data: NYUv2 (prepared PNG layout or the official labeled .mat) and the
synthetic ``rgbd-shapes`` scenes, with joint augmentation of RGB, depth and labels.

Targets are (H, W) int64 class maps with void pixels set to 255 (ignored by loss and metrics).
NYUv2 label files use 0 = void and 1..K for the classes; they are shifted to 0..K-1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from dmrnet.data.base import DATASETS, DataError, DatasetDefaults, SplitData, require_root
from dmrnet.data.cache import SampleCache
from dmrnet.data.files import select_modalities
from dmrnet.data.io import read_text
from dmrnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

VOID = 255


@dataclass(frozen=True)
class SegAugment:
    """Joint augmentation (docs/recipes.md): random scale, crop to ``crop``, HSV jitter (RGB
    only) and horizontal flip applied alike to RGB, depth and labels. Evaluation leaves samples
    as they are.
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.4)
    hue: float = 0.05
    saturation: float = 0.2
    value: float = 0.2

    def __call__(self, rgb: Tensor, depth: Tensor, label: Tensor) -> tuple[Tensor, ...]:
        s = float(torch.empty(()).uniform_(*self.scale))
        h, w = rgb.shape[-2:]
        size = (max(round(h * s), self.crop[0]), max(round(w * s), self.crop[1]))
        rgb = F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False)[0]
        depth = F.interpolate(depth[None], size=size, mode="nearest")[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        top = int(torch.randint(0, size[0] - self.crop[0] + 1, ()))
        left = int(torch.randint(0, size[1] - self.crop[1] + 1, ()))
        sl = (slice(top, top + self.crop[0]), slice(left, left + self.crop[1]))
        rgb, depth, label = rgb[:, sl[0], sl[1]], depth[:, sl[0], sl[1]], label[sl[0], sl[1]]
        rgb = hsv_jitter(rgb, self.hue, self.saturation, self.value)
        if float(torch.rand(())) < 0.5:
            rgb, depth, label = rgb.flip(-1), depth.flip(-1), label.flip(-1)
        return rgb, depth, label


def hsv_jitter(rgb: Tensor, hue: float, sat: float, val: float) -> Tensor:
    """Random hue shift and saturation / value scaling of an RGB image in [0, 1]."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    mx, mn = rgb.max(0).values, rgb.min(0).values
    delta = mx - mn
    h = torch.zeros_like(mx)
    nz = delta > 1e-8
    rc = torch.where(nz & (mx == r), ((g - b) / delta.clamp_min(1e-8)) % 6, h)
    gc = torch.where(nz & (mx == g) & (mx != r), (b - r) / delta.clamp_min(1e-8) + 2, rc)
    h = torch.where(nz & (mx == b) & (mx != r) & (mx != g), (r - g) / delta.clamp_min(1e-8) + 4,
                    gc) / 6.0
    s = torch.where(mx > 0, delta / mx.clamp_min(1e-8), torch.zeros_like(mx))
    v = mx
    h = (h + float(torch.empty(()).uniform_(-hue, hue))) % 1.0
    s = (s * float(torch.empty(()).uniform_(1 - sat, 1 + sat))).clamp(0, 1)
    v = (v * float(torch.empty(()).uniform_(1 - val, 1 + val))).clamp(0, 1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(rgb)
    for k, (a, bb, c) in enumerate(choices):
        m = i == k
        out[0][m], out[1][m], out[2][m] = a[m], bb[m], c[m]
    return out


@dataclass(frozen=True)
class RGBDNormalize:
    """RGB: ImageNet statistics; depth: the dataset's mean / std (fitted on training data)."""

    depth_mean: float
    depth_std: float

    def __call__(self, rgb: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (rgb - m) / s, (depth - self.depth_mean) / self.depth_std

    def as_dict(self) -> dict[str, Any]:
        return {"rgb": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                "depth": {"mean": self.depth_mean, "std": self.depth_std}}


class RGBDDataset(Dataset):
    """Items ``{"inputs": {"rgb": (3,H,W), "depth": (1,H,W)}, "target": (H,W)}`` from a loader
    ``load(i) -> (rgb uint8 (3,H,W), depth float (1,H,W), label int64 (H,W), name)`` whose
    ``key(i)`` names sample i's source (its files, or its scene) for a
    :class:`~dmrnet.data.cache.SampleCache`: the loaded sample is kept, the augmentation runs
    on it each epoch."""

    def __init__(self, load: Any, n: int, normalize: RGBDNormalize,
                 augment: SegAugment | None, modalities: Sequence[str]) -> None:
        self.load, self.n, self.normalize, self.augment = load, n, normalize, augment
        self.modalities = list(modalities)
        self.cache: SampleCache | None = None

    def use_cache(self, cache: SampleCache | None) -> None:
        """Keep loaded samples in ``cache`` (see :mod:`dmrnet.data.cache`)."""
        self.cache = cache

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.cache is None:
            rgb, depth, label, name = self.load(i)
        else:
            rgb, depth, label, name = self.cache.get(self.load.key(i), lambda: self.load(i))
        if not (rgb.shape[-2:] == depth.shape[-2:] == label.shape[-2:]):
            raise DataError(f"sample {name!r}: rgb {tuple(rgb.shape[-2:])}, depth "
                            f"{tuple(depth.shape[-2:])} and label {tuple(label.shape[-2:])} "
                            "sizes differ")
        rgb = rgb.float() / 255.0
        if self.augment is not None:
            rgb, depth, label = self.augment(rgb, depth, label)
        rgb, depth = self.normalize(rgb, depth)
        inputs = {"rgb": rgb, "depth": depth}
        return {"inputs": {m: inputs[m] for m in self.modalities}, "target": label}


def _labels_from_file(arr: np.ndarray, num_classes: int, where: str) -> Tensor:
    """0 = void -> 255; 1..K -> 0..K-1; anything above K is an error naming the file."""
    if arr.ndim != 2:
        raise DataError(f"label map {where} must be 2-D; got shape {arr.shape}")
    if arr.size and int(arr.max()) > num_classes:
        raise DataError(f"label map {where} has class {int(arr.max())}, above the "
                        f"{num_classes}-class setting (0 = void, 1..{num_classes})")
    lab = torch.from_numpy(arr.astype(np.int64))
    return torch.where(lab == 0, torch.full_like(lab, VOID), lab - 1)


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            return np.array(img)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {str(path)!r}: {err}") from err


class _PreparedLoader:
    """Reads ``<root>/<split>/{rgb,depth,labels_K}/<name>.png`` (depth: 16-bit PNG in mm)."""

    def __init__(self, root: Path, split: str, names: list[str], num_classes: int) -> None:
        self.root, self.split, self.names, self.k = root, split, names, num_classes

    def key(self, i: int) -> tuple[Any, ...]:
        return ("nyuv2", str(self.root), self.split, self.names[i], self.k)

    def __call__(self, i: int) -> tuple[Tensor, Tensor, Tensor, str]:
        name = self.names[i]
        base = self.root / self.split
        rgb = _read_png(base / "rgb" / f"{name}.png")
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise DataError(f"rgb image {str(base / 'rgb' / name)!r}.png is not RGB")
        depth = _read_png(base / "depth" / f"{name}.png").astype(np.float32)
        lab_path = base / f"labels_{self.k}" / f"{name}.png"
        label = _labels_from_file(_read_png(lab_path), self.k, repr(str(lab_path)))
        return (torch.from_numpy(rgb[:, :, :3].copy()).permute(2, 0, 1),
                torch.from_numpy(depth)[None], label, f"{self.split}/{name}")


class _MatLoader:
    """Reads the official ``nyu_depth_v2_labeled.mat`` (HDF5) with a class mapping."""

    def __init__(self, path: Path, indices: list[int], mapping: np.ndarray, k: int) -> None:
        self.path, self.indices, self.mapping, self.k = path, indices, mapping, k
        self._mapping_key = hash(mapping.tobytes())
        self._file: Any = None

    def _h5(self) -> Any:
        if self._file is None:  # opened lazily, once per worker process
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def key(self, i: int) -> tuple[Any, ...]:
        return ("nyuv2.mat", str(self.path), self.indices[i], self.k, self._mapping_key)

    def __call__(self, i: int) -> tuple[Tensor, Tensor, Tensor, str]:
        f, n = self._h5(), self.indices[i]
        rgb = np.asarray(f["images"][n]).transpose(0, 2, 1)  # MATLAB order (3, W, H)
        depth = np.asarray(f["depths"][n]).T.astype(np.float32) * 1000.0  # metres -> mm
        raw = np.asarray(f["labels"][n]).T.astype(np.int64)
        if raw.max() >= len(self.mapping):
            raise DataError(f"{self.path.name} image {n + 1} has label {raw.max()}, beyond the "
                            f"class mapping's {len(self.mapping) - 1} entries")
        label = _labels_from_file(self.mapping[raw], self.k, f"{self.path.name} image {n + 1}")
        return torch.from_numpy(rgb.copy()), torch.from_numpy(depth)[None], label, f"#{n + 1}"


def _depth_stats(load: Any, n: int, limit: int = 200) -> tuple[float, float]:
    vals = [load(i)[1].flatten() for i in range(min(n, limit))]
    x = torch.cat(vals).double()
    x = x[x > 0] if bool((x > 0).any()) else x
    return float(x.mean()), max(float(x.std()), 1e-6)


def median_frequency_weights(load: Any, n: int, k: int, limit: int = 200) -> list[float]:
    """w_c = median(freq) / freq_c, freq_c = pixels of c / pixels of images containing c."""
    count, present = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for i in range(min(n, limit)):
        lab = load(i)[2]
        lab = lab[lab != VOID]
        c = torch.bincount(lab, minlength=k).double()
        count += c
        present += (c > 0).double() * lab.numel()
    freq = torch.where(present > 0, count / present.clamp_min(1), torch.zeros_like(count))
    med = freq[freq > 0].median() if bool((freq > 0).any()) else torch.tensor(1.0)
    return torch.where(freq > 0, med / freq.clamp_min(1e-12), torch.zeros_like(freq)).tolist()


def _splitdata(train_load: Any, n_train: int, val_load: Any, n_val: int, test_load: Any,
               n_test: int, mods: list[str], classes: list[str], crop: tuple[int, int],
               shape: tuple[int, int], class_weighting: str | None, info: dict[str, Any],
               depth_stats: tuple[float, float] | None = None) -> SplitData:
    mean, std = depth_stats or _depth_stats(train_load, n_train)
    norm = RGBDNormalize(mean, std)
    info = {**info, "preprocessing": norm.as_dict(),
            "sizes": {"train": n_train, "val": n_val, "test": n_test}}
    if class_weighting == "median_frequency":
        info["class_weights"] = median_frequency_weights(train_load, n_train, len(classes))
    elif class_weighting is not None:
        raise DataError(f"class_weighting must be 'median_frequency' or None; got "
                        f"{class_weighting!r}")
    channels = {"rgb": 3, "depth": 1}
    return SplitData(
        train=RGBDDataset(train_load, n_train, norm, SegAugment(crop), mods),
        val=RGBDDataset(val_load, n_val, norm, None, mods),
        test=RGBDDataset(test_load, n_test, norm, None, mods),
        modalities=mods,
        input_shapes={m: (channels[m], *shape) for m in mods},
        class_names=classes,
        info=info,
    )


def _mods(modalities: Sequence[str] | None) -> list[str]:
    return select_modalities(["rgb", "depth"], modalities, "this RGB-D dataset")


@DATASETS.register("nyuv2")
def nyuv2(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    num_classes: int = 40,
    mat: str | None = None,
    class_mapping: str | None = None,
    split_file: str | None = None,
    size: list[int] | None = None,
    class_weighting: str | None = None,
    val_fraction: float = 0.1,
    class_names: list[str] | None = None,
) -> SplitData:
    """NYUv2 from the prepared layout or the labeled .mat.

    Prepared layout: ``<root>/{train,test}/{rgb,depth,labels_<K>}/<name>.png`` with
    ``<root>/train.txt`` and ``test.txt`` listing the names. The .mat: ``mat`` (path, HDF5),
    ``class_mapping`` (a text file, line i = the target class 0..K of raw label i, line 0 for
    raw 0 = void) and ``split_file`` (JSON ``{"train": [...], "test": [...]}``, 1-based image
    numbers as in the official split). A validation split is held out from train
    (``val_fraction``, from ``seed``); checkpoints are never chosen on the test split.
    ``size`` = (H, W) of samples (all images must have it; default 480 x 640).
    """
    if num_classes not in (13, 40) and class_names is None:
        raise DataError(f"NYUv2 comes in 13- and 40-class settings; got {num_classes}")
    mods = _mods(modalities)
    shape = tuple(size or (480, 640))
    classes = list(class_names) if class_names else [f"class{c + 1}" for c in range(num_classes)]
    rng = np.random.default_rng(seed)
    if mat is None:
        base = require_root(root, "NYUv2")
        names = {}
        for split in ("train", "test"):
            lst = base / f"{split}.txt"
            if not lst.is_file():
                raise DataError(f"NYUv2 name list {str(lst)!r} does not exist")
            names[split] = [x.strip() for x in read_text(lst, "NYUv2 name list").splitlines()
                            if x.strip()]
            if not names[split]:
                raise DataError(f"NYUv2 name list {str(lst)!r} is empty")
            for n in names[split]:
                for sub in ("rgb", "depth", f"labels_{num_classes}"):
                    if not (base / split / sub / f"{n}.png").is_file():
                        raise DataError(f"NYUv2 file {str(base / split / sub / n)!r}.png listed "
                                        f"in {lst.name} does not exist")
        if len(names["train"]) < 2:
            raise DataError("NYUv2 needs at least 2 training images (one is held out for "
                            "validation)")
        order = list(rng.permutation(len(names["train"])))
        n_val = max(1, round(val_fraction * len(order)))
        val_names = [names["train"][i] for i in sorted(order[:n_val])]
        train_names = [names["train"][i] for i in sorted(order[n_val:])]
        loaders = [_PreparedLoader(base, "train", train_names, num_classes),
                   _PreparedLoader(base, "train", val_names, num_classes),
                   _PreparedLoader(base, "test", names["test"], num_classes)]
        info = {"source": "NYUv2 (prepared layout)", "root": str(base)}
    else:
        path = Path(mat) if Path(mat).is_absolute() or root is None else Path(root) / mat
        if not path.is_file():
            raise DataError(f"NYUv2 .mat file {str(path)!r} does not exist")
        if class_mapping is None or split_file is None:
            raise DataError("the NYUv2 .mat needs class_mapping (text, one class per raw label) "
                            "and split_file (JSON with 1-based 'train' and 'test' lists)")
        cm = Path(class_mapping) if Path(class_mapping).is_absolute() or root is None \
            else Path(root) / class_mapping
        sf = Path(split_file) if Path(split_file).is_absolute() or root is None \
            else Path(root) / split_file
        for p in (cm, sf):
            if not p.is_file():
                raise DataError(f"file {str(p)!r} does not exist")
        try:
            mapping = np.array([int(x) for x in cm.read_text().split()], dtype=np.int64)
        except ValueError as err:
            raise DataError(f"class mapping {str(cm)!r} must hold integers: {err}") from err
        if mapping.size == 0 or mapping.min() < 0 or mapping.max() > num_classes:
            raise DataError(f"class mapping {str(cm)!r} must map to 0..{num_classes}")
        try:
            split = json.loads(sf.read_text())
            tr, te = [int(i) - 1 for i in split["train"]], [int(i) - 1 for i in split["test"]]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"split file {str(sf)!r} must be JSON with 'train' and 'test' lists "
                            f"of 1-based image numbers: {err}") from err
        try:
            import h5py

            with h5py.File(path, "r") as f:
                total = int(f["images"].shape[0])
        except (OSError, KeyError) as err:
            raise DataError(f"cannot read {str(path)!r} as the NYUv2 labeled .mat (HDF5 with "
                            f"images, depths, labels): {err}") from err
        bad = [i + 1 for i in tr + te if not 0 <= i < total]
        if bad:
            raise DataError(f"split file {str(sf)!r} names image {bad[0]}, but the .mat holds "
                            f"{total}")
        if len(tr) < 2:
            raise DataError("NYUv2 needs at least 2 training images (one is held out for "
                            "validation)")
        order = list(rng.permutation(len(tr)))
        n_val = max(1, round(val_fraction * len(tr)))
        val_idx = [tr[i] for i in sorted(order[:n_val])]
        tr_idx = [tr[i] for i in sorted(order[n_val:])]
        loaders = [_MatLoader(path, tr_idx, mapping, num_classes),
                   _MatLoader(path, val_idx, mapping, num_classes),
                   _MatLoader(path, te, mapping, num_classes)]
        info = {"source": "NYUv2 (labeled .mat)", "mat": str(path)}
    counts = [len(ld.names) if hasattr(ld, "names") else len(ld.indices) for ld in loaders]
    first = loaders[0](0)
    if tuple(first[0].shape[-2:]) != shape:
        raise DataError(f"NYUv2 sample {first[3]!r} is {tuple(first[0].shape[-2:])}, expected "
                        f"{shape} (set size)")
    return _splitdata(loaders[0], counts[0], loaders[1], counts[1], loaders[2], counts[2], mods,
                      classes, shape, shape, class_weighting, {**info, "classes": num_classes})


# --- synthetic RGB-D scenes ----------------------------------------------------------------

SHAPES_CLASSES = ["background", "red_box", "green_box", "dome", "flat_disk", "wedge"]
"""red_box / green_box differ only in colour (same flat depth, same outline); dome / flat_disk
differ only in depth shape (same colour, same outline); wedge differs in both."""


def render_scene(seed: int, size: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """One scene: (rgb uint8 (3,S,S), depth mm float (1,S,S), labels (S,S))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = 3000.0 + 600.0 * (yy / size) + rng.normal(0, 8, (size, size))  # tilted wall
    rgb = np.empty((size, size, 3), np.float32)
    base = rng.uniform(90, 150, 3)
    rgb[:] = base + 25 * np.sin(xx[..., None] / rng.uniform(4, 9) + rng.uniform(0, 6))
    label = np.zeros((size, size), np.int64)
    colours = {1: (200, 40, 40), 2: (40, 190, 60), 3: (60, 80, 210), 4: (60, 80, 210),
               5: (220, 200, 40)}
    for _ in range(int(rng.integers(3, 6))):
        cls = int(rng.integers(1, 6))
        r = float(rng.uniform(size * 0.09, size * 0.2))
        cy, cx = rng.uniform(r, size - r, 2)
        near = float(rng.uniform(1200, 2200))
        if cls in (1, 2):
            mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
            shape_depth = np.full_like(yy, near)
        elif cls in (3, 4):
            d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
            mask = d2 < 1
            bump = 500.0 * np.sqrt(np.clip(1 - d2, 0, 1)) if cls == 3 else 0.0
            shape_depth = near - bump
        else:
            mask = (yy > cy - r) & (np.abs(xx - cx) < (yy - (cy - r)) / 2)
            mask &= yy < cy + r
            shape_depth = near + 400.0 * (xx - cx) / r
        depth = np.where(mask, shape_depth, depth)
        colour = np.array(colours[cls], np.float32) + rng.normal(0, 12, 3)
        rgb = np.where(mask[..., None], colour + rng.normal(0, 10, (size, size, 3)), rgb)
        label = np.where(mask, cls, label)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    return (torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
            torch.from_numpy(depth.astype(np.float32))[None], torch.from_numpy(label))


class _ShapesLoader:
    def __init__(self, seeds: list[int], size: int) -> None:
        self.seeds, self.size = seeds, size

    def key(self, i: int) -> tuple[Any, ...]:
        return ("rgbd-shapes", self.seeds[i], self.size)

    def __call__(self, i: int) -> tuple[Tensor, Tensor, Tensor, str]:
        rgb, depth, label = render_scene(self.seeds[i], self.size)
        return rgb, depth, label, f"scene {self.seeds[i]}"


@DATASETS.register("rgbd-shapes", DatasetDefaults(
    epochs=10, batch_size=32,
    model={"architecture": "dense", "metric": "miou", "embed_dim": 64,
           "encoder_kwargs": {"width": 16}, "dense_kwargs": {"decoder_channels": [64, 32, 16]},
           "optim": {"lr": 0.005, "weight_decay": 0.0001}},
    options={"hcr_warmup_epochs": 3}))  # 10 epochs: DMRNet's HCR chooses after 3, not 6
def rgbd_shapes(
    root: str | Path | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    train: int = 500,
    val: int = 100,
    test: int = 150,
    size: int = 64,
) -> SplitData:
    """Synthetic RGB-D scenes generated from ``seed`` (no files): shapes at different depths on
    a tilted wall, six classes of which two are told apart only by colour, two only by depth
    shape, and one by either (see ``SHAPES_CLASSES``)."""
    if root is not None:
        raise DataError("rgbd-shapes is generated, it reads no folder; drop --root")
    if min(train, val, test) < 1 or size < 32:
        raise DataError("rgbd-shapes needs at least one scene per split and size >= 32")
    mods = _mods(modalities)
    offset = 1_000_003 * (seed + 1)
    seeds = [offset + i for i in range(train + val + test)]
    loads = [_ShapesLoader(seeds[:train], size), _ShapesLoader(seeds[train:train + val], size),
             _ShapesLoader(seeds[train + val:], size)]
    info = {"source": "synthetic rgbd-shapes", "seed": seed, "size": size,
            "classes": SHAPES_CLASSES,
            "design": "red_box/green_box: colour only; dome/flat_disk: depth only; wedge: both"}
    return _splitdata(loads[0], train, loads[1], val, loads[2], test, mods, SHAPES_CLASSES,
                      (size, size), (size, size), None, info,
                      depth_stats=(2600.0, 700.0))


__all__ = ["SHAPES_CLASSES", "SegAugment", "median_frequency_weights", "nyuv2", "render_scene",
           "rgbd_shapes"]
