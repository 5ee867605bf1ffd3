"""The losses of DMRNet's family (task CE, alpha * KL, beta * HCR, deep supervision), from
Wei et al., "Robust Multimodal Learning via Representation Decoupling", ECCV 2024:

    loss = task + alpha * KL(N(mu, sigma^2) || N(0, I)) + beta * HCR

The hard combination regulariser (HCR) accumulates each subset's mean variance during a warm-up,
marks the highest-variance subsets as hard, and from then on adds beta * CE on their samples.
Plain PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.errors import ConfigError
from dmrnet.methods.base import Objective, Reduce, Selection
from dmrnet.models.protocol import ModelOutput
from dmrnet.subsets import SEP, subset_totals


def kl_divergence(mu: Tensor, logvar: Tensor, spatial: str = "sum") -> Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) = 0.5 * sum_d (sigma^2 + mu^2 - log sigma^2 - 1).

    Summed over channels; for maps (B, C, H, W), ``spatial="sum"`` also sums over pixels (the
    classification recipe) and ``"mean"`` averages over them (per-pixel KL, the dense recipe).
    Averaged over the batch. Returns a float32 scalar that carries gradient (computed in
    float32 even under autocast, where exp and the sums lose precision in half types).
    """
    mu, logvar = mu.float(), logvar.float()
    per_elem = 0.5 * (logvar.exp() + mu.pow(2) - logvar - 1.0)
    per_pos = per_elem.sum(dim=1)  # (B[, H, W])
    if per_pos.dim() > 1:
        per_pos = per_pos.flatten(1)
        per_pos = per_pos.sum(dim=1) if spatial == "sum" else per_pos.mean(dim=1)
    return per_pos.mean()


class KLRegularizer(nn.Module):
    """alpha * KL, averaged over the batch (see :func:`kl_divergence`)."""

    def __init__(self, weight: float = 1e-3, spatial: str = "sum") -> None:
        super().__init__()
        if spatial not in ("sum", "mean"):
            raise ConfigError(f"spatial must be 'sum' or 'mean'; got {spatial!r}")
        self.weight = float(weight)
        self.spatial = spatial

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return self.weight * kl_divergence(mu, logvar, self.spatial)


class HardCombinationRegularizer(nn.Module):
    """Up-weights the samples of hard modality subsets, found by their embedding variance.

    During the first ``warmup_epochs`` epochs, :meth:`accumulate` sums each subset's per-sample
    mean sigma^2. At the end of warm-up, :meth:`end_epoch` marks the ``top_k`` subsets with the
    largest mean variance as hard (or the user's ``hard_subsets``, if given). From then on
    ``forward`` returns beta * (1/B) * sum over hard-subset samples of their task loss.

    The state is kept in buffers, so it is saved with checkpoints and survives a resume. For
    multi-process training, sum ``variance_sum`` and ``variance_count`` over processes before
    :meth:`end_epoch` (the Lightning glue does).

    Args:
        subset_names: names of all S subsets, in subset-index order.
        beta: weight of the extra loss (authors: 0.2 CREMA-D, 0.3 Kinetics-Sounds, 0.7 CASIA-SURF).
        warmup_epochs: epochs of variance accumulation before selection (authors: about 5).
        top_k: how many subsets are hard when chosen by variance.
        candidates: which subsets may be chosen by variance: "unimodal" (the authors' rule: with
            two modalities they compare the two single-modality subsets) or "all".
        hard_subsets: a fixed list of subset names instead of the variance ranking.
    """

    def __init__(
        self,
        subset_names: Sequence[str],
        beta: float = 0.2,
        warmup_epochs: int = 5,
        top_k: int = 1,
        candidates: str = "unimodal",
        hard_subsets: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.subset_names = list(subset_names)
        num = len(self.subset_names)
        if candidates not in ("unimodal", "all"):
            raise ConfigError(f"candidates must be 'unimodal' or 'all'; got {candidates!r}")
        is_candidate = [candidates == "all" or SEP not in n for n in self.subset_names]
        num_candidates = sum(is_candidate)
        if warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0; got {warmup_epochs}")
        if not 1 <= top_k <= num_candidates:
            raise ConfigError(
                f"top_k must be in 1..{num_candidates} (the number of {candidates} subsets); "
                f"got {top_k}"
            )
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.top_k = int(top_k)
        self.fixed: list[int] | None = None
        if hard_subsets is not None:
            unknown = [s for s in hard_subsets if s not in self.subset_names]
            if unknown:
                raise ConfigError(
                    f"hard subset {unknown[0]!r} is not a subset name; write members in "
                    f"modality order joined by '+', e.g. {self.subset_names[-1]!r}"
                )
            if not hard_subsets:
                raise ConfigError("hard_subsets is empty; give at least one name or None")
            self.fixed = [self.subset_names.index(s) for s in hard_subsets]
        if self.fixed is None and self.warmup_epochs == 0:
            raise ConfigError(
                "choosing hard subsets by variance needs at least one warm-up epoch; set "
                "warmup_epochs >= 1 or give hard_subsets"
            )
        self.register_buffer("variance_sum", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("variance_count", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("hard", torch.zeros(num, dtype=torch.bool))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self.register_buffer("candidate", torch.tensor(is_candidate), persistent=False)

    @property
    def warming_up(self) -> bool:
        return not bool(self.active)

    @property
    def hard_names(self) -> list[str]:
        return [n for n, h in zip(self.subset_names, self.hard.tolist(), strict=True) if h]

    def mean_variance(self) -> dict[str, float]:
        """Accumulated mean sigma^2 per subset (NaN where a subset had no sample)."""
        mean = self.variance_sum / self.variance_count.clamp_min(1)
        mean[self.variance_count == 0] = math.nan
        return dict(zip(self.subset_names, mean.tolist(), strict=True))

    @torch.no_grad()
    def accumulate(self, subset_index: Tensor, variance: Tensor) -> None:
        """Add per-sample mean variances (B,) to their subsets' sums; no-op after warm-up."""
        if not self.warming_up:
            return
        idx = subset_index.to(self.variance_sum.device)
        sums, counts = subset_totals(idx, variance.to(idx.device), len(self.subset_names))
        self.variance_sum += sums
        self.variance_count += counts

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> bool:
        """Call after each training epoch (0-based). Returns True when the hard set was chosen."""
        if not self.warming_up or epoch + 1 < self.warmup_epochs:
            return False
        self.select()
        return True

    @torch.no_grad()
    def select(self) -> list[str]:
        """Choose the hard subsets now and switch the regulariser on."""
        self.hard.zero_()
        if self.fixed is not None:
            self.hard[self.fixed] = True
        else:
            mean = self.variance_sum / self.variance_count.clamp_min(1)
            mean[self.variance_count == 0] = -math.inf  # never seen: cannot be judged hard
            mean[~self.candidate] = -math.inf
            self.hard[torch.topk(mean, self.top_k).indices] = True
        self.active.fill_(True)
        return self.hard_names

    def forward(self, per_sample_loss: Tensor, subset_index: Tensor) -> Tensor:
        """beta * (1/B) * sum_{i: subset_i hard} loss_i; zero during warm-up. Shapes (B,), (B,)."""
        if self.warming_up or self.beta == 0:
            return per_sample_loss.new_zeros(())
        is_hard = self.hard.to(subset_index.device)[subset_index]
        return self.beta * (per_sample_loss * is_hard).sum() / per_sample_loss.shape[0]


IGNORE_INDEX = 255
"""Target value of pixels that carry no label (void); ignored by losses and metrics."""


class MultimodalObjective(Objective):
    """Sums the named loss terms: task CE + alpha * KL + beta * HCR (+ deep supervision).

    ``forward`` returns a dict of weighted terms ("task", and "kl" / "hcr" / "side" where
    enabled) and their sum under "loss". Terms a method does not use are absent. For dense
    targets (B, H, W) a sample's loss is the mean over its labelled pixels; ``class_weights``
    (K,) weight the classes (e.g. median frequency). The HCR term uses the model's auxiliary
    predictor when it has one (``aux_logits``), else the main logits.
    """

    def __init__(
        self,
        kl: KLRegularizer | None = None,
        hcr: HardCombinationRegularizer | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.kl = kl
        self.hcr = hcr
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.tensor(list(class_weights)).float()
        self.register_buffer("class_weights", weights)

    def start(self) -> Selection | None:
        """A fixed list of hard subsets with no warm-up is chosen before the first step."""
        hcr = self.hcr
        if hcr is not None and hcr.warming_up and hcr.warmup_epochs == 0:
            return Selection(hcr.select())
        return None

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Selection | None:
        """At the end of HCR's warm-up: the hard subsets, chosen from the variances summed
        over every process."""
        hcr = self.hcr
        if hcr is None or not hcr.warming_up or epoch + 1 < hcr.warmup_epochs:
            return None
        for buf in (hcr.variance_sum, hcr.variance_count):
            buf.copy_(reduce(buf))
        variance = hcr.mean_variance()
        return Selection(hcr.select(), variance)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        """(B,) loss per sample; dense losses are averaged over each sample's labelled pixels."""
        if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
            target = F.interpolate(target[:, None].float(), size=logits.shape[-2:],
                                   mode="nearest")[:, 0].long()
        loss = F.cross_entropy(logits, target, weight=self.class_weights, reduction="none",
                               ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)
        if loss.dim() > 1:
            valid = (target != self.ignore_index).flatten(1).sum(dim=1).clamp_min(1)
            loss = loss.flatten(1).sum(dim=1) / valid
        return loss

    def forward(self, out: ModelOutput, target: Tensor, subset_index: Tensor) -> dict[str, Tensor]:
        per_sample = self.per_sample(out.logits, target)
        terms = {"task": per_sample.mean()}
        if out.side_logits:
            terms["side"] = sum(self.per_sample(s, target).mean() for s in out.side_logits)
        if out.extra_losses:
            terms.update(out.extra_losses)
        if self.kl is not None and self.kl.weight > 0 and out.logvar is not None:
            terms["kl"] = self.kl(out.mu, out.logvar)
        if self.hcr is not None:
            if out.logvar is not None:
                self.hcr.accumulate(subset_index, out.variance)
            if self.hcr.beta > 0:
                hard_loss = (per_sample if out.aux_logits is None
                             else self.per_sample(out.aux_logits, target))
                terms["hcr"] = self.hcr(hard_loss, subset_index)
        terms["loss"] = sum(terms.values())  # type: ignore[assignment]
        return terms
