"""File-backed datasets: one record per sample (a path per modality, or None when missing),
and a reader per modality that turns a path into a tensor of a fixed shape.

Readers are small picklable objects, so loaders work with ``num_workers > 0``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dmrnet.batch import VOCABULARY_SIZE
from dmrnet.data.base import DataError, SplitData, Standardizer, stratified_split
from dmrnet.data.cache import SampleCache
from dmrnet.data.io import (
    BytesFile,
    check_image,
    check_npy,
    check_wav,
    load_npy,
    read_image,
    read_npy,
    read_resized,
    read_wav,
)
from dmrnet.data.text import PretrainedTokenizer, Vocabulary, fit_vocabulary, read_words
from dmrnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AudioSpec,
    audio_window,
    casia_face,
    crop_box,
    imagenet_frame,
    imagenet_normalize,
    random_hflip,
    resample_batch,
    resize,
    spectrogram_batch,
    to_float,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

READERS_KEY = "readers"
"""Where a model's ``preprocessing`` holds each file modality's reader (:meth:`Reader.to_dict`)."""

READER_KINDS: dict[str, type[Reader]] = {}
"""Each :class:`Reader` subclass with a ``kind``, by it (filled as the classes are defined)."""


def _plain(value: Any) -> Any:
    """``value`` as JSON: dataclasses as mappings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def reader_from_dict(recipe: Mapping[str, Any], where: str = "preprocessing") -> Reader:
    """The reader a model stored (:meth:`Reader.to_dict`); a :class:`DataError` naming the
    problem for one that no loaded reader kind can read."""
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("reader"), str):
        raise DataError(f"{where}: a file reader's recipe is a mapping with a 'reader' kind, "
                        f"got {recipe!r}")
    kind = recipe["reader"]
    if kind not in READER_KINDS:
        raise DataError(f"{where}: files were read by a {kind!r} reader, which no loaded code "
                        f"defines (known: {sorted(READER_KINDS)}); load the plugin that "
                        "defines it (--plugin)")
    try:
        return READER_KINDS[kind].from_settings({k: v for k, v in recipe.items()
                                                 if k != "reader"})
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: the {kind!r} reader's settings {dict(recipe)!r} do not fit "
                        f"this dmrnet ({err})") from err


@dataclass
class Record:
    """One sample: modality -> path (None = missing), its class index, and where it was listed."""

    paths: dict[str, Path | None]
    label: int
    where: str = ""


class Reader:
    """Path -> tensor of ``shape``; ``train`` switches on random augmentation.

    Reading is two steps: :meth:`decode` (path -> decoded sample, deterministic, so a
    :class:`~dmrnet.data.cache.SampleCache` may keep it) and :meth:`make` (decoded sample ->
    tensor, with the random augmentation in training). ``make`` must not change the decoded
    sample in place.

    A reader may leave the last, batchable step of its recipe to the training device:
    then ``__call__`` returns ``item_shape`` / ``item_dtype`` (e.g. a waveform, a uint8 frame)
    and ``finish`` turns a collated batch (B, *item_shape) into (B, *shape) on whatever device
    it is on (``finishes_on_device``). Otherwise ``__call__`` returns ``shape`` in float32.
    """

    shape: tuple[int, ...]
    finishes_on_device: bool = False
    variable_length: bool = False  # items of 1..T steps of ``shape`` (T, ...), padded per batch
    kind: ClassVar[str] = ""
    """The name a model stores this reader under (:meth:`to_dict`; "" = not stored); a
    subclass with a kind is found by :func:`reader_from_dict`, a plugin's too."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            READER_KINDS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any] | None:
        """What a model stores so that it reads a new file as evaluation read this
        modality's: ``{"reader": kind, **settings}`` (JSON), or None. Statistics fitted on
        the training split are not in it: they are stored beside it (``standardize``)."""
        if not self.kind or not dataclasses.is_dataclass(self):
            return None
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.compare}  # fitted state (statistics, a vocabulary) is compare=False
        return {"reader": self.kind, **_plain(settings)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Reader:
        """The reader of a stored :meth:`to_dict` (without its ``reader`` key)."""
        return cls(**settings)

    def pixel_units(self) -> tuple[Any, Any] | None:
        """For an image reader, its items' units as (mean, std) of pixels p in [0, 1]
        (an item is (p - mean) / std; each a number or one per channel), so a pretrained
        image model can map them to its own; None for other readers."""
        return None

    def read_one(self, path: Path) -> Tensor:
        """One file read as evaluation reads it, every step done: the model's input of
        ``shape`` (before the statistics stored beside it). A bad file is a
        :class:`DataError` naming it."""
        problem = special_file(Path(path), "give a regular file") or self.check(path)
        if problem is not None:
            raise DataError(problem)
        x = self(path, train=False)
        return self.finish(x[None])[0] if self.finishes_on_device else x

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.shape)

    @property
    def item_dtype(self) -> torch.dtype:
        return torch.float32

    def finish(self, batch: Tensor) -> Tensor:
        return batch

    def check(self, path: Path) -> str | None:
        """A quick look at a file (its header, not its content where it can): what is wrong
        with it, or None. Run on every file before training (:func:`scan_records`)."""
        return None

    def decode(self, path: Path) -> Any:  # pragma: no cover - interface
        """The file's content, decoded: what is the same every epoch."""
        raise NotImplementedError

    def make(self, decoded: Any, train: bool) -> Tensor:
        """The item from a decoded sample (``train``: with random augmentation)."""
        return decoded

    def __call__(self, path: Path, train: bool) -> Tensor:
        return self.make(self.decode(path), train)


@dataclass
class AudioReader(Reader):
    """WAV file -> log-spectrogram (1, F, T), or the waveform (N,) with ``spec.waveform``
    (see :class:`AudioSpec`).

    With ``on_device`` (default) the loader yields the recipe's waveform window (at the
    spec's ``source_rate`` when it has one) and the resampling and the spectrogram are computed
    for the whole batch on the training device (batched FFTs instead of per-sample ones in
    the loader's workers).
    """

    spec: AudioSpec = field(default_factory=AudioSpec)
    on_device: bool = True
    kind: ClassVar[str] = "audio"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Reader:
        spec = settings.get("spec") or {}
        return cls(**{**settings, "spec": AudioSpec.of(spec)})

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.spec.shape

    @property
    def finishes_on_device(self) -> bool:  # type: ignore[override]
        return self.on_device

    @property
    def _item_rate(self) -> int:
        """The rate of the loader's windows (the device resamples them if it differs)."""
        return (self.spec.source_rate or self.spec.sample_rate) if self.on_device \
            else self.spec.sample_rate

    @property
    def item_shape(self) -> tuple[int, ...]:
        if not self.on_device:
            return self.spec.shape
        return (round(self._item_rate * self.spec.seconds),)

    def finish(self, batch: Tensor) -> Tensor:
        if not self.on_device:
            return batch
        waves = resample_batch(batch, self._item_rate, self.spec.sample_rate,
                               self.spec.num_samples).clamp(-1.0, 1.0)
        return waves if self.spec.waveform else spectrogram_batch(waves, self.spec)

    def check(self, path: Path) -> str | None:
        return check_wav(path)

    def decode(self, path: Path) -> tuple[Tensor, int]:
        return read_wav(path)

    def make(self, decoded: tuple[Tensor, int], train: bool) -> Tensor:
        samples, rate = decoded
        window = audio_window(samples, rate, self.spec, train, at_rate=self._item_rate)
        if self.on_device or self.spec.waveform:
            return window
        return spectrogram_batch(window[None], self.spec)[0]


@dataclass
class FramesReader(Reader):
    """Folder of frame images -> (3, size, size) for one frame, (T, 3, size, size) for several.

    Training picks random frames; evaluation takes evenly spaced ones (deterministic). With
    ``on_device`` (default) each frame is cropped and resized by Pillow while decoding (JPEG
    draft mode, uint8, no float copy of the full frame) and ImageNet normalisation runs on the
    training device; otherwise the frame is decoded whole and transformed in float here.
    """

    size: int = 224
    frames: int = 1
    on_device: bool = True
    kind: ClassVar[str] = "frames"

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        one = (3, self.size, self.size)
        return one if self.frames == 1 else (self.frames, *one)

    @property
    def finishes_on_device(self) -> bool:  # type: ignore[override]
        return self.on_device

    @property
    def item_dtype(self) -> torch.dtype:
        return torch.uint8 if self.on_device else torch.float32

    def finish(self, batch: Tensor) -> Tensor:
        return imagenet_normalize(batch) if self.on_device else batch

    def pixel_units(self) -> tuple[Any, Any] | None:
        return IMAGENET_MEAN, IMAGENET_STD

    @staticmethod
    def _files(path: Path) -> list[Path]:
        """The folder's frame images in name order ([] if it is missing); an image file is
        a folder of that one frame (a served model's input, e.g. ``dmrnet predict``)."""
        folder = Path(path)
        if folder.is_file() and folder.suffix.lower() in IMAGE_SUFFIXES:
            return [folder]
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def check(self, path: Path) -> str | None:
        files = self._files(path)
        if not files:
            return f"frame folder {str(path)!r} is missing or holds no image"
        return check_image(files[len(files) // 2])

    def _frame(self, path: Path | BytesFile, train: bool) -> Tensor:
        if not self.on_device:
            return imagenet_frame(read_image(path), train, self.size)
        x = read_resized(path, (self.size, self.size), crop_box if train else None)
        return random_hflip(x) if train else x

    def _chosen(self, count: int, train: bool) -> list[int]:
        """Which of ``count`` frames to use: random in training, evenly spaced otherwise."""
        if train:
            return torch.randint(0, count, (self.frames,)).sort().values.tolist()
        idx = np.linspace(0, count - 1, self.frames + 2)[1:-1].round().astype(int)
        return idx.tolist() if self.frames > 1 else [count // 2]

    def _listed(self, path: Path) -> list[Path]:
        files = self._files(path)
        if not files:
            raise DataError(f"frame folder {str(path)!r} is missing or holds no image")
        return files

    def decode(self, path: Path) -> tuple[tuple[str, bytes], ...]:
        """Every frame file's bytes (the decode itself depends on the random crop, so what
        is kept is the files' content: decoding it gives the same pixels as the file)."""
        return tuple((str(f), f.read_bytes()) for f in self._listed(path))

    def make(self, decoded: tuple[tuple[str, bytes], ...], train: bool) -> Tensor:
        out = [self._frame(BytesFile(*decoded[i]), train)
               for i in self._chosen(len(decoded), train)]
        return out[0] if self.frames == 1 else torch.stack(out)

    def __call__(self, path: Path, train: bool) -> Tensor:
        # without a cache only the chosen frames are read
        files = self._listed(path)
        out = [self._frame(files[i], train) for i in self._chosen(len(files), train)]
        return out[0] if self.frames == 1 else torch.stack(out)


@dataclass
class ImageReader(Reader):
    """Image file -> float (C, H, W).

    recipe: "casia" (the paper's face recipe, docs/recipes.md), "imagenet" (frame recipe) or
    "plain" ([0, 1], no augmentation). ``size`` (H, W) resizes; None requires every image to
    have ``expect`` size.
    """

    channels: int = 3
    recipe: str = "plain"
    size: tuple[int, int] | None = None
    expect: tuple[int, int] | None = None
    kind: ClassVar[str] = "image"

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        hw = self.size or self.expect
        if hw is None:
            raise DataError("an image reader needs a size or an expected size")
        return (self.channels, int(hw[0]), int(hw[1]))

    def pixel_units(self) -> tuple[Any, Any] | None:
        return {"casia": (0.5, 128.0 / 255.0), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)
                }.get(self.recipe, (0.0, 1.0))

    def check(self, path: Path) -> str | None:
        return check_image(path, None if self.size is not None else self.shape[1:])

    def decode(self, path: Path) -> Tensor:
        img = read_image(path, "RGB" if self.channels == 3 else "L")
        h, w = self.shape[1:]
        if self.size is None and tuple(img.shape[-2:]) != (h, w):
            raise DataError(f"image {str(path)!r} is {img.shape[-2]}x{img.shape[-1]} but this "
                            f"modality's images are {h}x{w} (set image_size to resize)")
        return img

    def make(self, decoded: Tensor, train: bool) -> Tensor:
        img = decoded
        if self.recipe == "casia":
            return casia_face(img, train, size=self.shape[1])
        if self.recipe == "imagenet":
            return imagenet_frame(img, train, self.shape[1])

        x = to_float(img)
        return resize(x, self.shape[1:]) if self.size is not None else x


@dataclass
class NpyReader(Reader):
    """.npy file -> float32 array of a fixed ``shape`` (a mismatch names the file).

    With ``mean`` and ``std`` (each of ``shape``; see :func:`fit_standardizer`) batches are
    standardised, ``(x - mean) / std``, on the device after transfer: the loader and the
    sample cache hold the file's own values, as a served model receives them."""

    shape: tuple[int, ...] = ()  # type: ignore[assignment]
    mean: Tensor | None = field(default=None, repr=False, compare=False)
    std: Tensor | None = field(default=None, repr=False, compare=False)
    kind: ClassVar[str] = "npy"

    @property
    def finishes_on_device(self) -> bool:  # type: ignore[override]
        return self.mean is not None

    def finish(self, batch: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            return batch
        mean = self.mean.to(batch.device, batch.dtype, non_blocking=True)
        std = self.std.to(batch.device, batch.dtype, non_blocking=True)
        return (batch - mean) / std

    def check(self, path: Path) -> str | None:
        return check_npy(path, self.shape)

    def decode(self, path: Path) -> Tensor:
        x = read_npy(path)
        if tuple(x.shape) != tuple(self.shape):
            raise DataError(
                f"array {str(path)!r} has shape {tuple(x.shape)}, expected {tuple(self.shape)} "
                "like the rest of this modality"
            )
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"array {str(path)!r} holds NaN or inf")
        return x


@dataclass
class TextReader(Reader):
    """UTF-8 text file -> token ids (T_i,) of its first ``max_tokens`` words, with a
    :class:`~dmrnet.data.text.Vocabulary` fitted on the training split (:func:`file_splits`
    fits it); a sequence modality of shape (max_tokens,)."""

    max_tokens: int = 128
    max_words: int = VOCABULARY_SIZE - 2
    min_count: int = 1
    lowercase: bool = True
    tokenizer: str | None = None  # a local Hugging Face tokenizer folder instead
    vocabulary: Vocabulary | PretrainedTokenizer | None = field(default=None, repr=False,
                                                                compare=False)
    variable_length = True

    def __post_init__(self) -> None:
        counts = {"max_tokens": self.max_tokens, "max_words": self.max_words,
                  "min_count": self.min_count}
        bad = next((k for k, v in counts.items() if not isinstance(v, int) or
                    isinstance(v, bool) or v < 1), None)
        if bad is not None or not isinstance(self.lowercase, bool):
            raise DataError(f"text option {bad or 'lowercase'}: max_tokens, max_words and "
                            "min_count take whole numbers >= 1, lowercase true or false")
        if self.max_words > VOCABULARY_SIZE - 2:
            raise DataError(f"text option max_words: at most {VOCABULARY_SIZE - 2} (the tokens "
                            f"encoder's embedding holds {VOCABULARY_SIZE} ids)")

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (int(self.max_tokens),)

    def check(self, path: Path) -> str | None:
        try:
            read_words(path)
        except (DataError, OSError) as err:
            return str(err)
        return None

    def decode(self, path: Path) -> str:
        return read_words(path)

    def make(self, decoded: str, train: bool) -> Tensor:
        if self.vocabulary is None:
            raise DataError("the text reader has no vocabulary yet: file_splits fits it on "
                            "the training split")
        return self.vocabulary.ids(decoded)

    def fitted(self, train: Sequence[Path]) -> TextReader:
        """This reader with a vocabulary of the training split's files ``train`` (or its
        tokenizer's)."""
        if self.tokenizer is not None:
            return dataclasses.replace(self, vocabulary=PretrainedTokenizer(
                str(Path(self.tokenizer).expanduser().resolve()), self.max_tokens))
        return dataclasses.replace(self, vocabulary=fit_vocabulary(
            train, max_words=self.max_words, min_count=self.min_count,
            lowercase=self.lowercase, max_tokens=self.max_tokens))


class FileDataset(Dataset):
    """Records + readers -> items ``{"inputs": {modality: Tensor}, "target": int}``.

    A modality whose path is None is left out of the item (the collate marks it missing).
    """

    def __init__(
        self, records: Sequence[Record], readers: Mapping[str, Reader], train: bool
    ) -> None:
        self.records = list(records)
        self.readers = dict(readers)
        self.train = train
        self.modalities = list(readers)
        self.cache: SampleCache | None = None
        # a decoded sample's key: the reader's settings and the file
        self._keys = {m: f"{type(r).__name__}{r!r}" for m, r in self.readers.items()}

    def use_cache(self, cache: SampleCache | None) -> None:
        """Keep decoded samples in ``cache`` (see :mod:`dmrnet.data.cache`)."""
        self.cache = cache

    def folders(self) -> set[Path]:
        """Every folder holding one of this dataset's files (outputs must stay out of them)."""
        return {Path(p).parent for r in self.records for p in r.paths.values() if p is not None}

    def _item(self, m: str, reader: Reader, path: Path) -> Tensor:
        if self.cache is None:
            return reader(path, self.train)
        decoded = self.cache.get((self._keys[m], str(path)), lambda: reader.decode(path))
        return reader.make(decoded, self.train)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: tuple(r.shape) for m, r in self.readers.items()}

    @property
    def labels(self) -> Tensor:
        return torch.tensor([r.label for r in self.records], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        inputs = {}
        for m, reader in self.readers.items():
            path = rec.paths.get(m)
            if path is None:
                continue
            try:
                inputs[m] = self._item(m, reader, path)
            except DataError as err:
                raise DataError(f"{err} ({rec.where})" if rec.where else str(err)) from err
        return {"inputs": inputs, "target": rec.label}


PROGRESS_AFTER = 3.0
"""Seconds a pass over the data files runs silently before :class:`Progress` reports."""


class Progress:
    """Says on stderr how far a long pass over the data files is (``what``: k of ``total``,
    the percentage and the time left), every ``every`` seconds once it has taken ``after``
    seconds: a scan of a million files takes minutes, and silence looks like a hang."""

    def __init__(self, what: str, total: int, after: float | None = None,
                 every: float = 10.0) -> None:
        after = PROGRESS_AFTER if after is None else after
        self.what, self.total, self.after, self.every = what, max(1, total), after, every
        self.done = 0
        self.start = time.monotonic()
        self.next = self.start + after

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        print(f"{self.what}: {self.done:,} of {self.total:,} ({100 * self.done / self.total:.0f} "
              f"%), about {left:.0f} s left", file=sys.stderr, flush=True)


def scan_records(splits: Mapping[str, Sequence[Record]], readers: Mapping[str, Reader],
                 limit: int = 20) -> None:
    """Look at every listed file once, before any training, and report every problem found
    (file and list line; the first ``limit`` of them) in one error."""
    problems, count = [], 0
    progress = Progress("checking the data files",
                        sum(len(r) for r in splits.values()) * len(readers))
    for split, records in splits.items():
        for rec in records:
            progress.step(len(readers))
            for m, reader in readers.items():
                path = rec.paths.get(m)
                if path is None:
                    continue
                problem = special_file(Path(path)) or reader.check(Path(path))
                if problem is not None:
                    count += 1
                    if len(problems) < limit:
                        problems.append(f"{problem} ({rec.where or split})")
    if problems:
        more = f"; and {count - len(problems)} more" if count > len(problems) else ""
        raise DataError(f"{count} file(s) cannot be used; fix or remove them: "
                        + "; ".join(problems) + more)


def special_file(path: Path, fix: str = "list regular files") -> str | None:
    """What is wrong with a path that exists but is neither a regular file nor a folder (a
    FIFO, socket or device: reading one blocks or never ends), or None."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        return (f"{str(path)!r} is not a regular file (a FIFO, socket or device, which would "
                f"block or never end); {fix}")
    return None


def check_records(records: Sequence[Record], modalities: Sequence[str], name: str,
                  allow_none: bool = False) -> None:
    """Every listed file exists; every sample has at least one modality (``allow_none``: a
    sample may have none of ``modalities``, some of a source's, and is left out later)."""
    if not records:
        raise DataError(f"{name} holds no sample")
    for rec in records:
        for m in modalities:
            p = rec.paths.get(m)
            if p is not None and not Path(p).exists():
                raise DataError(f"{m} file {str(p)!r} does not exist ({rec.where})")
            problem = None if p is None else special_file(Path(p))
            if problem:
                raise DataError(f"{problem} ({rec.where})")
        if not allow_none and all(rec.paths.get(m) is None for m in modalities):
            raise DataError(f"sample has no file for any of {list(modalities)} ({rec.where})")


def carve_validation(
    records: Sequence[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split a training list into (train, val), stratified by class, from ``seed``."""
    labels = np.array([r.label for r in records])
    tr, va = stratified_split(labels, [1 - fraction, fraction], seed)
    if len(va) == 0 and len(records) > 1:  # tiny lists: hold out one sample, never none
        va = np.array([tr[int(np.random.default_rng(seed).integers(len(tr)))]])
        tr = tr[tr != va[0]]
    return [records[i] for i in tr], [records[i] for i in va]


def select_modalities(available: Sequence[str], requested: Sequence[str] | None,
                      dataset: str) -> list[str]:
    if requested is None:
        return list(available)
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise DataError(
            f"modality {unknown[0]!r} is not one of {dataset}'s modalities {list(available)}"
        )
    if not requested:
        raise DataError(f"choose at least one of {dataset}'s modalities {list(available)}")
    return list(requested)


def fit_standardizer(train: Sequence[Record], readers: Mapping[str, Reader], eps: float = 1e-6
                     ) -> tuple[dict[str, Reader], Standardizer]:
    """Per-element mean and std of every array (``.npy``) modality over the training files
    that have it (a constant element keeps std 1): ``readers`` with those modalities'
    readers standardising, and the statistics (flattened lists, as model folders store
    them, like :meth:`Standardizer.fit` of an in-memory dataset)."""
    out, mean, std = dict(readers), {}, {}
    arrays = [m for m, r in readers.items() if isinstance(r, NpyReader)]
    progress = Progress("fitting the standardisation of " + ", ".join(arrays),
                        len(train) * len(arrays))
    for m, reader in readers.items():
        if not isinstance(reader, NpyReader):
            continue
        shift = total = squares = None
        n = 0
        for rec in train:
            progress.step()
            path = rec.paths.get(m)
            if path is None:
                continue
            # checked by the scan already: read as it is, in float64
            x = load_npy(path).astype(np.float64).reshape(reader.shape)
            if shift is None:  # sums of x - shift keep float64 exact for large offsets
                shift, total, squares = x, np.zeros_like(x), np.zeros_like(x)
            d = x - shift
            total += d
            squares += d * d
            n += 1
        if shift is None or total is None or squares is None:
            continue  # no training file: nothing to fit (the manifest refuses this earlier)
        mu = total / n
        sd = np.sqrt(np.clip(squares / n - mu * mu, 0, None))
        sd = np.where(sd > eps, sd, 1.0)
        mu = mu + shift
        out[m] = dataclasses.replace(reader, mean=torch.from_numpy(mu).float(),
                                     std=torch.from_numpy(sd).float())
        mean[m], std[m] = mu.flatten().tolist(), sd.flatten().tolist()
    return out, Standardizer(mean, std)


def file_splits(
    train: Sequence[Record], val: Sequence[Record], test: Sequence[Record],
    readers: Mapping[str, Reader], class_names: Sequence[str], info: dict[str, Any],
    standardize: bool = False,
) -> Any:
    """Build the SplitData of three record lists (training augmentation on train only).
    ``standardize``: array modalities are standardised on the training files' statistics
    (:func:`fit_standardizer`; stored in ``info["standardizer"]``, so in model folders)."""

    mods = list(readers)
    reserved = [m for m in mods if m in ("standardize", READERS_KEY)]
    if reserved:  # a model's preprocessing holds these names beside the modalities'
        raise DataError(f"a modality may not be named {reserved[0]!r} (a model stores its "
                        "preprocessing under that name); rename it")
    for name, part in (("training", train), ("validation", val), ("test", test)):
        if not part:
            raise DataError(f"the {name} split holds no sample; every split needs at least one")
    scan_records({"train": train, "val": val, "test": test}, readers)
    info = {**info, "sizes": {"train": len(train), "val": len(val), "test": len(test)}}
    if standardize:
        readers, stats = fit_standardizer(train, readers)
        if stats.mean:
            info["standardizer"] = {"mean": stats.mean, "std": stats.std}
    texts = {m: r.fitted([p for rec in train if (p := rec.paths.get(m)) is not None])
             for m, r in readers.items() if isinstance(r, TextReader)}
    readers = {**readers, **texts}
    # what goes with the model so that it reads new files as evaluation read these: the
    # statistics, each vocabulary (raw text), each reader (a WAV, a frame, a face image)
    stored = {m: d for m, r in readers.items() if (d := r.to_dict()) is not None}
    if texts or stored:
        info["preprocessing"] = {
            **({"standardize": info["standardizer"]} if "standardizer" in info else {}),
            **{m: r.vocabulary.to_dict() for m, r in texts.items()},  # type: ignore[union-attr]
            **({READERS_KEY: stored} if stored else {})}
    return SplitData(
        train=FileDataset(train, readers, train=True),
        val=FileDataset(val, readers, train=False),
        test=FileDataset(test, readers, train=False),
        modalities=mods,
        input_shapes={m: tuple(r.shape) for m, r in readers.items()},
        class_names=list(class_names),
        info=info,
        device_transforms={m: r for m, r in readers.items() if r.finishes_on_device},
        sequences=[m for m, r in readers.items() if r.variable_length],
    )
