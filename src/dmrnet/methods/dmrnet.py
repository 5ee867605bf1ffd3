"""DMRNet and its family: the baseline, full-input training and the ablations are the one
late-fusion (or dense) network with switches (variance head, sampling, KL and HCR weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from dmrnet.errors import COUNT, COUNT_FROM_1, NON_NEGATIVE, ConfigError, require
from dmrnet.methods.base import Contribution, Method, ModelConfig, Stage, register_method
from dmrnet.methods.modulation import GradientModulation
from dmrnet.methods.objectives import (
    HCR_REDUCTIONS,
    HCR_RULES,
    HCR_STATISTICS,
    HCR_WEIGHTINGS,
    DifficultySampling,
    HardCombinationRegularizer,
    KLRegularizer,
    MultimodalObjective,
)
from dmrnet.methods.teachers import TeacherOptions, UnimodalTeachers, teacher_stages
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
class BoosterOptions(TeacherOptions):
    """Boosters that combine with any member (baseline + X, dmrnet + X); our additions.

    teacher_init / teacher_distill / teacher_checkpoints: dedicated unimodal teachers trained
    first (see :mod:`dmrnet.methods.teachers`).
    unimodal_weight: lambda of the unimodal auxiliary heads, a linear classifier per modality
    on its encoder's pooled features whose task loss (over each sample's available
    modalities) is added x lambda (0: no heads; Du et al., ICML 2023: UMT/UME).
    unimodal_detach: the fused head's gradient does not reach the encoders, which learn from
    their unimodal heads only (DGL, Wei et al., ECCV 2024).
    difficulty_sampling: gamma of difficulty-aware subset sampling (0: off): from
    ``difficulty_warmup`` epochs on, training subsets are drawn with weight (validation error /
    mean)^gamma (see :class:`~dmrnet.methods.objectives.DifficultySampling`).
    ogm_alpha: alpha of on-the-fly gradient modulation, which slows the dominant modality's
    encoder (0: off; Peng et al., CVPR 2022: OGM-GE); ogm_noise: add its generalisation-
    enhancing gradient noise; ogm_epochs: modulate in the first this many epochs (0: all)
    (see :mod:`dmrnet.methods.modulation`).
    unimodal_ensemble: w > 0: at evaluation the unimodal heads vote with the fused head, logits
    = log p_fused + w x sum of the available modalities' log p_m (Du et al.'s UME, ICML 2023;
    needs unimodal_weight > 0; see ``MultimodalModel``'s ensemble_weight).
    init: "default" (each layer's own: the ResNets' Kaiming/Xavier-uniform, PyTorch's
    elsewhere) or "authors" (their ``weight_init`` over the whole network: see
    :func:`authors_init`)."""

    unimodal_weight: float = 0.0
    unimodal_detach: bool = False
    difficulty_sampling: float = 0.0
    difficulty_warmup: int = 1
    ogm_alpha: float = 0.0
    ogm_noise: bool = True
    ogm_epochs: int = 0
    unimodal_ensemble: float = 0.0
    init: str = "default"

    def __post_init__(self) -> None:
        TeacherOptions.__post_init__(self)
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        require("unimodal_ensemble", self.unimodal_ensemble, NON_NEGATIVE)
        require("difficulty_sampling", self.difficulty_sampling, NON_NEGATIVE)
        require("difficulty_warmup", self.difficulty_warmup, COUNT_FROM_1)
        require("unimodal_weight", self.unimodal_weight, NON_NEGATIVE)
        require("ogm_alpha", self.ogm_alpha, NON_NEGATIVE)
        require("ogm_epochs", self.ogm_epochs, COUNT)
        if not isinstance(self.ogm_noise, bool):
            raise ConfigError(f"ogm_noise must be true or false; got {self.ogm_noise!r}")
        if not isinstance(self.unimodal_detach, bool):
            raise ConfigError(f"unimodal_detach must be true or false; got "
                              f"{self.unimodal_detach!r}")
        if self.unimodal_detach and self.unimodal_weight == 0:
            raise ConfigError("unimodal_detach needs unimodal_weight > 0 (the heads are the "
                              "encoders' only teacher then)")
        if self.unimodal_ensemble > 0 and self.unimodal_weight == 0:
            raise ConfigError("unimodal_ensemble needs unimodal_weight > 0 (untrained heads "
                              "would vote); set both")


@dataclass
class DMRNetOptions(BoosterOptions, HCROptions, KLOptions):
    """DMRNet's options: alpha (KL) and beta with the HCR settings (see KLOptions and
    HCROptions), and the boosters (BoosterOptions)."""

    def __post_init__(self) -> None:
        KLOptions.__post_init__(self)
        HCROptions.__post_init__(self)
        BoosterOptions.__post_init__(self)


@dataclass
class NoHCROptions(BoosterOptions, KLOptions):
    """dmrnet_no_hcr: alpha and the boosters."""

    def __post_init__(self) -> None:
        KLOptions.__post_init__(self)
        BoosterOptions.__post_init__(self)


@dataclass
class NoKLOptions(BoosterOptions, HCROptions):
    """dmrnet_no_kl: beta with the HCR settings, and the boosters."""

    def __post_init__(self) -> None:
        HCROptions.__post_init__(self)
        BoosterOptions.__post_init__(self)


@dataclass
class NoOptions:
    """The deterministic members have no options of their own."""


@dataclass(frozen=True)
class Parts:
    """Which option groups a member's ``Options`` has, read by type (a group it lacks is
    None), so every value is a typed field read: a misspelt name fails, never reads 0."""

    kl: KLOptions | None
    hcr: HCROptions | None
    boosters: BoosterOptions | None

    @classmethod
    def of(cls, opts: object) -> Parts:
        return cls(opts if isinstance(opts, KLOptions) else None,
                   opts if isinstance(opts, HCROptions) else None,
                   opts if isinstance(opts, BoosterOptions) else None)

    @property
    def alpha(self) -> float:
        return self.kl.alpha if self.kl is not None else 0.0

    @property
    def beta(self) -> float:
        return self.hcr.beta if self.hcr is not None else 0.0

    def booster(self, name: str) -> Any:
        """A booster option's value; its off value (0, False, "default") where the member
        has no boosters."""
        if self.boosters is not None:
            return getattr(self.boosters, name)
        field = BoosterOptions.__dataclass_fields__[name]  # a KeyError names a misspelling
        return field.default


class DMRNetFamily(Method):
    """The family's switches; each registered member sets them, and its ``Options`` say which
    of KL (alpha) and HCR (beta, hcr_*) it has.

    Attributes:
        variance / sample: the probabilistic embedding's switches (see ProbabilisticEmbedding).
    """

    variance: ClassVar[bool] = True
    sample: ClassVar[bool] = True
    Options = DMRNetOptions

    def objective(self, config: ModelConfig, names: list[str], spatial: str = "sum"
                  ) -> MultimodalObjective:
        opts = self.options(config.method_kwargs)
        parts = Parts.of(opts)
        alpha, beta = parts.alpha, parts.beta
        kl = KLRegularizer(alpha, spatial=spatial) if self.variance else None
        hcr = (HardCombinationRegularizer(names, beta, opts.hcr_warmup_epochs,
                                          opts.hcr_top_k, candidates=opts.hcr_candidates,
                                          hard_subsets=opts.hcr_subsets, rule=opts.hcr_rule,
                                          every=int(opts.hcr_every),
                                          weighting=opts.hcr_weighting,
                                          reduction=opts.hcr_reduction,
                                          statistic=opts.hcr_statistic)
               if self.variance and beta > 0 else self.fixed_rescale(opts, names))
        gamma = parts.booster("difficulty_sampling")
        sampling = (DifficultySampling(names, gamma, int(parts.booster("difficulty_warmup")))
                    if gamma > 0 else None)
        ogm = parts.booster("ogm_alpha")
        modulation = (GradientModulation(SubsetSpace(config.modalities).modalities, ogm,
                                          parts.booster("ogm_noise"),
                                          int(parts.booster("ogm_epochs")))
                      if ogm > 0 else None)
        return MultimodalObjective(kl, hcr, label_smoothing=config.label_smoothing,
                                   class_weights=config.class_weights,
                                   unimodal_weight=parts.booster("unimodal_weight"),
                                   teacher_weight=parts.booster("teacher_distill"),
                                   sampling=sampling, modulation=modulation)

    def fixed_rescale(self, opts: Any, names: list[str]) -> HardCombinationRegularizer | None:
        """A loss term for members without the variance head (none but the control)."""
        return None

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        network, objective = self._build(config)
        if Parts.of(self.options(config.method_kwargs)).booster("init") == "authors":
            authors_init(network)
        return network, objective

    def _build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        parts = Parts.of(self.options(config.method_kwargs))
        beta, unimodal = parts.beta, parts.booster("unimodal_weight")
        distill = parts.booster("teacher_distill") > 0
        ogm = parts.booster("ogm_alpha") > 0
        ensemble = float(parts.booster("unimodal_ensemble"))
        if config.architecture == "dense":
            heads = [k for k, on in (("unimodal_weight", unimodal > 0),
                                     ("unimodal_ensemble", ensemble > 0),
                                     ("teacher_distill", distill), ("ogm_alpha", ogm)) if on]
            if heads:
                raise ConfigError(f"{heads[0]} applies to classification (late_fusion) "
                                  "models; dense models have no unimodal heads or pooled "
                                  "features yet (teacher_init works for both)")
            dense = dense_network(config, self.variance, self.sample, beta)
            return dense, self.objective(config, dense.space.names, spatial="mean")
        model = late_fusion_network(config, self.variance, self.sample,
                                    unimodal_heads=unimodal > 0 or ogm,
                                    detach_fused=bool(parts.booster("unimodal_detach")),
                                    expose_features=distill,
                                    probe_heads=ogm and unimodal == 0,
                                    ensemble_weight=ensemble)
        return model, self.objective(config, model.space.names)

    def stages(self, settings: Mapping[str, Any], modalities: Sequence[str]) -> list[Stage]:
        """One stage; with unimodal teachers, a dedicated teacher per modality first."""
        boosters = Parts.of(self.options(settings.get("method_kwargs"))).boosters
        if boosters is not None and boosters.uses_teachers:
            return teacher_stages(settings, self.name, modalities)
        return super().stages(settings, modalities)

    def training_context(self, config: ModelConfig, network: nn.Module
                         ) -> UnimodalTeachers | None:
        opts = Parts.of(self.options(config.method_kwargs)).boosters
        if opts is None or not opts.uses_teachers:
            return None
        return UnimodalTeachers(list(SubsetSpace(config.modalities).modalities),
                                opts.teacher_checkpoints, init=opts.teacher_init,
                                distill=opts.teacher_distill > 0)

    def serving_kwargs(self, method_kwargs: Mapping[str, object] | None
                       ) -> dict[str, object] | None:
        """A trained network serves without its teachers: their paths are not stored."""
        if method_kwargs is None:
            return None
        return {k: v for k, v in method_kwargs.items() if k != "teacher_checkpoints"}

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
    if config.architecture not in ("late_fusion", "dense"):
        raise ConfigError("architecture must be 'late_fusion' or 'dense'; got "
                          f"{config.architecture!r}")
    mods = list(SubsetSpace(config.modalities).modalities)
    encoders, shapes = config.encoders or {}, config.input_shapes
    unknown = [m for m in encoders if m not in mods]
    if unknown:
        raise ConfigError(f"encoder given for modality {unknown[0]!r}, not one of {mods}")
    missing_shape = [m for m in mods if m not in shapes]
    if missing_shape:
        raise ConfigError(f"no input shape for modality {missing_shape[0]!r}")
    built = {}
    for m in mods:
        cfg = dict(encoders.get(m, {}))
        name = str(cfg.pop("name", config.encoder))
        kwargs = {**(config.encoder_kwargs or {}), **cfg} if name == config.encoder else cfg
        built[m] = create_encoder(name, tuple(shapes[m]), **kwargs)
    spatial = {bool(getattr(e, "spatial", False)) for e in built.values()}
    if len(spatial) != 1:
        raise ConfigError(
            "all encoders must give the same kind of features (all vectors or all maps) to be "
            "fused; mix of " + ", ".join(f"{m}: {type(e).__name__}" for m, e in built.items())
        )
    trunk_module = None
    if config.trunk is not None:
        fused = create_fusion(config.fusion,
                              [int(e.out_features) for e in built.values()]).out_features
        trunk_module = create_trunk(config.trunk, fused, **dict(config.trunk_kwargs or {}))
    return MultimodalModel(
        mods, built, config.num_classes, embed_dim=config.embed_dim, fusion=config.fusion,
        variance=variance, sample=sample, missing_at=config.missing_at, input_shapes=shapes,
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
    dense = dict(config.dense_kwargs or {})
    return DenseMultimodalModel(
        mods, {m: s[0] for m, s in shapes.items()}, config.num_classes,
        embed_dim=config.embed_dim, variance=variance, sample=sample,
        aux_decoder=bool(dense.pop("aux_decoder", False)) and variance and beta > 0,
        **dict(config.encoder_kwargs or {}), **dense,  # type: ignore[arg-type]
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
    Options = BoosterOptions
    role = "baseline"


@register_method
class FullOnly(DMRNetFamily):
    name = "full_only"
    description = "trained on complete inputs only"
    variance, sample = False, False
    Options = NoOptions
    train_subsets = "full"


@register_method
class DMRNetNoHCR(DMRNetFamily):
    name = "dmrnet_no_hcr"
    description = "DMRNet without HCR"
    Options = NoHCROptions


@register_method
class DMRNetNoKL(DMRNetFamily):
    name = "dmrnet_no_kl"
    description = "DMRNet without KL"
    Options = NoKLOptions


@dataclass
class AuthorsOptions(DMRNetOptions):
    """DMRNet's options with the authors' code's behaviour as defaults: their HCR reduction
    and variance statistic and their initialisation (the warm-up, epochs 0-5, is every
    member's default)."""

    hcr_reduction: str = "authors"
    hcr_statistic: str = "authors"
    init: str = "authors"


@register_method
class DMRNetAuthors(DMRNetFamily):
    """DMRNet as the authors' public code runs it (their CREMA-D / Kinetics-Sounds script):
    the network and KL of ``dmrnet``; HCR reduced as their broadcast computes it (every
    sample's loss x (1 + beta x n_hard) from the selection on); the per-batch variance
    statistic; Xavier-normal initialisation. ``dmrnet`` is the paper's method as written."""

    name = "dmrnet_authors"
    description = "DMRNet as the authors' code runs it (their HCR reduction and statistic)"
    Options = AuthorsOptions


@dataclass
class RescaleOptions(BoosterOptions):
    """beta and the epoch the rescale starts (hcr_warmup_epochs, as DMRNet's selection)."""

    beta: float = 0.2
    hcr_warmup_epochs: int = 6

    def __post_init__(self) -> None:
        BoosterOptions.__post_init__(self)
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
    Options = RescaleOptions

    def fixed_rescale(self, opts: Any, names: list[str]) -> HardCombinationRegularizer | None:
        if opts.beta == 0:
            return None
        return HardCombinationRegularizer(names, opts.beta, opts.hcr_warmup_epochs,
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


@dataclass
class TutoredOptions(BoosterOptions):
    """The boosters with the preset's defaults: teacher_init on; unimodal_weight and
    unimodal_ensemble None, which resolve to 2.0 and 0.5 for classification and to 0 for dense
    models (no unimodal heads there yet); the vote is off (0) when the heads are (see
    :func:`preset_heads`)."""

    teacher_init: bool = True
    unimodal_weight: float | None = None  # type: ignore[assignment]
    unimodal_ensemble: float | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        weight, ensemble = self.unimodal_weight, self.unimodal_ensemble
        resolved = preset_heads({"unimodal_weight": weight, "unimodal_ensemble": ensemble},
                                dense=False)
        self.unimodal_weight = resolved["unimodal_weight"]
        self.unimodal_ensemble = resolved["unimodal_ensemble"]
        try:
            BoosterOptions.__post_init__(self)
        finally:
            self.unimodal_weight, self.unimodal_ensemble = weight, ensemble


@register_method
class Tutored(DMRNetFamily):
    """Our preset: the baseline's network, its encoders started from dedicated unimodal
    teachers (``teacher_init``) and kept able to classify alone by unimodal heads
    (``unimodal_weight`` 2), which vote with the fused head at evaluation
    (``unimodal_ensemble`` 0.5). Chosen on validation splits; ``docs/results.md`` has the
    experiments."""

    name = "tutored"
    description = "preset: baseline + unimodal-teacher init + unimodal heads that vote"
    variance, sample = False, False
    Options = TutoredOptions

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        kwargs = preset_heads(config.method_kwargs or {}, dense=config.architecture == "dense")
        return super().build(dataclasses.replace(config, method_kwargs=kwargs))
