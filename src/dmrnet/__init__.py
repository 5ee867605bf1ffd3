"""dmrnet: multimodal learning that stays accurate when modalities are missing.

The flagship method is DMRNet (Wei et al., ECCV 2024); the common-subspace baseline and the
references live beside it behind one forward contract::

    model = dmrnet.create_model("dmrnet", modalities=["rgb", "depth"],
                                input_shapes={"rgb": (64,), "depth": (32,)}, num_classes=5)
    out = model({"rgb": x_rgb, "depth": x_depth}, availability)   # availability: (B, 2) bool
    out.logits, out.mu, out.logvar
"""

from dmrnet.batch import Batch, MultimodalCollate
from dmrnet.errors import ConfigError, DMRNetError
from dmrnet.evaluation import predict_all_subsets, subset_outputs
from dmrnet.methods import METHODS, Method, build_method, create_model, register_method
from dmrnet.methods.objectives import (
    HardCombinationRegularizer,
    KLRegularizer,
    MultimodalObjective,
    kl_divergence,
)
from dmrnet.models.late_fusion import MultimodalModel, ProbabilisticEmbedding
from dmrnet.models.protocol import ModelOutput
from dmrnet.nn import create_encoder
from dmrnet.registry import ENCODERS
from dmrnet.serving import Prediction, Predictor, load_model, save_model
from dmrnet.subsets import SubsetSampler, SubsetSpace
from dmrnet.version import __version__

__all__ = [
    "ENCODERS",
    "METHODS",
    "Batch",
    "ConfigError",
    "DMRNetError",
    "HardCombinationRegularizer",
    "KLRegularizer",
    "Method",
    "ModelOutput",
    "MultimodalCollate",
    "MultimodalModel",
    "MultimodalObjective",
    "Prediction",
    "Predictor",
    "ProbabilisticEmbedding",
    "SubsetSampler",
    "SubsetSpace",
    "__version__",
    "build_method",
    "create_encoder",
    "create_model",
    "kl_divergence",
    "load_model",
    "predict_all_subsets",
    "register_method",
    "save_model",
    "subset_outputs",
]
