"""ShaSpec (Wang et al., CVPR 2023) as a method: its network
(:class:`~dmrnet.models.shaspec.ShaSpecModel`, with its auxiliary losses) and the task loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dmrnet.errors import ConfigError
from dmrnet.methods.base import Method, ModelConfig, register_method
from dmrnet.methods.objectives import MultimodalObjective
from dmrnet.models.shaspec import ShaSpecModel


@register_method
class ShaSpec(Method):
    name = "shaspec"
    description = "ShaSpec (CVPR 2023): shared + specific encoders"

    @dataclass
    class Options:
        """proj_dim / proj_channels: the per-modality input projection before the shared
        encoder (vectors / images); dao_weight, dco_weight: the distribution-alignment and
        domain-classification loss weights (the paper tunes them per dataset)."""

        proj_dim: int = 64
        proj_channels: int = 3
        dao_weight: float = 0.1
        dco_weight: float = 0.02

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        opts = self.options(config.method_kwargs)
        net = config.network
        if config.sequences:
            raise ConfigError(f"shaspec reads fixed-size inputs (its shared encoder takes every "
                              f"modality), but {config.sequences[0]!r} holds variable-length "
                              "sequences; use a late-fusion method (dmrnet, baseline, ...)")
        model = ShaSpecModel(config.modalities, config.input_shapes, config.num_classes,
                             encoder=net.encoder, encoder_kwargs=net.encoder_kwargs,
                             embed_dim=net.embed_dim, proj_dim=opts.proj_dim,
                             proj_channels=opts.proj_channels, dao_weight=opts.dao_weight,
                             dco_weight=opts.dco_weight)
        return model, MultimodalObjective(label_smoothing=config.label_smoothing,
                                      class_weights=config.class_weights)
