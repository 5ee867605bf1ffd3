"""Per-modality encoders. Each maps (B, *input_shape) to features (B, out_features)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dmrnet.errors import ConfigError
from dmrnet.nn.resnet import init_weights, resnet
from dmrnet.nn.sequence import sequence_encoder
from dmrnet.registry import ENCODERS


class MLPEncoder(nn.Module):
    """Feature-vector encoder: [Linear -> BatchNorm1d -> ReLU -> Dropout] x len(hidden) -> Linear.

    Input (B, in_features) (any trailing shape is flattened); output (B, out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 128,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers += [nn.Linear(width, out_features), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_features = out_features
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ENCODERS.register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    out_features: int = 128,
    hidden: Sequence[int] = (256,),
    dropout: float = 0.0,
) -> MLPEncoder:
    """MLP over a flattened feature vector."""
    n = 1
    for s in input_shape:
        n *= int(s)
    return MLPEncoder(n, out_features=out_features, hidden=tuple(hidden), dropout=dropout)


@ENCODERS.register("identity")
def identity(input_shape: tuple[int, ...]) -> nn.Module:
    """No encoder: the flattened input is the feature (for precomputed embeddings)."""
    n = 1
    for s in input_shape:
        n *= int(s)
    mod = nn.Flatten()
    mod.out_features = n  # type: ignore[assignment]
    return mod


@ENCODERS.register("auto")
def auto(
    input_shape: tuple[int, ...],
    vector: Mapping[str, Any] | None = None,
    image: Mapping[str, Any] | None = None,
    sequence: Mapping[str, Any] | None = None,
    variable_length: bool = False,
) -> nn.Module:
    """Chosen by the input's shape, so one setting serves data of mixed kinds (a manifest of
    arrays, images and audio): a sequence encoder (a GRU) for modalities the data declare as
    variable-length sequences (T, D) (``variable_length``, set from the data), an MLP for
    feature vectors (D,) and other arrays of rank <= 2 (flattened), a ResNet-18 for images and
    spectrograms (C, H, W) and frame stacks (T, C, H, W). ``vector`` / ``image`` /
    ``sequence``: that encoder's arguments, e.g. ``{hidden: [512]}`` / ``{layers: [3, 4, 6,
    3]}`` / ``{name: transformer, layers: 2}``."""
    if variable_length:
        return sequence_encoder(input_shape, sequence)
    if len(input_shape) <= 2:
        return mlp(input_shape, **dict(vector or {}))
    if len(input_shape) in (3, 4):
        return resnet(input_shape, **dict(image or {}))
    raise ConfigError(f"encoder 'auto' takes vectors (D,), images (C, H, W) or frame stacks "
                      f"(T, C, H, W); got inputs of shape {tuple(input_shape)}: name an encoder "
                      "for this modality in encoders: {MODALITY: {name: ...}}")
