"""The losses of DMRNet's family (task CE, alpha * KL, beta * HCR, deep supervision), from
Wei et al., "Robust Multimodal Learning via Representation Decoupling", ECCV 2024:

    loss = task + alpha * KL(N(mu, sigma^2) || N(0, I)) + beta * HCR

The hard combination regulariser (HCR) accumulates each subset's mean variance during a warm-up,
marks the highest-variance subsets as hard, and from then on adds beta * CE on their samples.
Plain PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.errors import ConfigError
from dmrnet.methods.base import (
    Choice,
    Objective,
    ObjectivePart,
    Reduce,
    TermContext,
    register_checkpoint_upgrade,
)
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


class KLRegularizer(ObjectivePart):
    """alpha * KL, averaged over the batch (see :func:`kl_divergence`); the "kl" term of a
    network with a variance head."""

    name = "kl"

    def __init__(self, weight: float = 1e-3, spatial: str = "sum") -> None:
        super().__init__()
        if spatial not in ("sum", "mean"):
            raise ConfigError(f"spatial must be 'sum' or 'mean'; got {spatial!r}")
        self.weight = float(weight)
        self.spatial = spatial

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return self.weight * kl_divergence(mu, logvar, self.spatial)

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        if self.weight > 0 and out.logvar is not None:
            return {"kl": self(out.mu, out.logvar)}
        return {}


HCR_RULES = ("variance", "val_loss", "val_error")
"""How HCR ranks subsets: mean embedding variance in training (the authors'), or the task loss
or error per subset on the validation split (never the test split)."""

HCR_WEIGHTINGS = ("top_k", "soft")

HCR_REDUCTIONS = ("paper", "authors")
"""How the HCR term is reduced over the batch: the paper's beta * (1/B) * sum of the hard
samples' losses, or what the authors' code computes, beta * n_hard * (batch mean loss of every
sample): their (B, 1, 1, 1) indicator times the (B,) losses broadcasts to (B, 1, 1, B)."""

HCR_STATISTICS = ("pooled", "authors")
"""The variance statistic ranked during warm-up: one mean over every warm-up sample of a
subset (pooled), or the authors' per-batch means, summed over an epoch's batches, divided by
(batches - 1) and summed over the warm-up epochs (a batch without a sample of the subset makes
it NaN)."""


class HardCombinationRegularizer(ObjectivePart):
    """Up-weights the samples of hard modality subsets (the "hcr" term and its choice).

    The authors' rule (``rule="variance"``): during the first ``warmup_epochs`` epochs,
    :meth:`accumulate` sums each subset's per-sample mean sigma^2; at the end of warm-up the
    ``top_k`` candidate subsets with the largest mean variance are hard (or the user's
    ``hard_subsets``). From then on ``forward`` returns beta * (1/B) * sum over hard-subset
    samples of their task loss.

    Rules beside it (our additions, not in the paper): ``"val_loss"`` / ``"val_error"`` rank
    subsets by their task loss / error on the validation split (:meth:`observe_validation`),
    which measures difficulty directly; ``every`` > 0 re-selects every that many epochs after
    warm-up (from the window since the last choice); ``weighting="soft"`` weights every
    candidate by its difficulty relative to the candidates' mean (d_s / mean d, so beta is
    the average weight) instead of 1 for the top k.

    The state is kept in buffers, so it is saved with checkpoints and survives a resume. For
    multi-process training, sum ``variance_sum`` and ``variance_count`` over processes before
    :meth:`select` (the objective's hook does).

    Args:
        subset_names: names of all S subsets, in subset-index order.
        beta: weight of the extra loss (authors: 0.2 CREMA-D, 0.3 Kinetics-Sounds, 0.7 CASIA-SURF).
        warmup_epochs: epochs before the first selection (authors: about 5).
        top_k: how many subsets are hard (``weighting="top_k"``).
        candidates: which subsets may be chosen: "unimodal" (the authors' rule: with two
            modalities they compare the two single-modality subsets) or "all".
        hard_subsets: a fixed list of subset names instead of a ranking.
        rule: "variance" | "val_loss" | "val_error".
        every: re-select every this many epochs after warm-up (0: choose once).
        weighting: "top_k" | "soft".
        reduction: "paper" | "authors" (see :data:`HCR_REDUCTIONS`).
        statistic: "pooled" | "authors" (see :data:`HCR_STATISTICS`); with "authors" the
            choice is their comparison: with two modalities, the first is hard when its
            statistic is greater than the second's, else the second (a comparison with NaN
            is false); with more, the same comparison from the last candidate to the first.
    """

    name = "hcr"

    def __init__(
        self,
        subset_names: Sequence[str],
        beta: float = 0.2,
        warmup_epochs: int = 5,
        top_k: int = 1,
        candidates: str = "unimodal",
        hard_subsets: Sequence[str] | None = None,
        rule: str = "variance",
        every: int = 0,
        weighting: str = "top_k",
        reduction: str = "paper",
        statistic: str = "pooled",
    ) -> None:
        super().__init__()
        self.subset_names = list(subset_names)
        if reduction not in HCR_REDUCTIONS:
            raise ConfigError(f"hcr_reduction must be one of {', '.join(HCR_REDUCTIONS)}; got "
                              f"{reduction!r}")
        if statistic not in HCR_STATISTICS:
            raise ConfigError(f"hcr_statistic must be one of {', '.join(HCR_STATISTICS)}; got "
                              f"{statistic!r}")
        if statistic == "authors" and (rule != "variance" or every > 0):
            raise ConfigError("hcr_statistic 'authors' is the authors' variance statistic over "
                              "one warm-up: it needs hcr_rule 'variance' and hcr_every 0")
        self.reduction, self.statistic = reduction, statistic
        self.val_loss_sum: Tensor | None = None  # the val_loss rule's sums per subset
        self.val_count: Tensor | None = None
        num = len(self.subset_names)
        if candidates not in ("unimodal", "all"):
            raise ConfigError(f"candidates must be 'unimodal' or 'all'; got {candidates!r}")
        if rule not in HCR_RULES:
            raise ConfigError(f"hcr_rule must be one of {', '.join(HCR_RULES)}; got {rule!r}")
        if weighting not in HCR_WEIGHTINGS:
            raise ConfigError(f"hcr_weighting must be 'top_k' or 'soft'; got {weighting!r}")
        is_candidate = [candidates == "all" or SEP not in n for n in self.subset_names]
        num_candidates = sum(is_candidate)
        if warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0; got {warmup_epochs}")
        if every < 0:
            raise ConfigError(f"hcr_every must be >= 0; got {every}")
        if not 1 <= top_k <= num_candidates:
            raise ConfigError(
                f"top_k must be in 1..{num_candidates} (the number of {candidates} subsets); "
                f"got {top_k}"
            )
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.top_k = int(top_k)
        self.rule, self.every, self.weighting = rule, int(every), weighting
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
                "choosing hard subsets needs at least one warm-up epoch; set "
                "warmup_epochs >= 1 or give hard_subsets"
            )
        self.register_buffer("variance_sum", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("variance_count", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("hard", torch.zeros(num, dtype=torch.bool))
        self.register_buffer("weight", torch.zeros(num, dtype=torch.float32))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        # the authors' statistic: this epoch's sum of per-batch means, and its batches
        self.register_buffer("epoch_sum", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("epoch_batches", torch.zeros((), dtype=torch.float64))
        self.register_buffer("candidate", torch.tensor(is_candidate), persistent=False)
        # the latest validation difficulty per subset (NaN: not measured); not saved: a run
        # resumes at an epoch boundary, after the selection that used it
        self.register_buffer("difficulty", torch.full((num,), math.nan, dtype=torch.float64),
                             persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,  # type: ignore[no-untyped-def]
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # checkpoints of dmrnet 0.1 have no weight buffer: it is the hard mask
        if prefix + "weight" not in state_dict and prefix + "hard" in state_dict:
            state_dict[prefix + "weight"] = state_dict[prefix + "hard"].float()
        # checkpoints before the authors' statistic have no epoch buffers: empty ones
        for name in ("epoch_sum", "epoch_batches"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    @property
    def warming_up(self) -> bool:
        return not bool(self.active)

    @property
    def uses_validation(self) -> bool:
        """Whether selection needs :meth:`observe_validation` (the val_* rules)."""
        return self.fixed is None and self.rule != "variance"

    @property
    def hard_names(self) -> list[str]:
        return [n for n, h in zip(self.subset_names, self.hard.tolist(), strict=True) if h]

    def weights(self) -> dict[str, float]:
        """The extra-loss weight (times beta) of each subset with one."""
        return {n: w for n, w in zip(self.subset_names, self.weight.tolist(), strict=True)
                if w > 0}

    def mean_variance(self) -> dict[str, float]:
        """Accumulated mean sigma^2 per subset (NaN where a subset had no sample); with the
        authors' statistic, theirs (NaN where a warm-up batch had no sample of the subset)."""
        if self.statistic == "authors":
            return dict(zip(self.subset_names, self.variance_sum.tolist(), strict=True))
        mean = self.variance_sum / self.variance_count.clamp_min(1)
        mean[self.variance_count == 0] = math.nan
        return dict(zip(self.subset_names, mean.tolist(), strict=True))

    def validation_difficulty(self) -> dict[str, float]:
        """The latest validation loss or error per subset (NaN: not measured)."""
        return dict(zip(self.subset_names, self.difficulty.tolist(), strict=True))

    def due(self, epoch: int) -> bool:
        """Whether a selection falls at the end of training epoch ``epoch`` (0-based)."""
        done = epoch + 1
        if done < self.warmup_epochs:
            return False
        if self.warming_up:
            return True
        return self.every > 0 and (done - self.warmup_epochs) % self.every == 0

    @torch.no_grad()
    def accumulate(self, subset_index: Tensor, variance: Tensor) -> None:
        """Add per-sample mean variances (B,) to their subsets' sums: during warm-up, and
        after it while the variance rule re-selects."""
        rechoose = self.rule == "variance" and self.fixed is None and self.every > 0
        if not (self.warming_up or rechoose):
            return
        idx = subset_index.to(self.variance_sum.device)
        sums, counts = subset_totals(idx, variance.to(idx.device), len(self.subset_names))
        if self.statistic == "authors":  # this batch's mean per subset; 0/0 is NaN, as theirs
            self.epoch_sum += sums / counts
            self.epoch_batches += 1
            return
        self.variance_sum += sums
        self.variance_count += counts

    @torch.no_grad()
    def end_warmup_epoch(self, reduce: Reduce) -> None:
        """The authors' statistic at the end of a warm-up epoch: the sum of its batch means
        (over every process) divided by (batches - 1), added to the warm-up's total."""
        if self.statistic != "authors" or not self.warming_up:
            return
        total, batches = reduce(self.epoch_sum), reduce(self.epoch_batches)
        self.variance_sum += total / (batches - 1)
        self.variance_count += 1
        self.epoch_sum.zero_()
        self.epoch_batches.zero_()

    @torch.no_grad()
    def observe_validation(self, difficulty: Mapping[str, float]) -> None:
        """The validation loss or error per subset name (the val_* rules rank on it)."""
        values = [float(difficulty.get(n, math.nan)) for n in self.subset_names]
        self.difficulty.copy_(torch.tensor(values, dtype=torch.float64))

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> bool:
        """Call after each training epoch (0-based). Returns True when the hard set was chosen."""
        if not self.due(epoch):
            return False
        self.select()
        return True

    def _authors_choice(self) -> int:
        """The authors' comparison (``hard = a if var_a > var_v else v``), from the last
        candidate to the first: a candidate replaces the choice only when its statistic is
        greater (a comparison with NaN is false)."""
        candidates = [i for i, c in enumerate(self.candidate.tolist()) if c]
        stat = self.variance_sum.tolist()
        chosen = candidates[-1]
        for i in reversed(candidates[:-1]):
            if stat[i] > stat[chosen]:
                chosen = i
        return chosen

    def _scores(self) -> Tensor | None:
        """Each subset's difficulty under the rule (-inf: not a candidate or not seen)."""
        if self.rule == "variance" and self.statistic == "authors":
            score = self.variance_sum.clone()
            score[torch.isnan(score)] = -math.inf
        elif self.rule == "variance":
            score = self.variance_sum / self.variance_count.clamp_min(1)
            score[self.variance_count == 0] = -math.inf  # never seen: cannot be judged hard
        else:
            if bool(torch.isnan(self.difficulty[self.candidate]).all()):
                return None  # no validation yet
            score = self.difficulty.clone()
            score[torch.isnan(score)] = -math.inf
        score[~self.candidate] = -math.inf
        return score

    @torch.no_grad()
    def select(self) -> list[str]:
        """Choose the hard subsets now and switch the regulariser on (a val_* rule with no
        validation yet keeps the previous choice)."""
        if self.fixed is not None:
            self.hard.zero_()
            self.hard[self.fixed] = True
            self.weight.copy_(self.hard.float())
        else:
            score = self._scores()
            if score is None:
                return self.hard_names
            self.hard.zero_()
            if self.statistic == "authors" and self.top_k == 1 and self.weighting == "top_k":
                self.hard[self._authors_choice()] = True
                self.weight.copy_(self.hard.float())
            elif self.weighting == "top_k":
                self.hard[torch.topk(score, self.top_k).indices] = True
                self.weight.copy_(self.hard.float())
            else:
                seen = torch.isfinite(score)
                rel = torch.zeros_like(score)
                if bool(seen.any()):
                    rel[seen] = score[seen] / score[seen].mean().clamp_min(1e-12)
                self.weight.copy_(rel.clamp_min(0).float())
                self.hard.copy_(self.weight > 0)
            if self.rule == "variance" and self.every > 0:  # the next window starts now
                self.variance_sum.zero_()
                self.variance_count.zero_()
        self.active.fill_(True)
        return self.hard_names

    def forward(self, per_sample_loss: Tensor, subset_index: Tensor) -> Tensor:
        """The paper's reduction: beta * (1/B) * sum_i w_{subset_i} loss_i. The authors':
        beta * (sum_i w_{subset_i}) * (1/B) * sum_j loss_j. Zero during warm-up. Shapes (B,),
        (B,)."""
        if self.warming_up or self.beta == 0:
            return per_sample_loss.new_zeros(())
        b = per_sample_loss.shape[0]
        if self.weighting == "top_k":  # a hard mask
            w = self.hard.to(subset_index.device)[subset_index].to(per_sample_loss.dtype)
        else:
            w = self.weight.to(subset_index.device)[subset_index].to(per_sample_loss.dtype)
        if self.reduction == "authors":
            # their availability product has shape (B, 1, 1, 1); times the (B,) losses it
            # broadcasts to (B, 1, 1, B): every hard sample weights every sample's loss
            return self.beta * (per_sample_loss * w.view(b, 1, 1, 1)).sum() / b
        return self.beta * (per_sample_loss * w).sum() / b

    # --- as a part of an objective -----------------------------------------------------------
    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        """Accumulates the variances (warm-up) and, with beta > 0, the "hcr" term on the
        auxiliary predictor's loss where the model has one, else the main logits'."""
        if out.logvar is not None:
            self.accumulate(ctx.subset_index, out.variance)
        if self.beta <= 0:
            return {}
        hard_loss = ctx.per_sample if out.aux_logits is None else ctx.loss(out.aux_logits,
                                                                            target)
        return {"hcr": self(hard_loss, ctx.subset_index)}

    def start(self) -> Choice | None:
        """A fixed list of hard subsets with no warm-up is chosen before the first step."""
        if self.warming_up and self.warmup_epochs == 0:
            return self._choice(self.select(), {})
        return None

    def epochs_note(self, epochs: int) -> str | None:
        """The first choice due after more epochs than the training runs."""
        if self.warmup_epochs > epochs:
            return (f"HCR starts after epoch {self.warmup_epochs} (hcr_warmup_epochs) but "
                    f"training runs {epochs} epochs, so no subset is ever up-weighted; lower "
                    "hcr_warmup_epochs or train longer")
        return None

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Choice | None:
        """When HCR chooses (end of warm-up, then every ``every`` epochs): the hard subsets,
        from the variances summed over every process or the latest validation."""
        self.end_warmup_epoch(reduce)
        if not self.due(epoch):
            return None
        if self.statistic == "pooled":  # the authors' is summed over processes already
            for buf in (self.variance_sum, self.variance_count):
                buf.copy_(reduce(buf))
        variance = self.mean_variance()
        hard = self.select()
        if self.warming_up:  # a validation rule with no validation yet: choose later
            return None
        return self._choice(hard, variance)

    def epoch_values(self) -> dict[str, float]:
        """Once chosen, every subset's extra-loss weight (0 where not chosen), logged as
        ``subset_weight/<subset>`` every epoch."""
        if self.warming_up:
            return {}
        weights = self.weights()
        return {f"subset_weight/{name}": float(weights.get(name, 0.0))
                for name in self.subset_names}

    def _choice(self, hard: list[str], variance: dict[str, float]) -> Choice:
        """The choice: recorded with its rule, weights and what it ranked (the validation
        loss or error, else the mean variance, which is also logged per subset)."""
        difficulty = self.validation_difficulty() if self.uses_validation else {}
        rule = "fixed" if self.fixed is not None else self.rule
        ranked_on = difficulty or variance
        what = "validation " + rule.removeprefix("val_") if difficulty else "mean variance"
        ranked = sorted(ranked_on.items(), key=lambda kv: -_nan_low(kv[1]))
        message = f"hard subsets chosen: {hard}" + (
            f"; highest {what}: " + ", ".join(f"{k}={v:.4g}" for k, v in ranked[:5])
            if ranked else "")
        return Choice(
            record={"rule": rule, "hard_subsets": list(hard), "weights": self.weights(),
                    "difficulty": difficulty},
            state={"summary": "hard subsets " + ", ".join(hard), "hard_subsets": list(hard),
                   "subset_variance": dict(variance)},
            message=message,
            values={f"subset_variance/{name}": float(value) for name, value in variance.items()
                    if not math.isnan(value)})

    @property
    def observes_validation(self) -> bool:  # type: ignore[override]
        return self.uses_validation

    @torch.no_grad()
    def observe(self, subset: int, logits: Tensor, target: Tensor,
                loss: Callable[[Tensor, Tensor], Tensor]) -> None:
        """One validation subset's outputs (for the val_loss rule: its task loss)."""
        if self.rule != "val_loss":
            return
        n = len(self.subset_names)
        if self.val_loss_sum is None or self.val_loss_sum.device != logits.device:
            self.val_loss_sum = torch.zeros(n, dtype=torch.float64, device=logits.device)
            self.val_count = torch.zeros(n, dtype=torch.float64, device=logits.device)
        per = loss(logits.float(), target)
        self.val_loss_sum[subset] += per.double().sum()
        self.val_count[subset] += per.numel()  # type: ignore[index]

    @torch.no_grad()
    def end_validation(self, errors: Mapping[str, float], reduce: Reduce) -> None:
        """The validation epoch's per-subset errors (and the loss observed): what the val_*
        rules rank on at the next selection."""
        if not self.uses_validation:
            return
        if self.rule == "val_error":
            self.observe_validation(errors)
            return
        if self.val_loss_sum is None or self.val_count is None:
            return
        total, count = reduce(self.val_loss_sum), reduce(self.val_count)
        mean = (total / count.clamp_min(1)).masked_fill(count == 0, math.nan)
        self.observe_validation(dict(zip(self.subset_names, mean.tolist(), strict=True)))
        self.val_loss_sum, self.val_count = None, None


IGNORE_INDEX = 255
"""Target value of pixels that carry no label (void); ignored by losses and metrics."""


class MultimodalObjective(Objective):
    """The task loss and a list of parts (:class:`~dmrnet.methods.base.ObjectivePart`):
    task CE (+ deep supervision and the network's own terms), then each part's named terms
    in order (DMRNet's: alpha * KL, beta * HCR; a booster's: its own), summed under "loss".

    ``forward`` returns the dict of weighted terms ("task", "side" where the network has
    side outputs, then the parts') and their sum under "loss"; terms a run does not use are
    absent. Each part is registered under its name (its buffers are saved as
    ``objective.<name>.*``) and its hooks are called in order; choices made in one epoch
    become one :class:`~dmrnet.methods.base.Choice`. For dense targets (B, H, W) a sample's
    loss is the mean over its labelled pixels; ``class_weights`` (K,) weight the classes.
    """

    def __init__(
        self,
        parts: Sequence[ObjectivePart] = (),
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.part_names: list[str] = []
        for part in parts:
            if not part.name or part.name in self.part_names or hasattr(self, part.name):
                raise ConfigError(f"objective part {type(part).__name__} needs a name of its "
                                  f"own; got {part.name!r}")
            self.add_module(part.name, part)
            self.part_names.append(part.name)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.tensor(list(class_weights)).float()
        self.register_buffer("class_weights", weights)

    @property
    def parts(self) -> list[ObjectivePart]:
        return [getattr(self, n) for n in self.part_names]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,  # type: ignore[no-untyped-def]
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # buffers a part declares it kept on the objective itself in earlier versions
        for part in self.parts:
            for key in getattr(part, "legacy_keys", ()):
                if prefix + key in state_dict and prefix + f"{part.name}.{key}" not in state_dict:
                    state_dict[prefix + f"{part.name}.{key}"] = state_dict.pop(prefix + key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def part(self, name: str) -> ObjectivePart | None:
        """The part called ``name``, or None."""
        return getattr(self, name) if name in self.part_names else None

    def start(self) -> Choice | None:
        return _merged([p.start() for p in self.parts])

    def epochs_note(self, epochs: int) -> str | None:
        return next((n for p in self.parts if (n := p.epochs_note(epochs)) is not None), None)

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Choice | None:
        return _merged([p.end_train_epoch(epoch, reduce) for p in self.parts])

    def epoch_values(self) -> dict[str, float]:
        return {k: v for p in self.parts for k, v in p.epoch_values().items()}

    @property
    def observes_validation(self) -> bool:  # type: ignore[override]
        return any(p.observes_validation for p in self.parts)

    @torch.no_grad()
    def observe(self, subset: int, logits: Tensor, target: Tensor) -> None:
        for p in self.parts:
            p.observe(subset, logits, target, self.per_sample)

    @torch.no_grad()
    def end_validation(self, errors: Mapping[str, float], reduce: Reduce) -> None:
        for p in self.parts:
            p.end_validation(errors, reduce)

    def adjust_gradients(self, network: nn.Module, epoch: int, reduce: Reduce
                         ) -> dict[str, float]:
        return {k: v for p in self.parts
                for k, v in p.adjust_gradients(network, epoch, reduce).items()}

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

    def forward(self, out: ModelOutput, target: Tensor, subset_index: Tensor,
                **context: object) -> dict[str, Tensor]:
        per_sample = self.per_sample(out.logits, target)
        terms = {"task": per_sample.mean()}
        if out.side_logits:
            terms["side"] = sum(self.per_sample(s, target).mean() for s in out.side_logits)
        if out.extra_losses:
            terms.update(out.extra_losses)
        ctx = TermContext(per_sample, subset_index, self.per_sample, context)
        for part in self.parts:
            terms.update(part.terms(out, target, ctx))
        terms["loss"] = sum(terms.values())  # type: ignore[assignment]
        return terms


def unimodal_loss(out: ModelOutput, target: Tensor, loss: Callable[[Tensor, Tensor], Tensor]
                  ) -> Tensor:
    """Mean task loss of the per-modality heads over every (sample, modality it has)."""
    assert out.modality_logits is not None and out.modality_mask is not None
    b, m, k = out.modality_logits.shape
    losses = loss(out.modality_logits.reshape(b * m, k), target.repeat_interleave(m)).view(b, m)
    mask = out.modality_mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp_min(1)


def _merged(choices: Sequence[Choice | None]) -> Choice | None:
    """The parts' choices of one moment as one Choice (records and values joined in order,
    the last standing state, the messages one after the other)."""
    made = [c for c in choices if c is not None]
    if len(made) <= 1:
        return made[0] if made else None
    out = Choice()
    for c in made:
        out.record.update(c.record)
        out.values.update(c.values)
        out.sampling.update(c.sampling)
        out.state = c.state if c.state is not None else out.state
    out.message = "; ".join(c.message for c in made if c.message)
    return out


def _nan_low(v: float) -> float:
    """Sort key that ranks NaN (a subset never seen) below every number."""
    return -math.inf if math.isnan(v) else v


@register_checkpoint_upgrade
def _standing_choice_of_0_2(record: dict[str, object]) -> dict[str, object]:
    """dmrnet 0.2 kept HCR's standing choice as top-level "hard_subsets" and
    "subset_variance" in a checkpoint's training record; today it is the objective's state."""
    if "objective_state" in record or "hard_subsets" not in record:
        return record
    out = dict(record)
    hard = list(out.pop("hard_subsets") or [])  # type: ignore[call-overload]
    variance = dict(out.pop("subset_variance", None) or {})  # type: ignore[call-overload]
    out["objective_state"] = ({"summary": "hard subsets " + ", ".join(hard),
                               "hard_subsets": hard, "subset_variance": variance}
                              if hard else {})
    return out
