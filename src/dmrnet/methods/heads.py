"""Unimodal heads, a booster of DMRNet's family (baseline + X, dmrnet + X): a linear classifier
per modality on its encoder's pooled features, trained with the fused head, optionally the
encoders' only teacher, optionally voting with the fused head at evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dmrnet.errors import NON_NEGATIVE, ConfigError, require
from dmrnet.methods.base import ModelConfig, ObjectivePart, TermContext
from dmrnet.methods.boosters import Booster, dense_unsupported, register_booster
from dmrnet.methods.objectives import unimodal_loss
from dmrnet.models.protocol import ModelOutput


@dataclass
class HeadsOptions:
    """unimodal_weight: lambda of the unimodal auxiliary heads, whose task loss (over each
    sample's available modalities) is added x lambda (0: no heads; Du et al., ICML 2023:
    UMT/UME). unimodal_detach: the fused head's gradient does not reach the encoders, which
    learn from their unimodal heads only (DGL, Wei et al., ECCV 2024). unimodal_ensemble: w > 0:
    at evaluation the heads vote with the fused head, logits = log p_fused + w x sum of the
    available modalities' log p_m (Du et al.'s UME; see ``MultimodalModel``'s
    ensemble_weight)."""

    unimodal_weight: float = 0.0
    unimodal_detach: bool = False
    unimodal_ensemble: float = 0.0

    def __post_init__(self) -> None:
        require("unimodal_ensemble", self.unimodal_ensemble, NON_NEGATIVE)
        require("unimodal_weight", self.unimodal_weight, NON_NEGATIVE)
        if not isinstance(self.unimodal_detach, bool):
            raise ConfigError(f"unimodal_detach must be true or false; got "
                              f"{self.unimodal_detach!r}")
        if self.unimodal_detach and self.unimodal_weight == 0:
            raise ConfigError("unimodal_detach needs unimodal_weight > 0 (the heads are the "
                              "encoders' only teacher then)")
        if self.unimodal_ensemble > 0 and self.unimodal_weight == 0:
            raise ConfigError("unimodal_ensemble needs unimodal_weight > 0 (untrained heads "
                              "would vote); set both")


class UnimodalHeadsLoss(ObjectivePart):
    """The "unimodal" term: lambda x the heads' mean task loss over every (sample, modality
    it has)."""

    name = "unimodal"

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        if out.modality_logits is None or self.weight <= 0:
            return {}
        return {"unimodal": self.weight * unimodal_loss(out, target, ctx.loss)}


@register_booster
class UnimodalHeads(Booster):
    name = "unimodal_heads"
    description = "a classifier per modality, trained with the fused head (and voting)"
    Options = HeadsOptions

    def check(self, options: Any, config: ModelConfig) -> None:
        own = self.read(options)
        if config.network.architecture == "dense":
            for option in ("unimodal_weight", "unimodal_ensemble"):
                if getattr(own, option) > 0:
                    raise dense_unsupported(option)

    def network(self, options: Any, config: ModelConfig) -> dict[str, Any]:
        own = self.read(options)
        return {"unimodal_heads": own.unimodal_weight > 0,
                "detach_fused": bool(own.unimodal_detach),
                "ensemble_weight": float(own.unimodal_ensemble)}

    def parts(self, options: Any, config: ModelConfig, names: Sequence[str]
              ) -> list[ObjectivePart]:
        weight = self.read(options).unimodal_weight
        return [UnimodalHeadsLoss(weight)] if weight > 0 else []
