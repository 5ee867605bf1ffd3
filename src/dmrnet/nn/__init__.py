"""Building blocks: encoders, fusion, trunks. Importing this registers the built-in ones."""

from typing import Any

from dmrnet.errors import ConfigError
from dmrnet.nn.encoders import MLPEncoder
from dmrnet.nn.fusion import ConcatFusion, MaskedMeanFusion, create_fusion
from dmrnet.nn.resnet import ResNet, ResNetTrunk, SEResNetStem, load_torchvision_state_dict
from dmrnet.registry import ENCODERS, TRUNKS


def create_encoder(name: str, input_shape: tuple[int, ...], **kwargs: Any) -> Any:
    """Build a registered encoder for one modality (an error lists the registered ones; an
    argument the encoder does not take is named)."""
    factory = ENCODERS.get(name)
    try:
        return factory(tuple(input_shape), **kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise ConfigError(f"encoder {name!r}: {err} (its arguments go in encoder_kwargs or "
                          "encoders: {MODALITY: {name: ..., ...}})") from err


def create_trunk(name: str, in_channels: int, **kwargs: Any) -> Any:
    """Build a registered trunk (shared layers between fusion and the embedding)."""
    return TRUNKS.get(name)(int(in_channels), **kwargs)


__all__ = [
    "ConcatFusion",
    "MLPEncoder",
    "MaskedMeanFusion",
    "ResNet",
    "ResNetTrunk",
    "SEResNetStem",
    "create_encoder",
    "create_fusion",
    "create_trunk",
    "load_torchvision_state_dict",
]
