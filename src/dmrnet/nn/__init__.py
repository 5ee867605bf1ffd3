"""Building blocks: encoders, fusion, heads. Importing this registers the built-in encoders."""

from dmrnet.nn.encoders import MLPEncoder
from dmrnet.nn.fusion import ConcatFusion, MaskedMeanFusion, create_fusion

__all__ = ["ConcatFusion", "MLPEncoder", "MaskedMeanFusion", "create_fusion"]
