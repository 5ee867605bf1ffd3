"""Audio and image transforms in plain torch (no torchvision / torchaudio).

Training transforms draw from torch's global RNG (seeded per worker by Lightning); evaluation
transforms are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmrnet.data.base import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- audio ---------------------------------------------------------------------------------


def resample(x: Tensor, rate: int, target: int) -> Tensor:
    """Band-limited resampling of a 1-D signal by Fourier interpolation (N -> N * target / rate).

    numpy's FFT, in float64: about twice as fast as torch's on CPU for these odd lengths.
    """
    if rate == target:
        return x
    n = x.shape[-1]
    m = max(round(n * target / rate), 1)
    spec = np.fft.rfft(x.numpy().astype(np.float64))
    keep = min(spec.shape[-1], m // 2 + 1)
    out = np.zeros(m // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return torch.from_numpy((np.fft.irfft(out, n=m) * (m / n)).astype(np.float32))


@dataclass(frozen=True)
class AudioSpec:
    """The log-spectrogram recipe (docs/recipes.md; CREMA-D defaults give 257 x 188).

    Attributes:
        sample_rate: resample to this rate. seconds: clip length.
        tile: repeat the waveform this many times before cutting (authors: 3, so short clips
            fill the window).
        n_fft / hop: STFT size and hop (Hann window).
        train_crop: "start" (authors' CREMA-D: the first ``seconds``) or "random" (a random
            window in training); evaluation always uses a deterministic window ("start", or the
            centre when ``train_crop`` is "random").
        source_rate: the rate the files are stored at (CREMA-D: 16000), or None. When set,
            a loader that finishes on the device cuts the window at this rate and the
            resampling to ``sample_rate`` runs for the whole batch on the device (files at
            another rate are first resampled to it in the loader).
        waveform: the window itself, (sample_rate x seconds,) in [-1, 1], instead of its
            spectrogram: the input of a pretrained waveform model (``encoder: hf`` of a
            wav2vec2, HuBERT or WavLM folder; set ``sample_rate`` to the model's, 16000).
    """

    sample_rate: int = 22050
    seconds: float = 3.0
    tile: int = 3
    n_fft: int = 512
    hop: int = 353
    train_crop: str = "start"
    source_rate: int | None = None
    waveform: bool = False

    @classmethod
    def of(cls, options: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
           ) -> AudioSpec:
        """The recipe of ``defaults`` (a dataset's) updated by the user's ``options`` (the
        ``audio:`` mapping of ``dataset_kwargs``); an unknown name or a value of the wrong
        kind is one :class:`DataError` naming it."""
        given = {} if options is None else options
        if not isinstance(given, Mapping):
            raise DataError(f"dataset option audio must be a mapping of audio options, e.g. "
                            f"{{seconds: 3}}; got {given!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise DataError(f"audio option {unknown[0]!r} is not one of {', '.join(known)}")
        spec = {**(defaults or {}), **given}
        for key in ("sample_rate", "tile", "n_fft", "hop", "source_rate"):
            value = spec.get(key, 1)
            if not _whole(value) and not (key == "source_rate" and value is None):
                raise DataError(f"audio option {key} takes a whole number >= 1; got {value!r}")
        seconds = spec.get("seconds", 1.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise DataError(f"audio option seconds takes a number > 0; got {seconds!r}")
        if spec.get("train_crop", "start") not in ("start", "random"):
            raise DataError(f"audio option train_crop takes start or random; got "
                            f"{spec['train_crop']!r}")
        if not isinstance(spec.get("waveform", False), bool):
            raise DataError(f"audio option waveform takes true or false; got "
                            f"{spec['waveform']!r}")
        return cls(**spec)

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.seconds)

    @property
    def shape(self) -> tuple[int, ...]:
        """(1, n_fft // 2 + 1, frames) of the spectrogram; (samples,) of a waveform."""
        if self.waveform:
            return (self.num_samples,)
        return (1, self.n_fft // 2 + 1, 1 + self.num_samples // self.hop)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def audio_window(samples: Tensor, rate: int, spec: AudioSpec, train: bool = False,
                 at_rate: int | None = None) -> Tensor:
    """Waveform (N,) at ``rate`` -> the recipe's window of ``spec.seconds`` at ``at_rate``
    (default ``spec.sample_rate``): resample, tile, cut (randomly in training when
    ``train_crop`` is "random"), clip to [-1, 1]."""
    at_rate = at_rate or spec.sample_rate
    x = resample(samples, rate, at_rate)
    need = round(at_rate * spec.seconds)
    reps = max(spec.tile, math.ceil(need / max(x.shape[-1], 1)))
    if spec.train_crop == "random":
        reps = max(reps, 1)
        x = x.repeat(reps)
        span = x.shape[-1] - need
        if train and span > 0:
            start = int(torch.randint(0, span + 1, ()).item())
        else:
            start = span // 2 if span > 0 else 0
        x = x[start : start + need]
    else:
        x = x.repeat(reps)[:need]
    return x.clamp(-1.0, 1.0).float()


def resample_batch(x: Tensor, rate: int, target: int, length: int | None = None) -> Tensor:
    """Fourier resampling of a batch of windows (B, N) at ``rate`` to (B, ``length``) at
    ``target`` (default length N * target / rate), on ``x``'s device."""
    if rate == target:
        return x
    n = x.shape[-1]
    m = length or max(round(n * target / rate), 1)
    # float64: the empty band above the source's Nyquist must stay ~0 (in float32 its
    # rounding noise would reach the log-spectrogram)
    spec = torch.fft.rfft(x.double(), dim=-1)
    keep = min(spec.shape[-1], m // 2 + 1)
    out = spec.new_zeros(x.shape[0], m // 2 + 1)
    out[:, :keep] = spec[:, :keep]
    return (torch.fft.irfft(out, n=m, dim=-1) * (m / n)).float()


def spectrogram_batch(windows: Tensor, spec: AudioSpec) -> Tensor:
    """Windows (B, N) -> standardised log-magnitude spectrograms (B, *spec.shape), on the
    windows' device: STFT (Hann), log(|S| + 1e-7), per-sample standardisation."""
    window = torch.hann_window(spec.n_fft, device=windows.device, dtype=windows.dtype)
    stft = torch.stft(windows, n_fft=spec.n_fft, hop_length=spec.hop, window=window,
                      center=True, return_complex=True)
    s = torch.log(stft.abs() + 1e-7)
    flat = s.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1)
    return ((s - mean) / (std + 1e-9)).unsqueeze(1).float()


def log_spectrogram(samples: Tensor, rate: int, spec: AudioSpec, train: bool = False) -> Tensor:
    """Waveform (N,) at ``rate`` -> standardised log-magnitude spectrogram ``spec.shape``:
    :func:`audio_window` then :func:`spectrogram_batch` on one window."""
    return spectrogram_batch(audio_window(samples, rate, spec, train)[None], spec)[0]


# --- images --------------------------------------------------------------------------------


def to_float(img: Tensor) -> Tensor:
    """uint8 (C, H, W) -> float32 in [0, 1]."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def resize(img: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) -> (C, *size), bilinear with antialiasing."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img.unsqueeze(0), size=tuple(size), mode="bilinear",
                         align_corners=False, antialias=True).squeeze(0)


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random crop (top, left, crop height, crop width) of a random area fraction in
    ``scale`` and aspect ratio in ``ratio`` (the usual ImageNet recipe); after ten misses, the
    centred square."""
    area = height * width
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(*scale))
        log_r = torch.empty(()).uniform_(math.log(ratio[0]), math.log(ratio[1]))
        r = math.exp(float(log_r))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= width and 0 < ch <= height:
            top = int(torch.randint(0, height - ch + 1, ()))
            left = int(torch.randint(0, width - cw + 1, ()))
            return top, left, ch, cw
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def random_resized_crop(
    img: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Crop a random area fraction and aspect ratio (:func:`crop_box`), then resize."""
    top, left, ch, cw = crop_box(img.shape[-2], img.shape[-1], scale, ratio)
    return resize(img[:, top : top + ch, left : left + cw], size)


def center_crop(img: Tensor, size: tuple[int, int]) -> Tensor:
    _, h, w = img.shape
    top, left = max((h - size[0]) // 2, 0), max((w - size[1]) // 2, 0)
    return img[:, top : top + size[0], left : left + size[1]]


def random_crop(img: Tensor, size: tuple[int, int]) -> Tensor:
    _, h, w = img.shape
    top = int(torch.randint(0, max(h - size[0], 0) + 1, ()))
    left = int(torch.randint(0, max(w - size[1], 0) + 1, ()))
    return img[:, top : top + size[0], left : left + size[1]]


def random_hflip(img: Tensor, p: float = 0.5) -> Tensor:
    return img.flip(-1) if float(torch.rand(())) < p else img


def random_rotation(img: Tensor, degrees: float) -> Tensor:
    """Rotate by an angle uniform in [-degrees, degrees] about the centre (zero fill)."""
    angle = math.radians(float(torch.empty(()).uniform_(-degrees, degrees)))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=img.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *img.shape], align_corners=False)
    return F.grid_sample(img.unsqueeze(0), grid, align_corners=False).squeeze(0)


def normalize(img: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=img.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype).view(-1, 1, 1)
    return (img - m) / s


def imagenet_normalize(x: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 in ImageNet units, on ``x``'s device."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def imagenet_frame(img: Tensor, train: bool, size: int = 224) -> Tensor:
    """Visual recipe (docs/recipes.md): random resized crop + flip in training, resize in
    evaluation; ImageNet normalisation. uint8 (3, H, W) -> float (3, size, size)."""
    x = to_float(img)
    x = random_hflip(random_resized_crop(x, (size, size))) if train else resize(x, (size, size))
    return normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def casia_face(img: Tensor, train: bool, size: int = 112, train_resize: int = 144,
               degrees: float = 30.0) -> Tensor:
    """CASIA-SURF recipe (docs/recipes.md): train resize 144, rotation, crop 112, flip; evaluation
    resize 112; (x - 127.5) / 128. uint8 (C, H, W) (or a 16-bit image's float in [0, 1],
    brought to the same scale) -> float (C, size, size)."""
    x = img.float() if img.dtype == torch.uint8 else img.float() * 255.0
    if train:
        x = resize(x, (train_resize, train_resize))
        x = random_hflip(random_crop(random_rotation(x, degrees), (size, size)))
    else:
        x = resize(x, (size, size))
    return (x - 127.5) / 128.0
