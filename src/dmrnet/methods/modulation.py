"""On-the-fly gradient modulation with generalisation enhancement (OGM-GE), a booster of
DMRNet's family (baseline + X, dmrnet + X), from Peng et al., "Balanced Multimodal Learning
via On-the-fly Gradient Modulation", CVPR 2022.

In joint training the modality that explains the labels best (the dominant one) dominates the
gradient and the others under-train. After each backward pass OGM-GE measures each modality's
confidence s_m (the mean softmax probability of the true class from that modality alone) and
slows the dominant modality's encoder:

    rho_m = s_m / mean_{n != m} s_n            (the paper's s_a / s_v for M = 2)
    k_d   = 1 - tanh(alpha * rho_d)            for d = argmax rho, when rho_d > 1 (Eq. 10)
    grad  <- k_m * grad + N(0, std(grad)^2)    every encoder weight (GE: the noise)

Where our reading departs from the two-modality original, and why:

- M modalities: rho against the mean of the others, and only the most dominant encoder is
  slowed (as in AGM's three-modality version of the authors' code);
- the per-modality confidence: the paper splits a linear classifier over concatenated
  features (W_m h_m + b/2), which a fused embedding does not allow. The unimodal heads give
  it (:class:`~dmrnet.models.late_fusion.MultimodalModel`'s ``unimodal_heads``): trained with
  ``unimodal_weight`` when that booster is on, else as probes on detached features, which
  measure the encoders without training them;
- samples train on random subsets: s_m averages over the samples that have m;
- noise: on every weight tensor (matrices and kernels; the original's ResNets: every 4-d
  kernel) of each modality's encoder, with each tensor's gradient standard deviation. The
  draws come from a generator seeded per step, so every process of a distributed run adds the
  same noise to the same (all-reduced) gradients.

Plain PyTorch: the training glue calls :meth:`GradientModulation.modulate` between backward and
the optimiser step, through the objective's ``adjust_gradients`` hook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dmrnet.errors import COUNT, NON_NEGATIVE, ConfigError, require
from dmrnet.methods.base import ModelConfig, ObjectivePart, Reduce, TermContext
from dmrnet.methods.boosters import Booster, dense_unsupported, group_of, register_booster
from dmrnet.methods.heads import HeadsOptions
from dmrnet.methods.objectives import unimodal_loss
from dmrnet.methods.teachers import modality_encoder
from dmrnet.models.protocol import ModelOutput
from dmrnet.subsets import SubsetSpace


class GradientModulation(ObjectivePart):
    """OGM-GE's state: the confidences seen since the last step, and the noise's seed. As a
    part of an objective it reads the unimodal heads' confidences in each step, trains them
    as probes ("probe" term, on detached features) where nothing else trains them
    (``probe``), and modulates the encoders' gradients after backward.

    Args:
        modalities: the M modality names, in order.
        alpha: the modulation strength (authors: 0.1 to 0.8; 0 keeps the gradients).
        noise: add GE's Gaussian noise.
        epochs: modulate in the first this many epochs (0: in every epoch).
        probe: add the heads' task loss as the "probe" term.
    """

    name = "modulation"

    def __init__(self, modalities: Sequence[str], alpha: float, noise: bool = True,
                 epochs: int = 0, probe: bool = False) -> None:
        super().__init__()
        self.probe = bool(probe)
        self.modalities = list(modalities)
        self.alpha, self.noise, self.epochs = float(alpha), bool(noise), int(epochs)
        m = len(self.modalities)
        self.register_buffer("score_sum", torch.zeros(m, dtype=torch.float64), persistent=False)
        self.register_buffer("score_count", torch.zeros(m, dtype=torch.float64),
                             persistent=False)
        # the noise generator's seed, drawn from the run's seed, and the steps taken: saved,
        # so that a resumed run draws the noise an uninterrupted one would
        self.register_buffer("seed", torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        if out.modality_logits is None:
            return {}
        terms = {"probe": unimodal_loss(out, target, ctx.loss)} if self.probe else {}
        if out.modality_mask is not None:
            self.observe_heads(out.modality_logits, out.modality_mask, target)
        return terms

    def adjust_gradients(self, network: nn.Module, epoch: int, reduce: Reduce
                         ) -> dict[str, float]:
        """The modulation, logged as ``ogm_coefficient/<modality>``."""
        k = self.modulate(network, epoch, reduce)
        return {f"ogm_coefficient/{m}": v for m, v in k.items()}

    @torch.no_grad()
    def observe_heads(self, modality_logits: Tensor, mask: Tensor, target: Tensor) -> None:
        """Add a batch's per-modality confidences. Shapes: (B, M, K), (B, M) bool, (B,)."""
        prob = modality_logits.float().softmax(dim=-1)
        true = prob.gather(2, target.view(-1, 1, 1).expand(-1, prob.shape[1], 1))[..., 0]
        m = mask.to(true.dtype)
        self.score_sum += (true * m).sum(dim=0).to(self.score_sum)
        self.score_count += m.sum(dim=0).to(self.score_count)

    def coefficients(self, scores: Tensor, seen: Tensor) -> Tensor:
        """k per modality (M,) from the confidences (M,) of the modalities ``seen`` (M,) bool:
        1 except the dominant modality's 1 - tanh(alpha * rho) when rho > 1."""
        k = torch.ones_like(scores)
        if int(seen.sum()) < 2:
            return k
        s = scores.masked_fill(~seen, 0.0)
        others = (s.sum() - s) / (seen.sum() - seen.to(s.dtype)).clamp_min(1)
        rho = torch.where(seen, s / others.clamp_min(1e-12), torch.zeros_like(s))
        d = int(torch.argmax(rho))
        if float(rho[d]) > 1:
            k[d] = 1 - math.tanh(self.alpha * float(rho[d]))
        return k

    @torch.no_grad()
    def modulate(self, network: nn.Module, epoch: int, reduce: Reduce) -> dict[str, float]:
        """Scale each encoder's gradients by its k and add the noise (call after backward,
        before the optimiser step). Returns k per modality name, for the logs ({} outside
        the modulation epochs)."""
        if self.epochs and epoch >= self.epochs:  # past the window: no collective either
            self.score_sum.zero_()
            self.score_count.zero_()
            return {}
        total, count = reduce(self.score_sum.clone()), reduce(self.score_count.clone())
        self.score_sum.zero_()
        self.score_count.zero_()
        total, count = total.cpu(), count.cpu()  # M numbers: one device sync per step
        k = self.coefficients(total / count.clamp_min(1), count > 0).tolist()
        seed = int(self.seed + self.steps) % 2**63
        generators: dict[torch.device, torch.Generator] = {}
        for factor, m in zip(k, self.modalities, strict=True):
            for p in modality_encoder(network, m).parameters():
                if p.grad is None:
                    continue
                noise = None
                if self.noise and p.grad.dim() >= 2:
                    device = p.grad.device
                    if device not in generators:
                        generators[device] = torch.Generator(device=device).manual_seed(seed)
                    noise = torch.randn(p.grad.shape, generator=generators[device],
                                        device=device, dtype=p.grad.dtype)
                    noise.mul_(p.grad.std() + 1e-8)
                if factor != 1:
                    p.grad.mul_(factor)
                if noise is not None:
                    p.grad.add_(noise)
        self.steps += 1
        return dict(zip(self.modalities, k, strict=True))


@dataclass
class OGMOptions:
    """ogm_alpha: alpha of on-the-fly gradient modulation, which slows the dominant
    modality's encoder (0: off; Peng et al., CVPR 2022: OGM-GE); ogm_noise: add its
    generalisation-enhancing gradient noise; ogm_epochs: modulate in the first this many
    epochs (0: all)."""

    ogm_alpha: float = 0.0
    ogm_noise: bool = True
    ogm_epochs: int = 0

    def __post_init__(self) -> None:
        require("ogm_alpha", self.ogm_alpha, NON_NEGATIVE)
        require("ogm_epochs", self.ogm_epochs, COUNT)
        if not isinstance(self.ogm_noise, bool):
            raise ConfigError(f"ogm_noise must be true or false; got {self.ogm_noise!r}")


@register_booster
class OGM(Booster):
    """OGM-GE on the network's unimodal heads (probes trained on detached features when the
    heads booster does not train them)."""

    name = "ogm"
    description = "on-the-fly gradient modulation of the dominant modality (OGM-GE)"
    Options = OGMOptions

    def _heads_trained(self, options: Any) -> bool:
        heads = group_of(options, HeadsOptions)
        return heads is not None and heads.unimodal_weight > 0

    def check(self, options: Any, config: ModelConfig) -> None:
        if config.network.architecture == "dense" and self.read(options).ogm_alpha > 0:
            raise dense_unsupported("ogm_alpha")

    def network(self, options: Any, config: ModelConfig) -> dict[str, Any]:
        if self.read(options).ogm_alpha <= 0:
            return {}
        return {"unimodal_heads": True, "probe_heads": not self._heads_trained(options)}

    def parts(self, options: Any, config: ModelConfig, names: Sequence[str]
              ) -> list[ObjectivePart]:
        own = self.read(options)
        if own.ogm_alpha <= 0:
            return []
        return [GradientModulation(SubsetSpace(config.modalities).modalities, own.ogm_alpha,
                                   own.ogm_noise, int(own.ogm_epochs),
                                   probe=not self._heads_trained(options))]
