"""Per-subset metrics: one torchmetrics metric per modality subset, keyed by subset name."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from dmrnet.errors import ConfigError


@dataclass(frozen=True)
class TaskMetric:
    """A task metric: its name, direction and a factory ``(num_classes) -> Metric``.

    The Metric's ``compute()`` returns a scalar, or a dict of named values that includes
    ``name`` (the primary value, used for the mean and the worst subset and for selection).

    ``rows(logits, target, num_classes) -> (B, k)`` gives each sample's additive statistics,
    and ``value(sums (..., k), counts (...)) -> (...)`` the primary value of any sum of them
    over ``counts`` samples: the metric of any resample of the test samples (a bootstrap)
    without running the model again.
    """

    name: str
    higher_is_better: bool
    factory: Callable[[int], Metric]
    rows: Callable[[Tensor, Tensor, int], Tensor]
    value: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _accuracy_rows(logits: Tensor, target: Tensor, k: int) -> Tensor:
    return (logits.argmax(dim=1) == target).float()[:, None]  # (B, 1): correct


def _accuracy_value(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return sums[..., 0] / np.maximum(counts, 1)


def _spoofing_rows(logits: Tensor, target: Tensor, k: int) -> Tensor:
    real_pred = logits.argmax(dim=1) == 1 if logits.dim() == 2 else logits > 0.5
    real = target == 1
    return torch.stack([real_pred & real, ~real_pred & real, real_pred & ~real,
                        ~real_pred & ~real], dim=1).float()  # tp, fn, fp, tn


def _acer_value(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    tp, fn, fp, tn = (sums[..., i] for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (fp / (fp + tn) + fn / (tp + fn)) / 2


def _iou_rows(logits: Tensor, target: Tensor, k: int, ignore_index: int = 255) -> Tensor:
    pred = logits.argmax(dim=1) if logits.dim() == target.dim() + 1 else logits
    valid = (target != ignore_index).flatten(1)
    pred, target = pred.flatten(1), target.flatten(1)
    out = []
    for c in range(k):  # per image: true positives, false positives, false negatives
        p, t = (pred == c) & valid, (target == c) & valid
        out += [(p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)]
    return torch.stack(out, dim=1).float()


def _miou_value(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    k = sums.shape[-1] // 3
    s = sums.reshape(*sums.shape[:-1], k, 3)
    union = s[..., 0] + s[..., 1] + s[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, s[..., 0] / union, np.nan)
        return np.nanmean(iou, axis=-1)


class SpoofingErrorRates(Metric):
    """ISO/IEC 30107-3 presentation-attack error rates for binary logits (B, 2), class 1 = real.

    APCER: attacks accepted as real (share of attack samples). BPCER: real samples rejected as
    attacks. ACER: their mean. Also accuracy. A rate whose class is absent is NaN.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fn", "fp", "tn"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        real_pred = preds.argmax(dim=1) == 1 if preds.dim() == 2 else preds > 0.5
        real = target == 1
        self.tp += (real_pred & real).sum()
        self.fn += (~real_pred & real).sum()
        self.fp += (real_pred & ~real).sum()
        self.tn += (~real_pred & ~real).sum()

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"))
        attacks, reals = self.fp + self.tn, self.tp + self.fn
        apcer = self.fp / attacks if attacks > 0 else nan
        bpcer = self.fn / reals if reals > 0 else nan
        total = attacks + reals
        acc = (self.tp + self.tn) / total if total > 0 else nan
        return {"acer": (apcer + bpcer) / 2, "apcer": apcer, "bpcer": bpcer, "accuracy": acc}


TASK_METRICS: dict[str, TaskMetric] = {
    # targets are checked by dmrnet.batch.check_targets, so torchmetrics' own checks are skipped
    "accuracy": TaskMetric(
        "accuracy",
        True,
        lambda k: MulticlassAccuracy(num_classes=k, average="micro", validate_args=False),
        _accuracy_rows, _accuracy_value,
    ),
    "acer": TaskMetric("acer", False, lambda k: _binary(k, SpoofingErrorRates),
                       _spoofing_rows, _acer_value),
    "miou": TaskMetric("miou", True, lambda k: SegmentationIoU(k), _iou_rows, _miou_value),
}


class SegmentationIoU(Metric):
    """Confusion-matrix segmentation metrics for logits (B, K, H, W) and targets (B, H, W).

    Pixels whose target is ``ignore_index`` (void) are left out. ``compute()`` gives ``miou``
    (mean over the classes that occur in targets or predictions), ``pixel_accuracy`` and one
    ``iou/<k>`` per class (NaN for a class that never occurs).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confusion", default=torch.zeros(num_classes, num_classes,
                                                        dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        pred = preds.argmax(dim=1) if preds.dim() == target.dim() + 1 else preds
        valid = target != self.ignore_index
        k = self.num_classes
        idx = target[valid].long() * k + pred[valid].long()
        self.confusion += torch.bincount(idx, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, Tensor]:
        conf = self.confusion.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        total = conf.sum()
        out = {"miou": iou.nanmean().float(),
               "pixel_accuracy": (tp.sum() / total).float() if total > 0 else torch.tensor(
                   float("nan"))}
        out.update({f"iou/{c}": iou[c].float() for c in range(self.num_classes)})
        return out


def _binary(num_classes: int, cls: Callable[[], Metric]) -> Metric:
    if num_classes != 2:
        raise ConfigError(f"this metric is for 2 classes (attack, real); got {num_classes}")
    return cls()


def get_task_metric(name: str) -> TaskMetric:
    if name not in TASK_METRICS:
        raise ConfigError(f"unknown metric {name!r}; available: {sorted(TASK_METRICS)}")
    return TASK_METRICS[name]


def selection_mode(metric: str) -> str:
    """The checkpoint selection's direction for a task metric: "max" where higher is better
    (accuracy, mIoU), "min" where lower is (ACER)."""
    return "max" if get_task_metric(metric).higher_is_better else "min"


class PerSubsetMetric(nn.Module):
    """Fans one metric out over subsets (distributed-safe: each is a torchmetrics Metric).

    ``update(subset_index, preds, target)`` feeds one subset; ``compute()`` returns
    ``{subset_name: {value_name: value}}`` for the subsets that received data (one entry,
    named ``name``, for a scalar metric).
    """

    def __init__(
        self, subset_names: Sequence[str], factory: Callable[[], Metric], name: str = "value"
    ) -> None:
        super().__init__()
        self.subset_names = list(subset_names)
        self.name = name
        self.metrics = nn.ModuleList([factory() for _ in self.subset_names])

    def update(self, subset_index: int, preds: Tensor, target: Tensor) -> None:
        self.metrics[subset_index].update(preds, target)

    def compute(self) -> dict[str, dict[str, float]]:
        out = {}
        for subset, metric in zip(self.subset_names, self.metrics, strict=True):
            if metric.update_called:
                value = metric.compute()
                if isinstance(value, dict):
                    out[subset] = {k: float(v) for k, v in value.items()}
                else:
                    out[subset] = {self.name: float(value)}
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
    "SegmentationIoU",
    "SpoofingErrorRates",
    "TaskMetric",
    "get_task_metric",
    "summarize",
    "worst_subset",
]
