"""Audio and image transforms in plain torch (no torchvision / torchaudio).

Training transforms draw from torch's global RNG (seeded per worker by Lightning); evaluation
transforms are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- audio ---------------------------------------------------------------------------------


def resample(x: Tensor, rate: int, target: int) -> Tensor:
    """Band-limited resampling of a 1-D signal by Fourier interpolation (N -> N * target / rate)."""
    if rate == target:
        return x
    n = x.shape[-1]
    m = max(round(n * target / rate), 1)
    spec = torch.fft.rfft(x.double())
    keep = min(spec.shape[-1], m // 2 + 1)
    out = torch.zeros(m // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=m) * (m / n)).float()


@dataclass(frozen=True)
class AudioSpec:
    """The log-spectrogram recipe (SPEC §3; CREMA-D defaults give 257 x 188).

    Attributes:
        sample_rate: resample to this rate. seconds: clip length.
        tile: repeat the waveform this many times before cutting (authors: 3, so short clips
            fill the window).
        n_fft / hop: STFT size and hop (Hann window).
        train_crop: "start" (authors' CREMA-D: the first ``seconds``) or "random" (a random
            window in training); evaluation always uses a deterministic window ("start", or the
            centre when ``train_crop`` is "random").
    """

    sample_rate: int = 22050
    seconds: float = 3.0
    tile: int = 3
    n_fft: int = 512
    hop: int = 353
    train_crop: str = "start"

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.seconds)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(1, n_fft // 2 + 1, frames) of the spectrogram."""
        return (1, self.n_fft // 2 + 1, 1 + self.num_samples // self.hop)


def log_spectrogram(samples: Tensor, rate: int, spec: AudioSpec, train: bool = False) -> Tensor:
    """Waveform (N,) at ``rate`` -> standardised log-magnitude spectrogram ``spec.shape``.

    Resample, tile, cut to ``seconds``, clip to [-1, 1], STFT, log(|S| + 1e-7), per-sample
    standardisation.
    """
    x = resample(samples, rate, spec.sample_rate)
    need = spec.num_samples
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
    x = x.clamp(-1.0, 1.0)
    stft = torch.stft(x, n_fft=spec.n_fft, hop_length=spec.hop,
                      window=torch.hann_window(spec.n_fft), center=True, return_complex=True)
    s = torch.log(stft.abs() + 1e-7)
    s = (s - s.mean()) / (s.std() + 1e-9)
    return s.unsqueeze(0).float()


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


def random_resized_crop(
    img: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Crop a random area fraction and aspect ratio, then resize (the usual ImageNet recipe)."""
    _, h, w = img.shape
    area = h * w
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(*scale))
        log_r = torch.empty(()).uniform_(math.log(ratio[0]), math.log(ratio[1]))
        r = math.exp(float(log_r))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            return resize(img[:, top : top + ch, left : left + cw], size)
    return resize(center_crop(img, (min(h, w), min(h, w))), size)


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


def imagenet_frame(img: Tensor, train: bool, size: int = 224) -> Tensor:
    """Visual recipe (SPEC §3): random resized crop + flip in training, resize in evaluation;
    ImageNet normalisation. uint8 (3, H, W) -> float (3, size, size)."""
    x = to_float(img)
    x = random_hflip(random_resized_crop(x, (size, size))) if train else resize(x, (size, size))
    return normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def casia_face(img: Tensor, train: bool, size: int = 112, train_resize: int = 144,
               degrees: float = 30.0) -> Tensor:
    """CASIA-SURF recipe (SPEC §3): train resize 144, rotation, crop 112, flip; evaluation
    resize 112; (x - 127.5) / 128. uint8 (C, H, W) -> float (C, size, size)."""
    x = img.float()
    if train:
        x = resize(x, (train_resize, train_resize))
        x = random_hflip(random_crop(random_rotation(x, degrees), (size, size)))
    else:
        x = resize(x, (size, size))
    return (x - 127.5) / 128.0
