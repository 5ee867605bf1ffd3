"""Unimodal teachers, a booster of DMRNet's family (baseline + X, dmrnet + X): a dedicated
model per modality is trained first (a stage each, as MMANet's teacher is), then the shared
student learns from them in one or both of two ways:

- ``teacher_init``: each of the student's encoders starts from its modality's teacher
  encoder (unimodal pre-training). Joint training under-trains the encoder of a modality
  whose signal is hard to learn when a stronger modality already explains the label (the
  "modality failure" of Du et al., arXiv 2106.11059, 2021; Wang et al., "What Makes Training
  Multi-Modal Classification Networks Hard?", CVPR 2020); a teacher trained on that modality
  alone has no such shortcut, so the student starts where a dedicated model ended;
- ``teacher_distill``: lambda x the mean squared distance between each available modality's
  encoder features and its frozen teacher's, over each sample's training subset (Uni-Modal
  Teacher: Du et al., "Improving Multi-Modal Learning with Uni-Modal Teachers", 2021).

The teachers are ``dedicated`` models of one modality each; ``dmrnet benchmark`` trains them
and fills in ``teacher_checkpoints`` (modality -> checkpoint). Plain PyTorch apart from the
stage description: nothing here knows about files beyond reading the teachers' checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dmrnet.batch import Batch
from dmrnet.errors import NON_NEGATIVE, ConfigError, local_checkpoint, require
from dmrnet.methods.base import (
    ModelConfig,
    ObjectivePart,
    Stage,
    TermContext,
    TrainingContext,
    checkpoint_network,
    drop_settings,
)
from dmrnet.methods.boosters import Booster, dense_unsupported, register_booster
from dmrnet.models.late_fusion import pool_features
from dmrnet.models.protocol import ModelOutput
from dmrnet.subsets import SubsetSpace

TEACHER_METHOD = "dedicated"
"""The method each unimodal teacher is trained with (complete inputs of one modality)."""


@dataclass
class TeacherOptions:
    """teacher_init: the encoders start from dedicated unimodal teachers' encoders;
    teacher_distill: lambda of the feature distillation to those teachers (0: none);
    teacher_checkpoints: modality -> the teacher's checkpoint (the benchmark trains the
    teachers and fills this in; give it yourself for ``dmrnet fit``)."""

    teacher_init: bool = False
    teacher_distill: float = 0.0
    teacher_checkpoints: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher_init, bool):
            raise ConfigError(f"teacher_init must be true or false; got {self.teacher_init!r}")
        require("teacher_distill", self.teacher_distill, NON_NEGATIVE)
        if self.teacher_checkpoints is not None and not isinstance(self.teacher_checkpoints,
                                                                   Mapping):
            raise ConfigError("teacher_checkpoints must map each modality to a checkpoint, "
                              f"e.g. {{audio: a.ckpt, video: v.ckpt}}; got "
                              f"{self.teacher_checkpoints!r}")

    @property
    def uses_teachers(self) -> bool:
        return self.teacher_init or self.teacher_distill > 0


def teacher_stage_name(modality: str) -> str:
    return f"teacher-{modality}"


def teacher_stages(settings: Mapping[str, Any], method: str, modalities: Sequence[str]
                   ) -> list[Stage]:
    """One dedicated teacher per modality, then the student that takes their checkpoints;
    a modality whose checkpoint ``teacher_checkpoints`` gives already has no teacher stage."""
    given = (settings.get("method_kwargs") or {}).get("teacher_checkpoints") or {}
    if not isinstance(given, Mapping):  # refused, naming the fix, when the options are read
        given = {}
    for m, path in given.items():
        local_checkpoint(path, f"{method} teacher_checkpoints.{m}")
    teacher = {**drop_settings(settings, "method_kwargs", "subset_weights"),
               "method": TEACHER_METHOD}
    trained = [m for m in modalities if m not in given]
    stages = [Stage(teacher_stage_name(m), teacher, modalities=[m]) for m in trained]
    needs = {f"method_kwargs.teacher_checkpoints.{m}": teacher_stage_name(m) for m in trained}
    return [*stages, Stage("", {**settings, "method": method}, needs=needs)]


def modality_encoder(network: nn.Module, modality: str) -> nn.Module:
    """The module that encodes ``modality`` alone (late fusion: ``encoders``; dense: the
    modality's ResNet stream), or a ConfigError for a network without one."""
    for attr in ("encoders", "streams"):
        table = getattr(network, attr, None)
        if isinstance(table, nn.ModuleDict) and modality in table:
            return table[modality]
    raise ConfigError(f"{type(network).__name__} has no encoder of modality {modality!r} to "
                      "take from a unimodal teacher")


class UnimodalTeachers(TrainingContext):
    """The frozen teachers (one network per modality): :meth:`initialise` copies their
    encoders into the student; ``__call__`` gives their features for distillation."""

    def __init__(self, modalities: Sequence[str], checkpoints: Mapping[str, str] | None,
                 init: bool, distill: bool) -> None:
        self.modalities = list(modalities)
        self.checkpoints = dict(checkpoints or {})
        self.init, self.distill = init, distill
        self.networks: dict[str, nn.Module] = {}

    def setup(self) -> None:
        if self.networks:
            return
        missing = [m for m in self.modalities if m not in self.checkpoints]
        if missing:
            raise ConfigError(
                f"teacher_init / teacher_distill need method_kwargs.teacher_checkpoints for "
                f"every modality; missing {missing}: train a 'dedicated' model of each "
                "modality first (dmrnet benchmark does it for you)")
        unknown = sorted(set(self.checkpoints) - set(self.modalities))
        if unknown:
            raise ConfigError(f"teacher_checkpoints names {unknown[0]!r}, not one of the "
                              f"modalities {self.modalities}")
        for m in self.modalities:
            network = checkpoint_network(self.checkpoints[m])
            if list(getattr(network, "modalities", [])) != [m]:
                raise ConfigError(f"the teacher of {m!r} ({self.checkpoints[m]!r}) is a model "
                                  f"of {getattr(network, 'modalities', '?')}, not of [{m!r}] "
                                  "alone")
            for p in network.parameters():
                p.requires_grad_(False)
            self.networks[m] = network.eval()

    def initialise(self, network: nn.Module) -> None:
        """Copy each teacher's encoder into ``network`` (a fresh start, not a resume)."""
        if not self.init:
            return
        self.setup()
        for m, teacher in self.networks.items():
            target = modality_encoder(network, m)
            state = modality_encoder(teacher, m).state_dict()
            try:
                target.load_state_dict(state)
            except RuntimeError as err:
                raise ConfigError(f"the teacher of {m!r} ({self.checkpoints[m]!r}) has an "
                                  f"encoder that does not fit the student's: "
                                  f"{str(err).splitlines()[0]}; train it with the student's "
                                  "encoder settings") from err

    def __call__(self, batch: Batch, device: Any) -> dict[str, Any]:
        if not self.distill:
            return {}
        self.setup()
        feats = []
        with torch.no_grad():
            for m in self.modalities:
                teacher = self.networks[m].to(device)
                steps = {m: batch.lengths[m]} if m in batch.lengths else None
                feats.append(pool_features(teacher.encode({m: batch.inputs[m]},
                                                          lengths=steps)[0]))
        return {"teacher_features": feats}


def distillation_loss(student: Sequence[Tensor], teacher: Sequence[Tensor],
                      mask: Tensor) -> Tensor:
    """Mean over (sample, modality it has) of the mean squared feature distance.

    Shapes: student / teacher M tensors (B, C_m); mask (B, M) bool.
    """
    per = torch.stack([(s.float() - t.float()).pow(2).mean(dim=1)
                       for s, t in zip(student, teacher, strict=True)], dim=1)
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1)


class TeacherDistillation(ObjectivePart):
    """The "teacher" term: lambda x :func:`distillation_loss` of the encoders' pooled features
    to the frozen teachers' (given by :class:`UnimodalTeachers` as ``teacher_features``)."""

    name = "teacher"

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    def terms(self, out: ModelOutput, target: Tensor, ctx: TermContext) -> dict[str, Tensor]:
        teacher = ctx.extra.get("teacher_features")
        if (self.weight <= 0 or teacher is None or out.modality_features is None
                or out.modality_mask is None):
            return {}
        return {"teacher": self.weight * distillation_loss(out.modality_features, teacher,
                                                           out.modality_mask)}


@register_booster
class Teachers(Booster):
    """Dedicated unimodal teachers trained first (a stage each), then ``teacher_init`` and/or
    ``teacher_distill`` (see the module's docstring)."""

    name = "teachers"
    description = "unimodal teachers: encoders started from them and/or distilled to them"
    Options = TeacherOptions
    training_only = ("teacher_checkpoints",)

    def check(self, options: Any, config: ModelConfig) -> None:
        if config.network.architecture == "dense" and self.read(options).teacher_distill > 0:
            raise dense_unsupported("teacher_distill")

    def network(self, options: Any, config: ModelConfig) -> dict[str, Any]:
        return {"expose_features": self.read(options).teacher_distill > 0}

    def parts(self, options: Any, config: ModelConfig, names: Sequence[str]
              ) -> list[ObjectivePart]:
        weight = self.read(options).teacher_distill
        return [TeacherDistillation(weight)] if weight > 0 else []

    def stages(self, options: Any, settings: Mapping[str, Any], method: str,
               modalities: Sequence[str]) -> list[Stage] | None:
        if not self.read(options).uses_teachers:
            return None
        return teacher_stages(settings, method, modalities)

    def training_context(self, options: Any, config: ModelConfig, network: nn.Module
                         ) -> TrainingContext | None:
        own = self.read(options)
        if not own.uses_teachers:
            return None
        return UnimodalTeachers(list(SubsetSpace(config.modalities).modalities),
                                own.teacher_checkpoints, init=own.teacher_init,
                                distill=own.teacher_distill > 0)
