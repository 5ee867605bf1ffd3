"""dmrnet: multimodal learning that stays accurate when modalities are missing.

The flagship method is DMRNet (Wei et al., ECCV 2024); the common-subspace baseline and the
references live beside it behind one forward contract::

    model = dmrnet.create_model("dmrnet", modalities=["rgb", "depth"],
                                input_shapes={"rgb": (64,), "depth": (32,)}, num_classes=5)
    out = model({"rgb": x_rgb, "depth": x_depth}, availability)   # availability: (B, 2) bool
    out.logits, out.mu, out.logvar

``import dmrnet`` is light: each public name is imported from its module when first used
(PEP 562), so the ``dmrnet`` command answers Ctrl-C while torch is still loading.
"""

import importlib
from typing import TYPE_CHECKING

from dmrnet.version import __version__

if TYPE_CHECKING:
    from dmrnet.batch import Batch, MultimodalCollate
    from dmrnet.data import DATASETS, DatasetDefaults, SplitData
    from dmrnet.errors import ConfigError, DMRNetError
    from dmrnet.evaluation import predict_all_subsets, subset_outputs
    from dmrnet.methods import (
        BOOSTERS,
        METHODS,
        Booster,
        Method,
        ObjectivePart,
        build_method,
        create_model,
        register_booster,
        register_method,
    )
    from dmrnet.methods.objectives import (
        HardCombinationRegularizer,
        KLRegularizer,
        MultimodalObjective,
        kl_divergence,
    )
    from dmrnet.models.late_fusion import MultimodalModel, ProbabilisticEmbedding
    from dmrnet.models.protocol import ModelOutput
    from dmrnet.nn import create_encoder
    from dmrnet.plugins import load_plugin
    from dmrnet.registry import ENCODERS
    from dmrnet.serving import Prediction, Predictor, load_model, save_model
    from dmrnet.subsets import SubsetSampler, SubsetSpace

_LAZY = {
    "Batch": "dmrnet.batch", "MultimodalCollate": "dmrnet.batch",
    "DATASETS": "dmrnet.data", "DatasetDefaults": "dmrnet.data", "SplitData": "dmrnet.data",
    "load_plugin": "dmrnet.plugins",
    "ConfigError": "dmrnet.errors", "DMRNetError": "dmrnet.errors",
    "predict_all_subsets": "dmrnet.evaluation", "subset_outputs": "dmrnet.evaluation",
    "METHODS": "dmrnet.methods", "Method": "dmrnet.methods", "build_method": "dmrnet.methods",
    "create_model": "dmrnet.methods", "register_method": "dmrnet.methods",
    "BOOSTERS": "dmrnet.methods", "Booster": "dmrnet.methods", "ObjectivePart": "dmrnet.methods",
    "register_booster": "dmrnet.methods",
    "HardCombinationRegularizer": "dmrnet.methods.objectives",
    "KLRegularizer": "dmrnet.methods.objectives",
    "MultimodalObjective": "dmrnet.methods.objectives",
    "kl_divergence": "dmrnet.methods.objectives",
    "MultimodalModel": "dmrnet.models.late_fusion",
    "ProbabilisticEmbedding": "dmrnet.models.late_fusion",
    "ModelOutput": "dmrnet.models.protocol", "create_encoder": "dmrnet.nn",
    "ENCODERS": "dmrnet.registry", "Prediction": "dmrnet.serving", "Predictor": "dmrnet.serving",
    "load_model": "dmrnet.serving", "save_model": "dmrnet.serving",
    "SubsetSampler": "dmrnet.subsets", "SubsetSpace": "dmrnet.subsets",
}
"""Public name -> the module that defines it (imported on first use)."""


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dmrnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BOOSTERS",
    "DATASETS",
    "ENCODERS",
    "METHODS",
    "Batch",
    "Booster",
    "ConfigError",
    "DMRNetError",
    "DatasetDefaults",
    "HardCombinationRegularizer",
    "KLRegularizer",
    "Method",
    "ModelOutput",
    "MultimodalCollate",
    "MultimodalModel",
    "MultimodalObjective",
    "ObjectivePart",
    "Prediction",
    "Predictor",
    "ProbabilisticEmbedding",
    "SplitData",
    "SubsetSampler",
    "SubsetSpace",
    "__version__",
    "build_method",
    "create_encoder",
    "create_model",
    "kl_divergence",
    "load_model",
    "load_plugin",
    "predict_all_subsets",
    "register_booster",
    "register_method",
    "save_model",
    "subset_outputs",
]
