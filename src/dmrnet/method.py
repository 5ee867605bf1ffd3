"""DMRNet's whole mechanism (Wei et al., "Robust Multimodal Learning via Representation
Decoupling", ECCV 2024), and the common-subspace baseline, which is the same model with flags off.

    x_m --encoder_m--> f_m --(zero where missing)--> fuse --> h
    h --> mu = BN(W_mu h),  logvar = BN(W_v h)
    train: z = mu + eps * exp(logvar / 2);  eval: z = mu
    z --> predictor g

    loss = task + alpha * KL(N(mu, sigma^2) || N(0, I)) + beta * HCR

The hard combination regulariser (HCR) accumulates each subset's mean variance during a warm-up,
marks the highest-variance subsets as hard, and from then on adds beta * CE on their samples.
Plain PyTorch: nothing here knows about files, Lightning or the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.batch import check_inputs
from dmrnet.errors import ConfigError
from dmrnet.nn.fusion import create_fusion, zero_missing
from dmrnet.nn.resnet import init_weights
from dmrnet.subsets import SEP, SubsetSpace, subset_totals


@dataclass
class ModelOutput:
    """What every method returns.

    Attributes:
        logits: (B, K) class scores (or (B, K, H, W) for dense tasks).
        mu: (B, D) embedding mean.
        logvar: (B, D) embedding log-variance; None for methods without a variance head.
        z: (B, D) the representation the predictor saw (a sample in training, mu otherwise).
        aux_logits: an auxiliary predictor's output for the HCR term (dense models), or None.
        side_logits: deep-supervision outputs at lower resolutions (training only), or None.
        extra_losses: a method's own auxiliary loss terms, already weighted (training only).
    """

    logits: Tensor
    mu: Tensor
    logvar: Tensor | None = None
    z: Tensor | None = None
    aux_logits: Tensor | None = None
    side_logits: list[Tensor] | None = None
    extra_losses: dict[str, Tensor] | None = None

    @property
    def variance(self) -> Tensor | None:
        """Per-sample mean of sigma^2 over every non-batch axis, (B,); None without a head."""
        if self.logvar is None:
            return None
        return self.logvar.float().exp().flatten(1).mean(dim=1)


class ProbabilisticEmbedding(nn.Module):
    """Gaussian embedding of the fused representation.

    mu and logvar are each a Linear + BatchNorm1d (vectors) or a 1x1 Conv + BatchNorm2d (maps).
    ``forward(h)`` returns ``(z, mu, logvar)``: z is one reparameterised sample when ``sample``
    and the module is training, else mu. With ``variance=False`` there is no logvar head (the
    baseline's deterministic embedding) and logvar is None.

    Shapes: h (B, C_in[, H, W]) -> z, mu, logvar (B, C_out[, H, W]).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        variance: bool = True,
        sample: bool = True,
        spatial: bool = False,
    ) -> None:
        super().__init__()
        if sample and not variance:
            raise ConfigError("sampling needs the variance head: set variance=True")

        def head() -> nn.Module:
            if spatial:
                return nn.Sequential(
                    nn.Conv2d(in_features, out_features, 1), nn.BatchNorm2d(out_features)
                )
            return nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features))

        self.mu = head()
        self.logvar = head() if variance else None
        self.sample = sample
        self.out_features = out_features

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        mu = self.mu(h)
        logvar = self.logvar(h) if self.logvar is not None else None
        if self.training and self.sample and logvar is not None:
            # exp of a bf16/fp16 log-variance under autocast loses most of its precision
            std = torch.exp(0.5 * logvar.float())
            z = (mu.float() + torch.randn_like(std) * std).to(mu.dtype)
        else:
            z = mu
        return z, mu, logvar


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


class MultimodalModel(nn.Module):
    """Encoders -> zero missing -> fusion -> (probabilistic) embedding -> classifier.

    The forward contract shared by every method: ``model(inputs, availability)`` with
    ``inputs`` a dict modality -> (B, *shape) and ``availability`` (B, M) bool, returning a
    :class:`ModelOutput`. ``encode`` and ``forward_head`` split it so that evaluation can run the
    encoders once and reuse their features for every subset.

    Args:
        modalities: the M modality names, in order.
        encoders: modality -> encoder module with an ``out_features`` attribute.
        num_classes: K.
        embed_dim: D, the embedding size.
        fusion: "concat" (default) or "mean" (masked mean of the available features).
        variance: build the logvar head (DMRNet); False = deterministic embedding (baseline).
        sample: draw z ~ N(mu, sigma^2) in training (DMRNet); False = z = mu always.
        missing_at: "feature" (zero an absent modality's features after its encoder; default)
            or "input" (zero its input; the encoder sees zeros).
        input_shapes: per-modality shape without the batch axis, checked on every forward.
        validate_inputs: check names, shapes and NaN/inf of each batch (cheap; on by default).
        trunk: shared layers between fusion and the embedding (mid-level fusion), or None.
        spatial: the encoders give maps (B, C, H, W): fusion, trunk and embedding work on maps
            (1x1 Conv + BatchNorm2d heads) and the classifier pools before its linear layer.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        embed_dim: int = 256,
        fusion: str = "concat",
        variance: bool = True,
        sample: bool = True,
        missing_at: str = "feature",
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        validate_inputs: bool = True,
        trunk: nn.Module | None = None,
        spatial: bool = False,
    ) -> None:
        super().__init__()
        self.space = SubsetSpace(modalities)
        self.modalities = list(self.space.modalities)
        missing = [m for m in self.modalities if m not in encoders]
        if missing:
            raise ConfigError(f"no encoder given for modality {missing[0]!r}")
        if missing_at not in ("feature", "input"):
            raise ConfigError(f"missing_at must be 'feature' or 'input'; got {missing_at!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {num_classes}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        dims = [int(self.encoders[m].out_features) for m in self.modalities]
        self.fusion = create_fusion(fusion, dims)
        self.trunk = trunk
        width = int(trunk.out_features) if trunk is not None else self.fusion.out_features
        self.embedding = ProbabilisticEmbedding(
            width, embed_dim, variance=variance, sample=sample, spatial=spatial
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if spatial else None
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.num_classes = num_classes
        self.missing_at = missing_at
        self.input_shapes = (
            {m: tuple(int(s) for s in input_shapes[m]) for m in self.modalities}
            if input_shapes is not None
            else None
        )
        self.validate_inputs = validate_inputs
        # the authors' initialisation for the layers built here; encoders and trunks initialise
        # themselves (and may have loaded weights)
        init_weights(self.embedding)
        init_weights(self.classifier)

    def check(self, inputs: Mapping[str, Tensor], availability: Tensor) -> None:
        if self.validate_inputs:
            dtype = self.classifier.weight.dtype
            check_inputs(inputs, availability, self.modalities, self.input_shapes, dtype=dtype)

    def encode(
        self, inputs: Mapping[str, Tensor], availability: Tensor | None = None
    ) -> list[Tensor]:
        """Per-modality features [(B, D_m)], computed on the inputs as given.

        With ``missing_at="input"`` and an ``availability`` mask, absent inputs are zeroed first.
        """
        feats = []
        for j, m in enumerate(self.modalities):
            x = inputs[m]
            if self.missing_at == "input" and availability is not None:
                x = zero_missing([x], availability[:, j : j + 1])[0]
            feats.append(self.encoders[m](x))
        return feats

    def encode_absent(self, inputs: Mapping[str, Tensor]) -> list[Tensor] | None:
        """Features of an all-zero input per modality (input-level missingness), else None."""
        if self.missing_at != "input":
            return None
        return [self.encoders[m](torch.zeros_like(inputs[m])) for m in self.modalities]

    def forward_head(
        self,
        features: Sequence[Tensor],
        availability: Tensor,
        absent_features: Sequence[Tensor] | None = None,
    ) -> ModelOutput:
        """Fusion, embedding and classifier on encoder features for one availability mask."""
        avail = availability.bool()
        if absent_features is not None:  # input-level missingness: the encoder's zero response
            feats = [
                torch.where(avail[:, j].view(-1, *([1] * (f.dim() - 1))), f, a)
                for j, (f, a) in enumerate(zip(features, absent_features, strict=True))
            ]
        else:
            feats = zero_missing(features, avail)
        h = self.fusion(feats, avail)
        if self.trunk is not None:
            h = self.trunk(h)
        z, mu, logvar = self.embedding(h)
        logits = self.classifier(z if self.pool is None else self.pool(z))
        return ModelOutput(logits=logits, mu=mu, logvar=logvar, z=z)

    def forward(self, inputs: Mapping[str, Tensor], availability: Tensor) -> ModelOutput:
        """inputs: modality -> (B, *shape); availability: (B, M) bool -> :class:`ModelOutput`."""
        self.check(inputs, availability)
        feats = self.encode(inputs, availability)
        # input-level missingness: absent inputs were zeroed before their encoders, and the
        # encoders' response to zeros is what the model sees, so nothing is zeroed again
        absent = feats if self.missing_at == "input" else None
        return self.forward_head(feats, availability, absent)


IGNORE_INDEX = 255
"""Target value of pixels that carry no label (void); ignored by losses and metrics."""


class DMRNetObjective(nn.Module):
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
