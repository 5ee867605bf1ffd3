"""The records a benchmark works on: a :class:`Stage` (one model a run of a method trains),
the :class:`Scores` of a tested model, a :class:`StageResult` per trained stage and a
:class:`RunRecord` per method x seed (what ``results.json`` holds per run). Plain data, below
methods, training and the benchmark, so each can use them without importing the others."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One model a run of a method trains.

    Attributes:
        name: "" for a method's only stage; else e.g. "teacher" or a subset name.
        settings: the module's settings (``method`` included).
        modalities: train and test on these modalities only (None: all).
        needs: setting path -> the earlier stage whose best checkpoint it takes, e.g.
            ``{"method_kwargs.teacher_checkpoint": "teacher"}``.
        nested: checkpoints under ``<method>-seed<seed>/<name>`` (many stages) rather than
            ``<method>-<name>-seed<seed>``.
    """

    name: str
    settings: dict[str, Any]
    modalities: list[str] | None = None
    needs: dict[str, str] = field(default_factory=dict)
    nested: bool = False

    def run_name(self, method: str, seed: int) -> str:
        if not self.name:
            return f"{method}-seed{seed}"
        if self.nested:
            return f"{method}-seed{seed}/{self.name}"
        return f"{method}-{self.name}-seed{seed}"


@dataclass(kw_only=True)
class Scores:
    """Test results of a model or a run: the task metric per subset, its mean and worst, and
    what training chose (the best epoch, and the objective's own record of its choices: see
    :class:`Choice`)."""

    per_subset: dict[str, float]
    mean: float
    worst: float
    best_epoch: int = -1
    objective_state: dict[str, Any] = field(default_factory=dict)
    """The objective's standing choice at the end of training, in its own words (e.g. the
    subsets DMRNet's regulariser up-weights); empty where it chose nothing."""
    selections: list[dict[str, Any]] = field(default_factory=list)
    """Each choice of the objective in training, in order: its record with the "epoch"."""
    per_subset_all: dict[str, dict[str, float]] | None = None
    loss_terms: list[dict[str, float]] = field(default_factory=list)
    """Each training epoch's mean of every loss term the objective returned ("task", "kl",
    "hcr", ... and their sum "loss"), with its "epoch"."""

    def scores(self) -> dict[str, Any]:
        """The :class:`Scores` fields alone (e.g. to make a run's record from a stage's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Scores)}


@dataclass(kw_only=True)
class StageResult(Scores):
    """What one trained stage gave."""

    stage: Stage
    train_seconds: float
    eval_seconds: float
    cpu_threads: int | None = None
    """The CPU intra-op threads it trained with (None: not on CPU). Float sums depend on it,
    so a bit-exact rerun needs the same count."""
    test_samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per subset name, each test sample's id and metric statistics (the model's
    ``test_samples``): intervals over test samples (:mod:`dmrnet.comparison`)."""


@dataclass(kw_only=True)
class RunRecord(Scores):
    """One method x seed in a benchmark: what ``results.json`` holds per run."""

    method: str
    seed: int
    train_seconds: float
    eval_seconds: float
    stage_train_seconds: dict[str, float] = field(default_factory=dict)
    cpu_threads: int | None = None
    """The CPU threads its own model trained with (None: not on CPU); a rerun with the same
    count (``--threads N``) is bit-exact, another count is not."""
    stage_cpu_threads: dict[str, int | None] = field(default_factory=dict)
    """The same for each earlier stage (e.g. a teacher), where there are several."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["per_subset_all"] is None:
            del out["per_subset_all"]
        return out
