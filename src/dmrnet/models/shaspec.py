"""ShaSpec (Wang et al., "Multi-modal Learning with Missing Modality via Shared-Specific
Feature Modelling", CVPR 2023), in this library's forward contract.

Each modality has a specific encoder and, after a per-modality input projection (so modalities
of different shapes work), one shared encoder for all. A missing modality's shared feature is
filled with the mean of the available modalities' shared features; its specific feature is
zero. Residual fusion per modality: f_m = W_m [specific_m, shared_m] + shared_m; the f_m are
concatenated and classified through the same Linear + BatchNorm embedding as the baseline.
Auxiliary losses (training only): distribution alignment of the available shared features
(mean squared distance to their mean; weight ``dao_weight``) and domain classification of the
specific features by modality (cross-entropy; weight ``dco_weight``). Defaults 0.1 and 0.02;
the paper tunes these weights per dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.batch import check_inputs, refuse_lengths
from dmrnet.errors import ConfigError
from dmrnet.models.late_fusion import ProbabilisticEmbedding
from dmrnet.models.protocol import ModelOutput
from dmrnet.nn import create_encoder
from dmrnet.nn.resnet import init_weights
from dmrnet.subsets import SubsetSpace


class ShaSpecModel(nn.Module):
    """Shared + specific encoders with mean fill-in of missing shared features.

    Args:
        modalities / input_shapes / num_classes: as every method.
        encoder / encoder_kwargs: the registry encoder used for the specific encoders and for
            the shared one (which sees the projected inputs).
        proj_dim: size of the per-modality input projection for vector inputs; image inputs
            (C, H, W) of equal H x W are projected by a 1x1 conv to ``proj_channels``.
        embed_dim: D of the (deterministic) embedding before the classifier.
    """

    def __init__(self, modalities: Sequence[str], input_shapes: Mapping[str, Sequence[int]],
                 num_classes: int, encoder: str = "mlp",
                 encoder_kwargs: Mapping[str, object] | None = None, proj_dim: int = 64,
                 proj_channels: int = 3, embed_dim: int = 256, dao_weight: float = 0.1,
                 dco_weight: float = 0.02, validate_inputs: bool = True) -> None:
        super().__init__()
        self.space = SubsetSpace(modalities)
        self.modalities = list(self.space.modalities)
        shapes = {m: tuple(int(v) for v in input_shapes[m]) for m in self.modalities}
        kinds = {len(s) for s in shapes.values()}
        kw = dict(encoder_kwargs or {})
        if kinds == {1}:
            self.proj = nn.ModuleDict({m: nn.Linear(shapes[m][0], proj_dim) for m in shapes})
            shared_shape: tuple[int, ...] = (proj_dim,)
        elif kinds == {3} and len({s[1:] for s in shapes.values()}) == 1:
            self.proj = nn.ModuleDict({m: nn.Conv2d(shapes[m][0], proj_channels, 1)
                                       for m in shapes})
            shared_shape = (proj_channels, *next(iter(shapes.values()))[1:])
        else:
            raise ConfigError("ShaSpec needs all modalities as vectors, or as images of one "
                              f"H x W (its shared encoder sees them all); got {shapes}")
        self.specific = nn.ModuleDict({m: create_encoder(encoder, shapes[m], **kw)
                                       for m in self.modalities})
        self.shared = create_encoder(encoder, shared_shape, **kw)
        dims = {int(e.out_features) for e in [*self.specific.values(), self.shared]}
        if len(dims) != 1 or any(getattr(e, "spatial", False) for e in self.specific.values()):
            raise ConfigError("ShaSpec needs vector features of one size from every encoder")
        d = dims.pop()
        self.fuse = nn.ModuleDict({m: nn.Linear(2 * d, d) for m in self.modalities})
        self.embedding = ProbabilisticEmbedding(d * len(self.modalities), embed_dim,
                                                variance=False, sample=False)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.domain = nn.Linear(d, len(self.modalities))
        self.num_classes = num_classes
        self.input_shapes = shapes
        self.dao_weight, self.dco_weight = float(dao_weight), float(dco_weight)
        self.validate_inputs = validate_inputs
        for mod in (self.proj, self.fuse, self.embedding, self.classifier, self.domain):
            init_weights(mod)

    def check(self, inputs: Mapping[str, Tensor], availability: Tensor,
              lengths: Mapping[str, Tensor] | None = None) -> None:
        refuse_lengths(lengths, "ShaSpec")
        if self.validate_inputs:
            check_inputs(inputs, availability, self.modalities, self.input_shapes,
                         dtype=self.classifier.weight.dtype)

    def encode(self, inputs: Mapping[str, Tensor], availability: Tensor | None = None,
               lengths: Mapping[str, Tensor] | None = None) -> list[list[Tensor]]:
        """Per modality: [specific (B, d), shared (B, d)]."""
        return [[self.specific[m](inputs[m]), self.shared(self.proj[m](inputs[m]))]
                for m in self.modalities]

    def encode_absent(self, inputs: Mapping[str, Tensor]) -> None:
        return None

    def forward_head(self, features: Sequence[Sequence[Tensor]], availability: Tensor,
                     absent_features: object = None) -> ModelOutput:
        avail = availability.bool()
        spec = torch.stack([f[0] for f in features], dim=1)  # (B, M, d)
        shared = torch.stack([f[1] for f in features], dim=1)
        w = avail.to(shared.dtype).unsqueeze(-1)
        mean_shared = (shared * w).sum(1) / w.sum(1).clamp_min(1.0)  # available ones only
        filled = torch.where(avail.unsqueeze(-1), shared, mean_shared.unsqueeze(1))
        spec = torch.where(avail.unsqueeze(-1), spec, torch.zeros_like(spec))
        fused = [self.fuse[m](torch.cat([spec[:, j], filled[:, j]], dim=1)) + filled[:, j]
                 for j, m in enumerate(self.modalities)]
        z, mu, _ = self.embedding(torch.cat(fused, dim=1))
        extra = None
        if self.training:
            gap = ((shared - mean_shared.unsqueeze(1)) ** 2).mean(-1)  # (B, M)
            dao = (gap * w.squeeze(-1)).sum() / w.sum().clamp_min(1.0)
            labels = torch.arange(len(self.modalities), device=spec.device).expand_as(avail)
            # every (sample, modality) row, averaged over the available ones: boolean-mask
            # indexing would put an accumulating index_put in the backward pass
            ce = F.cross_entropy(self.domain(spec).flatten(0, 1), labels.flatten(),
                                 reduction="none")
            dco = (ce * w.flatten()).sum() / w.sum().clamp_min(1.0)
            extra = {"dao": self.dao_weight * dao, "dco": self.dco_weight * dco}
        return ModelOutput(logits=self.classifier(z), mu=mu, z=z, extra_losses=extra)

    def forward(self, inputs: Mapping[str, Tensor], availability: Tensor,
                lengths: Mapping[str, Tensor] | None = None) -> ModelOutput:
        self.check(inputs, availability, lengths)
        return self.forward_head(self.encode(inputs), availability)
