"""Building blocks: encoders, fusion, trunks. Importing this registers the built-in ones."""

from dmrnet.nn.encoders import MLPEncoder
from dmrnet.nn.fusion import ConcatFusion, MaskedMeanFusion, create_fusion
from dmrnet.nn.resnet import ResNet, ResNetTrunk, SEResNetStem, load_torchvision_state_dict

__all__ = [
    "ConcatFusion",
    "MLPEncoder",
    "MaskedMeanFusion",
    "ResNet",
    "ResNetTrunk",
    "SEResNetStem",
    "create_fusion",
    "load_torchvision_state_dict",
]
