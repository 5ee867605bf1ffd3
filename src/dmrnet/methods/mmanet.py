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
choices; the paper tunes its weights per dataset). A run has two stages (teacher, then
student); ``dmrnet benchmark`` trains both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.batch import Batch
from dmrnet.errors import ConfigError, local_checkpoint
from dmrnet.methods.base import (
    Method,
    ModelConfig,
    ObjectivePart,
    Stage,
    TermContext,
    TrainingContext,
    checkpoint_network,
    drop_settings,
    register_method,
)
from dmrnet.methods.dmrnet import late_fusion_network
from dmrnet.methods.objectives import MultimodalObjective
from dmrnet.models.protocol import ModelOutput
from dmrnet.subsets import subset_totals


class MarginAwareDistillation(ObjectivePart):
    """MAD, the "mad" term: the teacher's softened predictions distilled into the student's,
    and its embedding into the student's, each sample weighted by 1 - |teacher margin|
    (normalised to mean 1). Needs the teacher's output (``teacher`` in the training
    context)."""

    name = "mad"

    def __init__(self, temperature: float = 2.0, weight: float = 1.0,
                 feature_weight: float = 0.1) -> None:
        super().__init__()
        self.t, self.weight, self.feature_weight = temperature, weight, feature_weight

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        teacher = ctx.extra.get("teacher")
        if teacher is None or self.weight <= 0:
            return {}
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
        return {"mad": self.weight * ((w * kd).mean() + self.feature_weight * (w * feat).mean())}


class ModalityAwareRegularization(ObjectivePart):
    """MAR, the "mar" term: a moving average of each subset's training loss (momentum
    ``momentum``) mines the weak subsets; a sample of subset s gets the extra CE weight
    ``weight * max(0, ema_s / mean(ema) - 1)``. The averages are buffers (saved)."""

    name = "mar"
    legacy_keys = ("subset_loss", "subset_seen")  # on the objective itself in dmrnet <= 0.2

    def __init__(self, subset_names: Sequence[str], weight: float = 0.5,
                 momentum: float = 0.9) -> None:
        super().__init__()
        self.weight, self.momentum = weight, momentum
        n = len(subset_names)
        self.register_buffer("subset_loss", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("subset_seen", torch.zeros(n, dtype=torch.bool))

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        if self.weight <= 0:
            return {}
        per_sample, subset_index = ctx.per_sample, ctx.subset_index
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
            weight = (self.weight * extra[subset_index]).to(per_sample.dtype)
        return {"mar": (weight * per_sample).mean()}


log = logging.getLogger("dmrnet")
_SAID: set[str] = set()  # the teacher checkpoints warned about (once a process)


class TeacherContext(TrainingContext):
    """The frozen teacher's outputs on what each sample has (all its modalities)."""

    def __init__(self, checkpoint: str, modalities: Sequence[str] | None = None,
                 num_classes: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.modalities = None if modalities is None else list(modalities)
        self.num_classes = num_classes
        self.network: nn.Module | None = None

    def setup(self) -> None:
        if self.network is None:
            network = checkpoint_network(self.checkpoint)
            has = (list(getattr(network, "modalities", [])), getattr(network, "num_classes", None))
            want = (self.modalities or has[0], self.num_classes or has[1])
            if has != want:
                raise ConfigError(f"the teacher {self.checkpoint!r} is a model of {has[0]} with "
                                  f"{has[1]} classes, not of {want[0]} with {want[1]}: give a "
                                  "full_only checkpoint of this data (or leave "
                                  "teacher_checkpoint out: the benchmark trains one)")
            for p in network.parameters():
                p.requires_grad_(False)
            self.network = network.eval()

    def __call__(self, batch: Batch, device: Any) -> dict[str, Any]:
        self.setup()
        assert self.network is not None
        self.network.to(device)
        with torch.no_grad():
            return {"teacher": self.network(batch.inputs, batch.availability,
                                            batch.lengths_or_none)}


@register_method
class MMANet(Method):
    name = "mmanet"
    description = "MMANet (CVPR 2023): teacher distillation + weak-subset mining"

    @dataclass
    class Options:
        """temperature, distill_weight, feature_weight (MAD), mar_weight, momentum (MAR);
        teacher_checkpoint: the trained teacher (the benchmark fills it in)."""

        temperature: float = 2.0
        distill_weight: float = 1.0
        feature_weight: float = 0.1
        mar_weight: float = 0.5
        momentum: float = 0.9
        teacher_checkpoint: str | None = None

    def serving_kwargs(self, method_kwargs: Mapping[str, object] | None
                       ) -> dict[str, object] | None:
        """A trained student serves without its teacher: the path is not stored."""
        if method_kwargs is None:
            return None
        return {k: v for k, v in method_kwargs.items() if k != "teacher_checkpoint"}

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        opts = self.options(config.method_kwargs)
        model = late_fusion_network(config, variance=False, sample=False)
        objective = MultimodalObjective(
            [MarginAwareDistillation(opts.temperature, opts.distill_weight, opts.feature_weight),
             ModalityAwareRegularization(model.space.names, opts.mar_weight, opts.momentum)],
            label_smoothing=config.label_smoothing, class_weights=config.class_weights)
        return model, objective

    def training_context(self, config: ModelConfig, network: nn.Module) -> TeacherContext:
        path = self.options(config.method_kwargs).teacher_checkpoint
        if path is None:
            raise ConfigError("method 'mmanet' needs method_kwargs.teacher_checkpoint: a "
                              "full_only model's checkpoint (dmrnet benchmark trains it for "
                              "you)")
        return TeacherContext(path, getattr(network, "modalities", None),
                              getattr(network, "num_classes", None))

    def stages(self, settings: Mapping[str, Any], modalities: Sequence[str]) -> list[Stage]:
        """A full_only teacher on complete inputs, then the student distilled from it; with
        ``teacher_checkpoint`` given, the student of that teacher only."""
        given = (settings.get("method_kwargs") or {}).get("teacher_checkpoint")
        if given is not None:
            local_checkpoint(given, "mmanet teacher_checkpoint")
            if given not in _SAID:
                _SAID.add(given)
                log.warning("mmanet distils from the teacher_checkpoint given (%s), the same "
                            "for every seed: if it was trained on another split of this data, "
                            "it has seen test samples and the scores are optimistic", given)
            return [Stage("", {**settings, "method": self.name})]
        teacher = {**drop_settings(settings, "subset_weights", "method_kwargs"),
                   "method": "full_only"}
        return [Stage("teacher", teacher),
                Stage("", {**settings, "method": self.name},
                      needs={"method_kwargs.teacher_checkpoint": "teacher"})]
