"""DMRNet and its family: the baseline, full-input training and the ablations are the one
late-fusion (or dense) network with switches (variance head, sampling), option groups (KL,
HCR) and boosters (unimodal heads, OGM, unimodal teachers, difficulty-aware sampling, the
initialisation; see :mod:`dmrnet.methods.boosters`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from dmrnet.errors import COUNT, COUNT_FROM_1, NON_NEGATIVE, ConfigError, require
from dmrnet.methods.base import (
    Contribution,
    Method,
    ModelConfig,
    Stage,
    TrainingContext,
    register_method,
)
from dmrnet.methods.boosters import (
    BOOSTERS,
    Booster,
    compose_options,
    group_of,
    register_booster,
)
from dmrnet.methods.heads import UnimodalHeads
from dmrnet.methods.modulation import OGM
from dmrnet.methods.objectives import (
    HCR_REDUCTIONS,
    HCR_RULES,
    HCR_STATISTICS,
    HCR_WEIGHTINGS,
    HardCombinationRegularizer,
    KLRegularizer,
    MultimodalObjective,
)
from dmrnet.methods.sampling import DifficultyAwareSampling
from dmrnet.methods.teachers import Teachers
from dmrnet.models.dense import DenseMultimodalModel
from dmrnet.models.late_fusion import MultimodalModel
from dmrnet.nn import create_encoder, create_trunk
from dmrnet.nn.fusion import create_fusion
from dmrnet.subsets import SubsetSpace


@dataclass
class KLOptions:
    """alpha: weight of KL(N(mu, sigma^2) || N(0, I)) (paper: 1e-3)."""

    alpha: float = 1e-3

    def __post_init__(self) -> None:
        require("alpha", self.alpha, NON_NEGATIVE)


@dataclass
class HCROptions:
    """beta: weight of the hard combination regulariser (paper: 0.2 CREMA-D, 0.3
    Kinetics-Sounds, 0.7 CASIA-SURF); hcr_warmup_epochs: epochs of variance accumulation
    before the hard subsets are chosen; hcr_top_k: how many; hcr_candidates: "unimodal" (the
    authors' rule) or "all"; hcr_subsets: a fixed list of hard subsets instead; hcr_rule:
    what ranks the subsets, "variance" (the authors') or "val_loss" / "val_error" (per subset
    on the validation split); hcr_every: re-select every this many epochs after warm-up (0:
    once); hcr_weighting: "top_k" (weight 1 on the top k) or "soft" (every candidate weighted
    by its difficulty relative to the candidates' mean). The last three are our additions.
    hcr_reduction: "paper" (beta x the hard samples' loss / B, as written) or "authors" (what
    their code computes: beta x n_hard x the batch mean loss); hcr_statistic: "pooled" (one
    mean per subset over the warm-up) or "authors" (their per-batch means). The default
    warm-up, 6 epochs, selects after epoch 5 and applies HCR from epoch 6, as their code.
    See :class:`~dmrnet.methods.objectives.HardCombinationRegularizer`."""

    beta: float = 0.2
    hcr_warmup_epochs: int = 6
    hcr_top_k: int = 1
    hcr_candidates: str = "unimodal"
    hcr_subsets: list[str] | None = None
    hcr_rule: str = "variance"
    hcr_every: int = 0
    hcr_weighting: str = "top_k"
    hcr_reduction: str = "paper"
    hcr_statistic: str = "pooled"

    def __post_init__(self) -> None:
        require("beta", self.beta, NON_NEGATIVE)
        for name, allowed in (("hcr_reduction", HCR_REDUCTIONS),
                              ("hcr_statistic", HCR_STATISTICS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got "
                                  f"{getattr(self, name)!r}")
        require("hcr_warmup_epochs", self.hcr_warmup_epochs, COUNT)
        require("hcr_top_k", self.hcr_top_k, COUNT_FROM_1)
        if self.hcr_candidates not in ("unimodal", "all"):
            raise ConfigError("hcr_candidates must be 'unimodal' or 'all'; got "
                              f"{self.hcr_candidates!r}")
        require("hcr_every", self.hcr_every, COUNT)
        if self.hcr_rule not in HCR_RULES:
            raise ConfigError(f"hcr_rule must be one of {', '.join(HCR_RULES)}; got "
                              f"{self.hcr_rule!r}")
        if self.hcr_weighting not in HCR_WEIGHTINGS:
            raise ConfigError("hcr_weighting must be 'top_k' or 'soft'; got "
                              f"{self.hcr_weighting!r}")
        if isinstance(self.hcr_subsets, str):  # "a,b" from a command line
            self.hcr_subsets = [s.strip() for s in self.hcr_subsets.split(",") if s.strip()]


INITS = ("default", "authors")


def authors_init(network: nn.Module) -> None:
    """The authors' ``weight_init``, applied to every layer as their ``model.apply`` does:
    Xavier-normal linear weights and zero biases, Kaiming-normal (fan-out, ReLU) convolution
    weights (biases left as built), BatchNorm2d weight 1 and bias 0."""
    for m in network.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class InitOptions:
    """init: "default" (each layer's own: the ResNets' Kaiming/Xavier-uniform, PyTorch's
    elsewhere) or "authors" (their ``weight_init`` over the whole network: see
    :func:`authors_init`)."""

    init: str = "default"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")


@register_booster
class Initialisation(Booster):
    """The network's initialisation (``init``), applied once it is built."""

    name = "init"
    description = "the authors' initialisation over the whole network"
    Options = InitOptions

    def after_build(self, options: Any, network: nn.Module) -> None:
        if self.read(options).init == "authors":
            authors_init(network)


FAMILY_BOOSTERS = (UnimodalHeads.name, OGM.name, Teachers.name, DifficultyAwareSampling.name,
                   Initialisation.name)
"""The boosters every trainable member of the family takes (baseline + X, dmrnet + X), in
the order their loss terms are added."""


class DMRNetFamily(Method):
    """The family: one late-fusion (or dense) network whose members differ by switches,
    option groups and boosters.

    Attributes:
        variance / sample: the probabilistic embedding's switches (see ProbabilisticEmbedding).
        groups: the member's own option groups (KLOptions: alpha; HCROptions: beta, hcr_*).
        boosters: registered booster names (:data:`~dmrnet.methods.boosters.BOOSTERS`).
        presets: defaults of the member that differ from its groups' and boosters' (a preset
            is a named set of defaults).
    ``Options`` is composed from ``groups`` and the boosters' options
    (:func:`~dmrnet.methods.boosters.compose_options`) when a subclass is defined.
    """

    variance: ClassVar[bool] = True
    sample: ClassVar[bool] = True
    groups: ClassVar[tuple[type, ...]] = (KLOptions, HCROptions)
    boosters: ClassVar[tuple[str, ...]] = FAMILY_BOOSTERS
    presets: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" not in cls.__dict__:
            cls.Options = compose_options(  # type: ignore[misc]
                f"{cls.__name__}Options",
                [*cls.groups, *(BOOSTERS.get(b).Options for b in cls.boosters)],
                cls.presets, cls.prepare_options)

    @staticmethod
    def prepare_options(values: dict[str, Any]) -> dict[str, Any]:
        """Option values as their groups check them (a preset may resolve unset ones)."""
        return values

    def booster_units(self) -> list[Booster]:
        return [BOOSTERS.get(b) for b in self.boosters]

    def objective(self, config: ModelConfig, names: list[str], options: Any,
                  spatial: str = "sum") -> MultimodalObjective:
        """The boosters' parts, then alpha * KL and beta * HCR where the member has them."""
        parts = [p for b in self.booster_units() for p in b.parts(options, config, names)]
        kl_opts, hcr_opts = group_of(options, KLOptions), group_of(options, HCROptions)
        if self.variance:
            parts.append(KLRegularizer(kl_opts.alpha if kl_opts else 0.0, spatial=spatial))
        hcr = (HardCombinationRegularizer(names, hcr_opts.beta, hcr_opts.hcr_warmup_epochs,
                                          hcr_opts.hcr_top_k, candidates=hcr_opts.hcr_candidates,
                                          hard_subsets=hcr_opts.hcr_subsets,
                                          rule=hcr_opts.hcr_rule,
                                          every=int(hcr_opts.hcr_every),
                                          weighting=hcr_opts.hcr_weighting,
                                          reduction=hcr_opts.hcr_reduction,
                                          statistic=hcr_opts.hcr_statistic)
               if self.variance and hcr_opts is not None and hcr_opts.beta > 0
               else self.fixed_rescale(options, names))
        if hcr is not None:
            parts.append(hcr)
        return MultimodalObjective(parts, label_smoothing=config.label_smoothing,
                                   class_weights=config.class_weights)

    def fixed_rescale(self, options: Any, names: list[str]) -> HardCombinationRegularizer | None:
        """A loss term for members without the variance head (none but the control)."""
        return None

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        options = self.options(config.method_kwargs)
        boosters = self.booster_units()
        for booster in boosters:
            booster.check(options, config)
        network: nn.Module
        if config.network.architecture == "dense":
            hcr_opts = group_of(options, HCROptions)
            beta = hcr_opts.beta if hcr_opts is not None else 0.0
            network = dense_network(config, self.variance, self.sample, beta)
            objective = self.objective(config, network.space.names, options, spatial="mean")
        else:
            asked: dict[str, Any] = {}
            for booster in boosters:  # what the boosters ask of the network; flags add up
                for key, value in booster.network(options, config).items():
                    asked[key] = (asked.get(key, False) or value) if isinstance(value, bool) \
                        else value
            network = late_fusion_network(config, self.variance, self.sample, **asked)
            objective = self.objective(config, network.space.names, options)
        for booster in boosters:
            booster.after_build(options, network)
        return network, objective

    def stages(self, settings: Mapping[str, Any], modalities: Sequence[str]) -> list[Stage]:
        """One stage, unless a booster needs earlier ones (unimodal teachers)."""
        options = self.options(settings.get("method_kwargs"))
        for booster in self.booster_units():
            stages = booster.stages(options, settings, self.name, modalities)
            if stages is not None:
                return stages
        return super().stages(settings, modalities)

    def training_context(self, config: ModelConfig, network: nn.Module
                         ) -> TrainingContext | None:
        options = self.options(config.method_kwargs)
        for booster in self.booster_units():
            context = booster.training_context(options, config, network)
            if context is not None:
                return context
        return None

    def serving_kwargs(self, method_kwargs: Mapping[str, object] | None
                       ) -> dict[str, object] | None:
        """A trained network serves without what only training needs (e.g. the teachers'
        checkpoints): those options are not stored."""
        if method_kwargs is None:
            return None
        dropped = {k for b in self.booster_units() for k in b.training_only}
        return {k: v for k, v in method_kwargs.items() if k not in dropped}
    def analysis(self, runs: Sequence[Mapping[str, Any]]) -> Contribution | None:
        """HCR's effect: each seed's hard subsets and their test metric against the same
        seed's ``dmrnet_no_hcr`` run, where the benchmark has one."""
        by = {(r["method"], r["seed"]): r for r in runs}
        rows = []
        for r in runs:
            hard = (r.get("objective_state") or {}).get("hard_subsets") or []
            if r["method"] != self.name or not hard:
                continue
            ref = by.get(("dmrnet_no_hcr", r["seed"]))
            for subset in hard:
                item = {"seed": r["seed"], "subset": subset, "accuracy": r["per_subset"][subset]}
                if ref is not None:
                    item["accuracy_no_hcr"] = ref["per_subset"][subset]
                    item["change"] = r["per_subset"][subset] - ref["per_subset"][subset]
                rows.append(item)
        if not rows:
            return None
        lines = [f"{self.name}: the hard subsets HCR chose, against dmrnet_no_hcr", "",
                 "| seed | hard subset | accuracy | without HCR | change |",
                 "|---|---|---|---|---|"]
        for h in rows:
            no = f"{h['accuracy_no_hcr']:.4f}" if "accuracy_no_hcr" in h else "—"
            ch = f"{h['change']:+.4f}" if "change" in h else "—"
            lines.append(f"| {h['seed']} | {h['subset']} | {h['accuracy']:.4f} | {no} | {ch} |")
        return Contribution(rows, lines)


def late_fusion_network(config: ModelConfig, variance: bool, sample: bool,
                        unimodal_heads: bool = False, detach_fused: bool = False,
                        expose_features: bool = False, probe_heads: bool = False,
                        ensemble_weight: float = 0.0) -> MultimodalModel:
    """Encoders per modality -> fusion (-> trunk) -> embedding -> classifier.

    ``encoder``/``encoder_kwargs`` apply to every modality; ``encoders`` overrides per modality
    with ``{"name": ..., **kwargs}``. ``trunk``/``trunk_kwargs`` name shared layers after
    fusion (mid-level fusion, e.g. "resnet_trunk" for CASIA-SURF).
    """
    net = config.network
    if net.architecture not in ("late_fusion", "dense"):
        raise ConfigError("architecture must be 'late_fusion' or 'dense'; got "
                          f"{net.architecture!r}")
    mods = list(SubsetSpace(config.modalities).modalities)
    encoders, shapes = net.encoders or {}, config.input_shapes
    unknown = [m for m in encoders if m not in mods]
    if unknown:
        raise ConfigError(f"encoder given for modality {unknown[0]!r}, not one of {mods}")
    missing_shape = [m for m in mods if m not in shapes]
    if missing_shape:
        raise ConfigError(f"no input shape for modality {missing_shape[0]!r}")
    built = {}
    for m in mods:
        cfg = dict(encoders.get(m, {}))
        name = str(cfg.pop("name", net.encoder))
        kwargs = {**(net.encoder_kwargs or {}), **cfg} if name == net.encoder else cfg
        built[m] = create_encoder(name, tuple(shapes[m]), modality=f"modality {m!r}",
                                  variable_length=m in (config.sequences or ()), **kwargs)
    spatial = {bool(getattr(e, "spatial", False)) for e in built.values()}
    if len(spatial) != 1:
        raise ConfigError(
            "all encoders must give the same kind of features (all vectors or all maps) to be "
            "fused; mix of " + ", ".join(f"{m}: {type(e).__name__}" for m, e in built.items())
        )
    trunk_module = None
    if net.trunk is not None:
        fused = create_fusion(net.fusion,
                              [int(e.out_features) for e in built.values()]).out_features
        trunk_module = create_trunk(net.trunk, fused, **dict(net.trunk_kwargs or {}))
    return MultimodalModel(
        mods, built, config.num_classes, embed_dim=net.embed_dim, fusion=net.fusion,
        variance=variance, sample=sample, missing_at=net.missing_at, input_shapes=shapes,
        trunk=trunk_module, spatial=spatial.pop(), unimodal_heads=unimodal_heads,
        detach_fused=detach_fused, expose_features=expose_features, probe_heads=probe_heads,
        ensemble_weight=ensemble_weight,
    )


def dense_network(config: ModelConfig, variance: bool, sample: bool, beta: float
                  ) -> DenseMultimodalModel:
    """The segmentation network (:class:`~dmrnet.models.dense.DenseMultimodalModel`):
    ``encoder_kwargs`` give its ResNet ``layers``/``block``/``width``, ``dense_kwargs`` its
    ``decoder_channels``, ``deep_supervision`` and ``aux_decoder``; its KL is per pixel."""
    mods = list(SubsetSpace(config.modalities).modalities)
    shapes = {m: tuple(config.input_shapes[m]) for m in mods}
    bad = [m for m, s in shapes.items() if len(s) != 3]
    if bad:
        raise ConfigError(f"dense models need (C, H, W) inputs; modality {bad[0]!r} has "
                          f"{shapes[bad[0]]}")
    dense = dict(config.network.dense_kwargs or {})
    return DenseMultimodalModel(
        mods, {m: s[0] for m, s in shapes.items()}, config.num_classes,
        embed_dim=config.network.embed_dim, variance=variance, sample=sample,
        aux_decoder=bool(dense.pop("aux_decoder", False)) and variance and beta > 0,
        **dict(config.network.encoder_kwargs or {}), **dense,  # type: ignore[arg-type]
    )


@register_method
class DMRNet(DMRNetFamily):
    name = "dmrnet"
    description = "DMRNet: sampled embedding + KL + HCR"


@register_method
class Baseline(DMRNetFamily):
    name = "baseline"
    description = "common subspace / modality dropout"
    variance, sample = False, False
    groups = ()
    role = "baseline"


@register_method
class FullOnly(DMRNetFamily):
    name = "full_only"
    description = "trained on complete inputs only"
    variance, sample = False, False
    groups, boosters = (), ()
    train_subsets = "full"


@register_method
class DMRNetNoHCR(DMRNetFamily):
    name = "dmrnet_no_hcr"
    description = "DMRNet without HCR"
    groups = (KLOptions,)


@register_method
class DMRNetNoKL(DMRNetFamily):
    name = "dmrnet_no_kl"
    description = "DMRNet without KL"
    groups = (HCROptions,)


@register_method
class DMRNetAuthors(DMRNetFamily):
    """DMRNet as the authors' public code runs it (their CREMA-D / Kinetics-Sounds script):
    the network and KL of ``dmrnet``; HCR reduced as their broadcast computes it (every
    sample's loss x (1 + beta x n_hard) from the selection on); the per-batch variance
    statistic; Xavier-normal initialisation. ``dmrnet`` is the paper's method as written. Its
    options are DMRNet's with those as defaults (the warm-up, epochs 0-5, is every member's
    default)."""

    name = "dmrnet_authors"
    description = "DMRNet as the authors' code runs it (their HCR reduction and statistic)"
    presets: ClassVar[dict[str, Any]] = {"hcr_reduction": "authors", "hcr_statistic": "authors",
                                         "init": "authors"}


@dataclass
class RescaleOptions:
    """beta and the epoch the rescale starts (hcr_warmup_epochs, as DMRNet's selection)."""

    beta: float = 0.2
    hcr_warmup_epochs: int = 6

    def __post_init__(self) -> None:
        require("beta", self.beta, NON_NEGATIVE)
        require("hcr_warmup_epochs", self.hcr_warmup_epochs, COUNT_FROM_1)


@register_method
class LossRescale(DMRNetFamily):
    """A control for the authors' HCR: the baseline whose loss, from epoch
    ``hcr_warmup_epochs`` on, is scaled as their HCR scales it, (1 + beta x n) x the batch
    mean, with n the batch's samples of one fixed subset (the first modality alone; under
    uniform subset sampling every subset's count has the same distribution), so nothing is
    selected and no subset is favoured."""

    name = "loss_rescale"
    description = "control: baseline + the authors' HCR loss scaling, no selection"
    variance, sample = False, False
    groups = (RescaleOptions,)

    def fixed_rescale(self, options: Any, names: list[str]) -> HardCombinationRegularizer | None:
        own = group_of(options, RescaleOptions)
        if own.beta == 0:
            return None
        return HardCombinationRegularizer(names, own.beta, own.hcr_warmup_epochs,
                                          hard_subsets=[names[0]], reduction="authors")


def preset_heads(options: Mapping[str, Any], dense: bool) -> dict[str, Any]:
    """``options`` with the preset's unimodal_weight (2) and unimodal_ensemble (0.5) where
    they are None or unset; 0 for dense models, and no vote where the heads are off."""
    out = dict(options)
    if out.get("unimodal_weight") is None:
        out["unimodal_weight"] = 0.0 if dense else 2.0
    if out.get("unimodal_ensemble") is None:
        weight = out["unimodal_weight"]  # checked later; a bad value gets its own error there
        heads = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
        out["unimodal_ensemble"] = 0.5 if heads else 0.0
    return out


@register_method
class Tutored(DMRNetFamily):
    """Our preset: the baseline's network, its encoders started from dedicated unimodal
    teachers (``teacher_init``) and kept able to classify alone by unimodal heads
    (``unimodal_weight`` 2), which vote with the fused head at evaluation
    (``unimodal_ensemble`` 0.5). Its defaults: teacher_init on; unimodal_weight and
    unimodal_ensemble None, which resolve to 2.0 and 0.5 for classification and to 0 for
    dense models (no unimodal heads there yet); the vote is off (0) when the heads are (see
    :func:`preset_heads`). Chosen on validation splits; ``docs/results.md`` has the
    experiments."""

    name = "tutored"
    description = "preset: baseline + unimodal-teacher init + unimodal heads that vote"
    variance, sample = False, False
    groups = ()
    presets: ClassVar[dict[str, Any]] = {"teacher_init": True, "unimodal_weight": None,
                                         "unimodal_ensemble": None}

    @staticmethod
    def prepare_options(values: dict[str, Any]) -> dict[str, Any]:
        return preset_heads(values, dense=False)

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        kwargs = preset_heads(config.method_kwargs or {},
                              dense=config.network.architecture == "dense")
        return super().build(dataclasses.replace(config, method_kwargs=kwargs))


DMRNetOptions = DMRNet.Options
AuthorsOptions = DMRNetAuthors.Options
