"""Reading files: WAV audio (standard library), images (Pillow), .npy arrays. Errors name the
file and what is wrong with it."""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from dmrnet.data.base import DataError


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file (a list, a manifest, a config) read as UTF-8, with or without the byte-order
    mark spreadsheet programs write; another encoding is a :class:`DataError` naming the byte
    and line (Python's own error names neither and ends in a traceback)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{what} {Path(path).name} is not UTF-8 text (byte "
                        f"{raw[err.start]:#04x} on line {line}); save it as UTF-8 (e.g. 'CSV "
                        "UTF-8' in a spreadsheet)") from None


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """PCM WAV -> (mono samples (N,) float32 in [-1, 1], sample rate). Channels are averaged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file {str(path)!r} does not exist")
    try:
        with wave.open(str(path), "rb") as fh:
            rate, width, channels = fh.getframerate(), fh.getsampwidth(), fh.getnchannels()
            raw = fh.readframes(fh.getnframes())
    except (wave.Error, EOFError, OSError) as err:
        raise DataError(f"cannot read WAV file {str(path)!r}: {err}") from err
    problem = _wav_header_problem(path, rate, width, channels)
    if problem:
        raise DataError(problem)
    raw = raw[: len(raw) // (width * channels) * (width * channels)]  # whole frames (truncated)
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bit
        data = ints.astype(np.float32) / 8388608.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    if data.size == 0:
        raise DataError(f"WAV file {str(path)!r} holds no samples")
    data = data.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(data)), rate


def write_wav(path: str | Path, samples: np.ndarray | Tensor, rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM (used by tests and fixtures)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1, 1)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(int(rate))
        fh.writeframes((x * 32767).astype("<i2").tobytes())


@dataclass(frozen=True)
class BytesFile:
    """A file's content held in memory, with its name for messages (image readers take it
    in place of a path)."""

    name: str
    data: bytes

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


def _image_source(path: str | Path | BytesFile) -> tuple[Any, str]:
    """What ``Image.open`` takes for ``path``, and the name errors give; a missing file is
    an error naming it."""
    if isinstance(path, BytesFile):
        return path.open(), path.name
    if not Path(path).is_file():
        raise DataError(f"image file {str(path)!r} does not exist")
    return Path(path), str(path)


DEEP_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}
"""Single-channel modes of more than 8 bits (16-bit PNGs: depth maps) and their full scale."""


def read_image(path: str | Path | BytesFile, mode: str = "RGB") -> Tensor:
    """Image file (or its content, a :class:`BytesFile`) -> (C, H, W), ``mode`` "RGB" (3
    channels) or "L" (1 channel): uint8, or for 16-bit images float32 in [0, 1] at full depth
    (converting them to 8 bits would clip every value above 255)."""

    source, name = _image_source(path)
    try:
        with Image.open(source) as img:
            img.load()
            if img.mode in DEEP_MODES:
                deep = np.asarray(img).astype(np.float32) / DEEP_MODES[img.mode]
                x = torch.from_numpy(np.clip(deep, 0.0, 1.0))[None]
                return x.expand(3, -1, -1).clone() if mode == "RGB" else x
            arr = np.asarray(img.convert(mode))
    except Image.DecompressionBombError as err:
        raise DataError(f"image {name!r} is too large to decode safely: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {name!r}: {err}") from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)


Box = tuple[int, int, int, int]


def read_resized(path: str | Path | BytesFile, size: tuple[int, int],
                 box: Box | Callable[[int, int], Box] | None = None) -> Tensor:
    """Image file -> uint8 RGB (3, *size): the region ``box`` = (top, left, height, width)
    (default: the whole image) resized with Pillow's antialiased bilinear filter.

    JPEGs are decoded at the largest DCT reduction (1/2, 1/4, 1/8) that still leaves the region
    at least ``size`` pixels (Pillow's draft mode): frames larger than needed decode faster.
    Pass ``box`` as a function ``(height, width) -> box`` to choose it from the image's size,
    which is read from the header before decoding. ``path`` may be a :class:`BytesFile`
    (the file's content, read before).
    """

    source, name = _image_source(path)
    try:
        with Image.open(source) as img:
            w, h = img.size
            top, left, ch, cw = box(h, w) if callable(box) else (box or (0, 0, h, w))
            img.draft("RGB", (-(-w * size[1] // max(cw, 1)), -(-h * size[0] // max(ch, 1))))
            sx, sy = img.size[0] / w, img.size[1] / h  # the decoded size, after any reduction
            region = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
            out = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR,
                                            box=region)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {name!r}: {err}") from err
    return torch.from_numpy(np.array(out, copy=True)).permute(2, 0, 1)


def read_npy(path: str | Path) -> Tensor:
    """.npy array -> float32 tensor. Pickled object arrays are refused (no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {str(path)!r} does not exist")
    try:
        arr = load_npy(path)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"cannot read array {str(path)!r}: {err}") from err
    problem = array_problem(arr, path)
    if problem:
        raise DataError(problem)
    # float32 in this machine's byte order (a big-endian file is converted, not refused)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def load_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` file's array, read whole; a ``ValueError`` for pickled objects or for a
    header that promises more bytes than the file holds (checked before anything is
    allocated). Two to three times faster than a memory map for small files."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:  # a format this check does not parse: numpy's memory map checks the size
            return np.array(np.load(path, mmap_mode="r", allow_pickle=False))
        if dtype.hasobject:
            raise ValueError("the array holds Python objects (pickled); they are not loaded")
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        held = os.fstat(fh.fileno()).st_size - fh.tell()
        if need > held:
            raise ValueError(f"its header promises {need} bytes of data but the file holds "
                             f"{held}")
        fh.seek(0)
        return fmt.read_array(fh, allow_pickle=False)


def array_problem(arr: np.ndarray, path: str | Path) -> str | None:
    """What makes an array unusable as a modality's values, or None: a non-numeric or complex
    dtype (the imaginary part would be dropped without a word), or no values at all."""
    if np.issubdtype(arr.dtype, np.complexfloating):
        return (f"array {str(path)!r} holds complex numbers ({arr.dtype}); store the real and "
                "imaginary parts as two real channels")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        return f"array {str(path)!r} has non-numeric dtype {arr.dtype}"
    if arr.size == 0:
        return f"array {str(path)!r} holds no values (shape {tuple(arr.shape)})"
    return None


# --- quick checks: a file's header (and an array's values), for the scan before training ------


MAX_AUDIO_RATE = 1_000_000
"""Sample rates above this (Hz) are refused: no audio recording has one, and resampling from
it would need the memory of a damaged header's promise."""


def _wav_header_problem(path: Path, rate: int, width: int, channels: int) -> str | None:
    if width not in (1, 2, 3, 4):
        return f"WAV file {str(path)!r} has unsupported sample width {width} bytes"
    if not 1 <= rate <= MAX_AUDIO_RATE:
        return (f"WAV file {str(path)!r} has sample rate {rate} Hz in its header (a damaged "
                f"file?); audio needs 1 to {MAX_AUDIO_RATE} Hz")
    if channels < 1:
        return f"WAV file {str(path)!r} has {channels} channels in its header"
    return None


def check_wav(path: str | Path) -> str | None:
    """What is wrong with a WAV file, from its header, or None."""
    try:
        with wave.open(str(path), "rb") as fh:
            width, frames = fh.getsampwidth(), fh.getnframes()
            rate, channels = fh.getframerate(), fh.getnchannels()
    except (wave.Error, EOFError, OSError) as err:
        return f"cannot read WAV file {str(path)!r}: {err}"
    problem = _wav_header_problem(Path(path), rate, width, channels)
    if problem:
        return problem
    if frames == 0:
        return f"WAV file {str(path)!r} holds no samples"
    return None


def check_image(path: str | Path, size: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with an image file, from its header, or None. ``size`` (H, W): the size
    every image of its modality must have."""

    try:
        with Image.open(path) as img:
            w, h = img.size
    except Image.DecompressionBombError as err:
        return f"image {str(path)!r} is too large to decode safely: {err}"
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f"cannot read image {str(path)!r}: {err}"
    if size is not None and (h, w) != tuple(size):
        return (f"image {str(path)!r} is {h}x{w} but this modality's images are "
                f"{size[0]}x{size[1]} (set image_size to resize)")
    return None


def check_npy(path: str | Path, shape: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with a .npy array, or None: unreadable, a header that promises more data
    than the file holds, pickled objects, a shape unlike ``shape``, NaN or inf."""
    try:
        arr = load_npy(path)
    except (ValueError, OSError, EOFError) as err:
        return f"cannot read array {str(path)!r}: {err}"
    problem = array_problem(arr, path)
    if problem:
        return problem
    if shape is not None and tuple(arr.shape) != tuple(shape):
        return (f"array {str(path)!r} has shape {tuple(arr.shape)}, expected {tuple(shape)} "
                "like the rest of this modality")
    if np.issubdtype(arr.dtype, np.inexact) and not bool(np.isfinite(arr).all()):
        return f"array {str(path)!r} holds NaN or inf"
    return None
