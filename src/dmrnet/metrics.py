"""Per-subset metrics: one torchmetrics metric per modality subset, keyed by subset name."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from dmrnet.errors import ConfigError


@dataclass(frozen=True)
class TaskMetric:
    """A task metric: its name, direction and a factory ``(num_classes) -> Metric``."""

    name: str
    higher_is_better: bool
    factory: Callable[[int], Metric]


TASK_METRICS: dict[str, TaskMetric] = {
    # targets are checked by dmrnet.batch.check_targets, so torchmetrics' own checks are skipped
    "accuracy": TaskMetric(
        "accuracy",
        True,
        lambda k: MulticlassAccuracy(num_classes=k, average="micro", validate_args=False),
    ),
}


def get_task_metric(name: str) -> TaskMetric:
    if name not in TASK_METRICS:
        raise ConfigError(f"unknown metric {name!r}; available: {sorted(TASK_METRICS)}")
    return TASK_METRICS[name]


class PerSubsetMetric(nn.Module):
    """Fans one metric out over subsets (distributed-safe: each is a torchmetrics Metric).

    ``update(subset_index, preds, target)`` feeds one subset; ``compute()`` returns
    ``{subset_name: value}`` for the subsets that received data.
    """

    def __init__(self, subset_names: Sequence[str], factory: Callable[[], Metric]) -> None:
        super().__init__()
        self.subset_names = list(subset_names)
        self.metrics = nn.ModuleList([factory() for _ in self.subset_names])

    def update(self, subset_index: int, preds: Tensor, target: Tensor) -> None:
        self.metrics[subset_index].update(preds, target)

    def compute(self) -> dict[str, float]:
        out = {}
        for name, metric in zip(self.subset_names, self.metrics, strict=True):
            if metric.update_called:
                out[name] = float(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()


def summarize(per_subset: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Mean over subsets and the worst subset's value (min, or max when lower is better)."""
    values = [v for v in per_subset.values() if not math.isnan(v)]
    if not values:
        return {"mean": math.nan, "worst": math.nan}
    worst = min(values) if higher_is_better else max(values)
    return {"mean": float(sum(values) / len(values)), "worst": float(worst)}


def worst_subset(per_subset: Mapping[str, float], higher_is_better: bool = True) -> str:
    items = [(k, v) for k, v in per_subset.items() if not math.isnan(v)]
    pick = min if higher_is_better else max
    return pick(items, key=lambda kv: kv[1])[0]


__all__ = [
    "TASK_METRICS",
    "PerSubsetMetric",
    "TaskMetric",
    "get_task_metric",
    "summarize",
    "worst_subset",
]
