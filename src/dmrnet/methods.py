"""Method presets (DMRNet, the baseline, ablations) and the factory that builds them.

Every method here is the one :class:`~dmrnet.method.MultimodalModel` with different switches;
peer methods with other architectures register their own builders beside these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dmrnet.errors import ConfigError
from dmrnet.method import (
    DMRNetObjective,
    HardCombinationRegularizer,
    KLRegularizer,
    MultimodalModel,
)
from dmrnet.registry import create_encoder, create_trunk
from dmrnet.subsets import SubsetSpace


@dataclass(frozen=True)
class MethodSpec:
    """What distinguishes one method from another in this family.

    Attributes:
        variance / sample: the probabilistic embedding's switches (see ProbabilisticEmbedding).
        alpha: KL weight. beta: HCR weight (0 = no HCR).
        train_subsets: "random" (one subset per sample, the protocol) or "full" (complete
            inputs only). The "dedicated" reference is a "full_only" model per subset, trained on
            that subset's modalities (see :mod:`dmrnet.benchmark`).
    """

    name: str
    description: str
    variance: bool
    sample: bool
    alpha: float
    beta: float
    train_subsets: str = "random"


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in [
        MethodSpec("dmrnet", "DMRNet: sampled embedding + KL + HCR", True, True, 1e-3, 0.2),
        MethodSpec("baseline", "common subspace / modality dropout", False, False, 0.0, 0.0),
        MethodSpec("full_only", "trained on complete inputs only", False, False, 0.0, 0.0, "full"),
        MethodSpec("dmrnet_no_hcr", "DMRNet without HCR", True, True, 1e-3, 0.0),
        MethodSpec("dmrnet_no_kl", "DMRNet without KL", True, True, 0.0, 0.2),
        MethodSpec("shaspec", "ShaSpec (CVPR 2023): shared + specific encoders", False, False,
                   0.0, 0.0),
        MethodSpec("mmanet", "MMANet (CVPR 2023): teacher distillation + weak-subset mining",
                   False, False, 0.0, 0.0),
    ]
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


def build_method(
    method: str,
    modalities: Sequence[str],
    input_shapes: Mapping[str, Sequence[int]],
    num_classes: int,
    encoder: str = "mlp",
    encoder_kwargs: Mapping[str, object] | None = None,
    encoders: Mapping[str, Mapping[str, object]] | None = None,
    embed_dim: int = 256,
    fusion: str = "concat",
    missing_at: str = "feature",
    alpha: float | None = None,
    beta: float | None = None,
    hcr_warmup_epochs: int = 5,
    hcr_top_k: int = 1,
    hcr_candidates: str = "unimodal",
    hcr_subsets: Sequence[str] | None = None,
    label_smoothing: float = 0.0,
    trunk: str | None = None,
    trunk_kwargs: Mapping[str, object] | None = None,
    architecture: str = "late_fusion",
    dense_kwargs: Mapping[str, object] | None = None,
    class_weights: Sequence[float] | None = None,
    method_kwargs: Mapping[str, object] | None = None,
) -> tuple[MultimodalModel, DMRNetObjective]:
    """Build the model and its objective for a named method.

    ``encoder``/``encoder_kwargs`` apply to every modality; ``encoders`` overrides per modality
    with ``{"name": ..., **kwargs}``. ``alpha``/``beta`` None take the method's defaults.
    ``trunk``/``trunk_kwargs`` name shared layers after fusion (mid-level fusion, e.g.
    "resnet_trunk" for CASIA-SURF). ``method_kwargs`` go to a peer method (ShaSpec's
    ``dao_weight``, ``dco_weight``, ``proj_dim``; MMANet's ``temperature``, ``distill_weight``,
    ``feature_weight``, ``mar_weight``). ``architecture="dense"`` builds the segmentation model
    (:class:`~dmrnet.segmentation.DenseMultimodalModel`; ``encoder_kwargs`` give its ResNet
    ``layers``/``block``/``width``, ``dense_kwargs`` its ``decoder_channels``,
    ``deep_supervision`` and ``aux_decoder``); its KL is per pixel, averaged over pixels.
    """
    spec = get_method(method)
    mods = list(SubsetSpace(modalities).modalities)
    alpha = spec.alpha if alpha is None else alpha
    beta = spec.beta if beta is None else beta
    if (alpha > 0 or beta > 0) and not spec.variance:
        raise ConfigError(
            f"method {method!r} has no variance head, so alpha and beta must be 0 "
            f"(got alpha={alpha}, beta={beta}); use a dmrnet method for KL or HCR"
        )

    def objective(names: list[str], spatial: str = "sum") -> DMRNetObjective:
        kl = KLRegularizer(alpha, spatial=spatial) if spec.variance else None
        hcr = (HardCombinationRegularizer(names, beta, hcr_warmup_epochs, hcr_top_k,
                                          candidates=hcr_candidates, hard_subsets=hcr_subsets)
               if spec.variance and beta > 0 else None)
        return DMRNetObjective(kl, hcr, label_smoothing=label_smoothing,
                               class_weights=class_weights)

    if architecture not in ("late_fusion", "dense"):
        raise ConfigError(f"architecture must be 'late_fusion' or 'dense'; got {architecture!r}")
    if method == "shaspec":
        from dmrnet.peers.shaspec import ShaSpecModel

        shaspec = ShaSpecModel(mods, input_shapes, num_classes, encoder=encoder,
                               encoder_kwargs=encoder_kwargs, embed_dim=embed_dim,
                               **dict(method_kwargs or {}))  # type: ignore[arg-type]
        return shaspec, DMRNetObjective(label_smoothing=label_smoothing,
                                        class_weights=class_weights)
    if architecture == "dense":
        dense = _build_dense(spec, mods, input_shapes, num_classes, encoder_kwargs, embed_dim,
                             beta, dense_kwargs)
        return dense, objective(dense.space.names, spatial="mean")  # KL per pixel
    unknown = [m for m in (encoders or {}) if m not in mods]
    if unknown:
        raise ConfigError(f"encoder given for modality {unknown[0]!r}, not one of {mods}")
    missing_shape = [m for m in mods if m not in input_shapes]
    if missing_shape:
        raise ConfigError(f"no input shape for modality {missing_shape[0]!r}")
    built = {}
    for m in mods:
        cfg = dict((encoders or {}).get(m, {}))
        name = str(cfg.pop("name", encoder))
        kwargs = {**(encoder_kwargs or {}), **cfg} if name == encoder else cfg
        built[m] = create_encoder(name, tuple(input_shapes[m]), **kwargs)
    spatial = {bool(getattr(e, "spatial", False)) for e in built.values()}
    if len(spatial) != 1:
        raise ConfigError(
            "all encoders must give the same kind of features (all vectors or all maps) to be "
            "fused; mix of " + ", ".join(f"{m}: {type(e).__name__}" for m, e in built.items())
        )
    trunk_module = None
    if trunk is not None:
        from dmrnet.nn.fusion import create_fusion

        fused = create_fusion(fusion, [int(e.out_features) for e in built.values()]).out_features
        trunk_module = create_trunk(trunk, fused, **dict(trunk_kwargs or {}))
    model = MultimodalModel(
        mods,
        built,
        num_classes,
        embed_dim=embed_dim,
        fusion=fusion,
        variance=spec.variance,
        sample=spec.sample,
        missing_at=missing_at,
        input_shapes=input_shapes,
        trunk=trunk_module,
        spatial=spatial.pop(),
    )
    if method == "mmanet":
        from dmrnet.peers.mmanet import MMANetObjective

        return model, MMANetObjective(model.space.names, label_smoothing=label_smoothing,
                                      class_weights=class_weights,
                                      **dict(method_kwargs or {}))  # type: ignore[arg-type]
    return model, objective(model.space.names)


def _build_dense(spec: MethodSpec, mods: list[str], input_shapes: Mapping[str, Sequence[int]],
                 num_classes: int, encoder_kwargs: Mapping[str, object] | None, embed_dim: int,
                 beta: float, dense_kwargs: Mapping[str, object] | None) -> Any:
    from dmrnet.segmentation import DenseMultimodalModel

    shapes = {m: tuple(input_shapes[m]) for m in mods}
    bad = [m for m, s in shapes.items() if len(s) != 3]
    if bad:
        raise ConfigError(f"dense models need (C, H, W) inputs; modality {bad[0]!r} has "
                          f"{shapes[bad[0]]}")
    dense = dict(dense_kwargs or {})
    model = DenseMultimodalModel(
        mods, {m: s[0] for m, s in shapes.items()}, num_classes, embed_dim=embed_dim,
        variance=spec.variance, sample=spec.sample,
        aux_decoder=bool(dense.pop("aux_decoder", False)) and spec.variance and beta > 0,
        **dict(encoder_kwargs or {}), **dense,  # type: ignore[arg-type]
    )
    return model
