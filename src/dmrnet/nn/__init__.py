"""Building blocks: encoders, fusion, trunks. Importing this registers the built-in ones."""

import warnings
from typing import Any

from dmrnet.errors import ConfigError, DMRNetError, first_line
from dmrnet.nn.encoders import MLPEncoder
from dmrnet.nn.fusion import ConcatFusion, MaskedMeanFusion, create_fusion
from dmrnet.nn.pretrained import PretrainedEncoder
from dmrnet.nn.resnet import ResNet, ResNetTrunk, SEResNetStem, load_torchvision_state_dict
from dmrnet.nn.sequence import GRUEncoder, SequenceEncoder, TransformerSequenceEncoder, run_encoder
from dmrnet.registry import ENCODERS, TRUNKS


def create_encoder(name: str, input_shape: tuple[int, ...], variable_length: bool = False,
                   modality: str = "this modality", **kwargs: Any) -> Any:
    """Build a registered encoder for one modality (an error lists the registered ones; an
    argument the encoder does not take is named). ``variable_length``: the modality holds
    padded sequences with lengths, so the encoder must be a
    :class:`~dmrnet.nn.sequence.SequenceEncoder` (``auto`` picks one); ``modality`` names
    it in that error."""
    factory = ENCODERS.get(name)
    if variable_length and name == "auto":
        kwargs["variable_length"] = True
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
    if variable_length and not isinstance(encoder, SequenceEncoder):
        raise ConfigError(f"encoder {name!r} reads fixed-size inputs, but {modality} holds "
                          "variable-length sequences (its padding would be read as data); use "
                          "'gru', 'transformer' or 'auto' for it")
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
    "GRUEncoder",
    "MLPEncoder",
    "MaskedMeanFusion",
    "PretrainedEncoder",
    "ResNet",
    "ResNetTrunk",
    "SEResNetStem",
    "SequenceEncoder",
    "TransformerSequenceEncoder",
    "create_encoder",
    "create_fusion",
    "create_trunk",
    "load_torchvision_state_dict",
    "run_encoder",
]
