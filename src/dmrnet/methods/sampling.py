"""Difficulty-aware subset sampling, a booster of DMRNet's family (baseline + X, dmrnet + X):
training subsets are drawn more often where the validation error is higher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dmrnet.errors import COUNT_FROM_1, NON_NEGATIVE, require
from dmrnet.methods.base import Choice, ModelConfig, ObjectivePart, Reduce
from dmrnet.methods.boosters import Booster, register_booster


class DifficultySampling(ObjectivePart):
    """Difficulty-aware subset sampling: after each validation (from ``warmup`` epochs on),
    subset s is drawn with weight (e_s / mean e)^gamma, e_s its validation error (never test),
    normalised to mean 1, so the subsets the shared model finds hard are trained on more.
    Our booster; MMANet's weak-subset mining (Wei et al., CVPR 2023) re-weights the loss by a
    moving average of the training loss instead.

    The weights are a buffer: saved with checkpoints, so a resumed run draws as it did.

    Args:
        subset_names: all S subset names, in subset-index order.
        gamma: the strength (0: uniform; 1: proportional to the error).
        warmup: epochs before the first re-weighting.
    """

    name = "sampling"
    observes_validation = True

    def __init__(self, subset_names: Sequence[str], gamma: float = 1.0, warmup: int = 1
                 ) -> None:
        super().__init__()
        self.subset_names = list(subset_names)
        self.gamma, self.warmup = float(gamma), int(warmup)
        self.register_buffer("weights", torch.zeros(len(self.subset_names), dtype=torch.float64))
        self.errors: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return bool((self.weights > 0).any())

    def current(self) -> dict[str, float]:
        """The sampling weight per subset name (empty before the first re-weighting)."""
        if not self.active:
            return {}
        return dict(zip(self.subset_names, self.weights.tolist(), strict=True))

    def observe_errors(self, errors: Mapping[str, float]) -> None:
        """The latest validation error per subset name."""
        self.errors = {n: float(errors[n]) for n in self.subset_names if n in errors}

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict[str, float]:
        """New weights after training epoch ``epoch`` (0-based), or {} when none are due."""
        if epoch + 1 < self.warmup or len(self.errors) != len(self.subset_names):
            return {}
        e = torch.tensor([max(self.errors[n], 1e-3) for n in self.subset_names],
                         dtype=torch.float64)
        if not bool(torch.isfinite(e).all()):
            return {}
        w = (e / e.mean()).pow(self.gamma)
        self.weights.copy_(w / w.mean())
        return self.current()

    # --- as a part of an objective -----------------------------------------------------------
    def start(self) -> Choice | None:
        """A resumed run gets its sampling weights back."""
        return self._choice(self.current())

    def end_validation(self, errors: Mapping[str, float], reduce: Reduce) -> None:
        self.observe_errors(errors)

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Choice | None:
        return self._choice(self.end_epoch(epoch))

    def epochs_note(self, epochs: int) -> str | None:
        if self.warmup > epochs:
            return (f"difficulty-aware sampling starts after epoch {self.warmup} "
                    f"(difficulty_warmup) but training runs {epochs} epochs, so sampling never "
                    "changes; lower difficulty_warmup or train longer")
        return None

    @staticmethod
    def _choice(sampling: dict[str, float]) -> Choice | None:
        return Choice({"sampling": dict(sampling)}, sampling=dict(sampling)) if sampling else None



@dataclass
class SamplingOptions:
    """difficulty_sampling: gamma of difficulty-aware subset sampling (0: off): from
    ``difficulty_warmup`` epochs on, training subsets are drawn with weight (validation error /
    mean)^gamma (see :class:`DifficultySampling`)."""

    difficulty_sampling: float = 0.0
    difficulty_warmup: int = 1

    def __post_init__(self) -> None:
        require("difficulty_sampling", self.difficulty_sampling, NON_NEGATIVE)
        require("difficulty_warmup", self.difficulty_warmup, COUNT_FROM_1)


@register_booster
class DifficultyAwareSampling(Booster):
    name = "difficulty_sampling"
    description = "draw the subsets with high validation error more often"
    Options = SamplingOptions

    def parts(self, options: Any, config: ModelConfig, names: Sequence[str]
              ) -> list[ObjectivePart]:
        own = self.read(options)
        if own.difficulty_sampling <= 0:
            return []
        return [DifficultySampling(names, own.difficulty_sampling, int(own.difficulty_warmup))]
