"""MMANet (Wei et al., "MMANet: Margin-aware Distillation and Modality-aware Regularization for
Incomplete Multimodal Learning", CVPR 2023), in this library's forward contract.

Two stages: a full-modality teacher (the same network, trained on complete inputs: method
``full_only``), then the deployment network trained on random subsets with

- margin-aware distillation (MAD): per-sample KL between the teacher's and the student's
  softened predictions (temperature T) plus a feature term on the embedding, each sample
  weighted by 1 - |teacher margin| (margin = p_true - max p_other), normalised to mean 1, so
  samples near the teacher's decision boundary count most; weight ``distill_weight``;
- modality-aware regularisation (MAR): an exponential moving average of each subset's loss
  mines the weak subsets; a sample of subset s gets an extra CE weight
  ``mar_weight * max(0, ema_s / mean(ema) - 1)``.

Defaults: T = 2, distill_weight 1.0, feature_weight 0.1, mar_weight 0.5, momentum 0.9 (our
choices; the paper tunes its weights per dataset). ``dmrnet benchmark`` runs both stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.method import DMRNetObjective, ModelOutput
from dmrnet.subsets import subset_totals


class MMANetObjective(DMRNetObjective):
    """Task CE + MAD (needs the teacher's output) + MAR, as named terms."""

    def __init__(self, subset_names: Sequence[str], temperature: float = 2.0,
                 distill_weight: float = 1.0, feature_weight: float = 0.1,
                 mar_weight: float = 0.5, momentum: float = 0.9, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.t, self.distill_weight, self.feature_weight = temperature, distill_weight, \
            feature_weight
        self.mar_weight, self.momentum = mar_weight, momentum
        n = len(subset_names)
        self.register_buffer("subset_loss", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("subset_seen", torch.zeros(n, dtype=torch.bool))

    def forward(self, out: ModelOutput, target: Tensor, subset_index: Tensor,
                teacher: ModelOutput | None = None) -> dict[str, Tensor]:
        per_sample = self.per_sample(out.logits, target)
        terms = {"task": per_sample.mean()}
        if teacher is not None and self.distill_weight > 0:
            with torch.no_grad():
                p = teacher.logits.softmax(dim=1)
                true = p.gather(1, target[:, None]).squeeze(1)
                other = p.scatter(1, target[:, None], -1.0).max(dim=1).values
                w = 1.0 - (true - other).abs()
                w = w / w.mean().clamp_min(1e-8)
            t = self.t
            kd = F.kl_div(F.log_softmax(out.logits / t, dim=1), F.softmax(teacher.logits / t,
                          dim=1), reduction="none").sum(dim=1) * t * t
            feat = (out.z - teacher.z.detach()).pow(2).flatten(1).mean(dim=1)
            terms["mad"] = self.distill_weight * ((w * kd).mean()
                                                  + self.feature_weight * (w * feat).mean())
        if self.mar_weight > 0:
            with torch.no_grad():
                n = len(self.subset_loss)
                sums, counts = subset_totals(subset_index, per_sample, n)
                seen = counts > 0
                mean = sums[seen] / counts[seen]
                old = self.subset_loss[seen]
                first = ~self.subset_seen[seen]
                self.subset_loss[seen] = torch.where(
                    first, mean, self.momentum * old + (1 - self.momentum) * mean)
                self.subset_seen |= seen
                ema = self.subset_loss[self.subset_seen]
                extra = (self.subset_loss / ema.mean().clamp_min(1e-12) - 1).clamp_min(0)
                weight = (self.mar_weight * extra[subset_index]).to(per_sample.dtype)
            terms["mar"] = (weight * per_sample).mean()
        terms["loss"] = sum(terms.values())  # type: ignore[assignment]
        return terms


def load_teacher(path: str) -> nn.Module:
    """The frozen full-modality teacher's network from a checkpoint (``weights_only``)."""
    from dmrnet.predict import load_module

    teacher = load_module(path).model
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
