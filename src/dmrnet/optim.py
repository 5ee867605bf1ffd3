"""The optimisation config every method trains with: optimiser, learning-rate schedule and
warm-up (:class:`OptimConfig`), and what it builds for Lightning (:func:`configure`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dmrnet.errors import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, ConfigError, require

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "multistep", "onecycle")


@dataclass(frozen=True)
class OptimConfig:
    """How a model is optimised.

    Args:
        optimizer: "adamw" | "adam" | "sgd".
        lr: learning rate (> 0).
        weight_decay: decoupled (adamw) or L2 (adam, sgd) weight decay (>= 0).
        momentum / nesterov: SGD's.
        scheduler: "none" | "cosine" (to zero over the epochs after warm-up) | "multistep"
            (x ``gamma`` at each of ``milestones``, in epochs) | "onecycle" (per step).
        gamma: the multistep factor.
        warmup_epochs: epochs of linear warm-up (from 0.1 x lr) before the schedule.
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose "
                              f"{', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose "
                              f"{', '.join(SCHEDULERS)}")
        for name, rule in (("lr", POSITIVE), ("weight_decay", NON_NEGATIVE),
                           ("momentum", FRACTION), ("gamma", POSITIVE), ("warmup_epochs", COUNT)):
            require(f"optim.{name}", getattr(self, name), rule)
        if self.scheduler == "multistep" and not self.milestones:
            raise ConfigError("scheduler 'multistep' needs optim.milestones, e.g. [70]")

    @classmethod
    def of(cls, value: OptimConfig | Mapping[str, Any] | None) -> OptimConfig:
        """``value`` as an OptimConfig (a mapping's unknown keys are an error naming them)."""
        if isinstance(value, OptimConfig):
            return value
        kwargs = dict(value or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f"optim has no setting {unknown[0]!r}; its settings: {known}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_OPTIM = OptimConfig()
"""The defaults (frozen, so one shared instance is safe as an argument default)."""


def parameter_groups(module: torch.nn.Module, lr: float
                     ) -> Iterable[torch.nn.Parameter] | list[dict[str, Any]]:
    """``module``'s parameters for the optimiser. Where a submodule carries ``lr_scale`` other
    than 1 (a pretrained encoder's ``lr_multiplier``), its trainable parameters form a group
    at ``lr * lr_scale`` and the rest one at ``lr`` (frozen ones are left out); otherwise the
    parameters as they are."""
    scale: dict[int, float] = {}
    for sub in module.modules():
        factor = float(getattr(sub, "lr_scale", 1.0))
        if factor != 1.0:
            for p in sub.parameters():
                scale.setdefault(id(p), factor)
    if not scale:
        return module.parameters()
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault(scale.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr": lr * factor} for factor, ps in groups.items()]


def configure(cfg: OptimConfig, params: Iterable[torch.nn.Parameter] | list[dict[str, Any]],
              max_epochs: int, total_steps: Callable[[], int]) -> Any:
    """The optimiser and scheduler for Lightning's ``configure_optimizers``: an optimiser, or
    ``{"optimizer", "lr_scheduler": {"scheduler", "interval"}}``. ``params``: parameters, or
    groups with their own ``lr`` (:func:`parameter_groups`). ``total_steps`` is called only
    by the one-cycle schedule (Lightning's estimate sets up the training data)."""
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov)
    else:
        params = list(params)
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        # the fused kernel updates every tensor in one pass (a per-tensor loop costs a small
        # model more than its step: 3.9 vs 0.7 ms for the mfeat network on one CPU thread)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        opt = cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fusable(tensors))
    epochs = max(int(max_epochs or 1), 1)
    warm = int(cfg.warmup_epochs)
    if cfg.scheduler == "onecycle":
        main = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=int(total_steps()))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": main, "interval": "step"}}
    main: Any
    if cfg.scheduler == "none":
        main = None
    elif cfg.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs - warm, 1))
    else:
        main = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[m - warm for m in (cfg.milestones or [])], gamma=cfg.gamma)
    if warm > 0:
        ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm)
        sched = ramp if main is None else torch.optim.lr_scheduler.SequentialLR(
            opt, [ramp, main], milestones=[warm])
    else:
        sched = main
    if sched is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _fusable(params: list[torch.nn.Parameter]) -> bool | None:
    """True where torch's fused Adam runs: floating-point parameters, all on CPU or all on
    one CUDA device; None (torch's default) otherwise."""
    devices = {p.device.type for p in params}
    ok = params and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.is_floating_point() for p in params)
    return True if ok else None
