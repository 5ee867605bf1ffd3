"""Building blocks: encoders, fusion, trunks. Importing this registers the built-in ones."""

import warnings
from typing import Any

from dmrnet.errors import ConfigError, DMRNetError, first_line
from dmrnet.nn.encoders import MLPEncoder
from dmrnet.nn.fusion import ConcatFusion, MaskedMeanFusion, create_fusion
from dmrnet.nn.resnet import ResNet, ResNetTrunk, SEResNetStem, load_torchvision_state_dict
from dmrnet.registry import ENCODERS, TRUNKS


def create_encoder(name: str, input_shape: tuple[int, ...], **kwargs: Any) -> Any:
    """Build a registered encoder for one modality (an error lists the registered ones; an
    argument the encoder does not take is named)."""
    factory = ENCODERS.get(name)
    given = ", ".join(f"{k}: {v!r}" for k, v in kwargs.items())
    try:
        with warnings.catch_warnings():  # torch's "zero-element tensors" before our error
            warnings.filterwarnings("ignore", message=".*zero-element tensor")
            encoder = factory(tuple(input_shape), **kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise ConfigError(f"encoder {name!r}: {err} (its arguments go in encoder_kwargs or "
                          "encoders: {MODALITY: {name: ..., ...}})") from err
    except DMRNetError:
        raise
    except (ValueError, RuntimeError) as err:  # torch's own checks of sizes and rates
        raise ConfigError(f"encoder {name!r} cannot be built from {{{given}}} for inputs of "
                          f"shape {tuple(input_shape)}: {first_line(err)}; check its "
                          "arguments") from err
    empty = next((n for n, p in encoder.named_parameters() if p.numel() == 0), None)
    if empty is not None:  # a width of 0 builds, then fails at the first batch
        raise ConfigError(f"encoder {name!r} built from {{{given}}} has a layer of size 0 "
                          f"({empty}); give every size as 1 or more")
    return encoder


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
