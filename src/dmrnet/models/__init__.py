"""Networks: the forward contract (:mod:`~dmrnet.models.protocol`) and its implementations,
late fusion (DMRNet's family), dense prediction (segmentation) and ShaSpec's shared-specific
network. Plain PyTorch."""

from dmrnet.models.dense import DenseMultimodalModel
from dmrnet.models.late_fusion import MultimodalModel, ProbabilisticEmbedding
from dmrnet.models.protocol import ModelOutput, MultimodalNetwork
from dmrnet.models.shaspec import ShaSpecModel

__all__ = ["DenseMultimodalModel", "ModelOutput", "MultimodalModel", "MultimodalNetwork",
           "ProbabilisticEmbedding", "ShaSpecModel"]
