"""A module's settings, one typed configuration per concern: the network every method builds
on (:class:`NetworkConfig`) and how training draws subsets and scores them
(:class:`TrainingConfig`); the optimisation's is :class:`dmrnet.optim.OptimConfig` and a
method's own options are its ``Options``. jsonargparse reads these dataclasses, so
``dmrnet fit --help`` lists each field under ``--model.network.*`` / ``--model.training.*``.

The benchmark's ``model:`` mapping and ``--set`` take the same fields by their short names
(``encoder``, ``label_smoothing``): :func:`nest_settings` puts each under its concern, and reads
the flat settings that dmrnet 0.1 and 0.2 saved in checkpoints and model folders.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dmrnet.errors import COUNT_FROM_1, FRACTION, ConfigError, require


@dataclass(frozen=True)
class _Concern:
    """``of`` and ``to_dict`` for a concern's dataclass (a dataclass itself, so jsonargparse
    reads its subclasses as plain groups of fields)."""

    key: ClassVar[str] = ""  # the module argument that holds it

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def of(cls, value: Any) -> Any:
        """``value`` (an instance, a mapping or None for the defaults) as this config; an
        unknown key is an error naming it and the known ones."""
        if isinstance(value, cls):
            return value
        return cls(**cls.fields_of(value))

    @classmethod
    def fields_of(cls, value: Any, known_only: bool = True) -> dict[str, Any]:
        """``value`` (a mapping, a jsonargparse Namespace, or None for none) as a dict of
        this config's fields; another type, or (``known_only``) an unknown key, is an error
        naming the known ones."""
        if hasattr(value, "as_dict"):  # a jsonargparse Namespace
            value = value.as_dict()
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{cls.key} must be a mapping of its settings {cls.names()}; got "
                              f"{value!r}")
        fields = dict(value or {})
        unknown = sorted(set(fields) - set(cls.names()))
        if known_only and unknown:
            raise ConfigError(f"{cls.key} has no setting {unknown[0]!r}; its settings: "
                              f"{cls.names()}")
        return fields

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class NetworkConfig(_Concern):
    """The network every method builds on (a method adds its own parts to it).

    Args:
        encoder: the registered encoder of every modality ("mlp", "resnet18", ...; "auto"
            picks by input shape).
        encoder_kwargs: its options (e.g. ``{out_features: 128, hidden: [256]}``).
        encoders: per-modality encoders, ``{modality: {name: ..., **options}}``, over
            ``encoder``.
        embed_dim: the embedding size D each modality is projected to.
        fusion: how the available modalities' embeddings are combined ("concat", "sum",
            "mean", ...).
        missing_at: where an absent modality is filled ("feature": zero embedding; "input":
            zero input through the encoder).
        trunk / trunk_kwargs: a shared trunk after fusion (None: the head follows fusion).
        architecture: "late_fusion" (classification) or "dense" (per-pixel prediction).
        dense_kwargs: the dense decoder's options.
    """

    key: ClassVar[str] = "network"

    encoder: str = "mlp"
    encoder_kwargs: dict[str, Any] | None = None
    encoders: dict[str, dict[str, Any]] | None = None
    embed_dim: int = 256
    fusion: str = "concat"
    missing_at: str = "feature"
    trunk: str | None = None
    trunk_kwargs: dict[str, Any] | None = None
    architecture: str = "late_fusion"
    dense_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("encoder", "fusion", "missing_at", "architecture"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"network.{name} must be a name; got {getattr(self, name)!r}")
        if not isinstance(self.embed_dim, numbers.Integral) or isinstance(self.embed_dim, bool):
            raise ConfigError(f"network.embed_dim must be a whole number; got {self.embed_dim!r}")
        require("network.embed_dim", self.embed_dim, COUNT_FROM_1)
        for name in ("encoder_kwargs", "encoders", "trunk_kwargs", "dense_kwargs"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"network.{name} must be a mapping; got {value!r}")


@dataclass(frozen=True)
class TrainingConfig(_Concern):
    """How a module trains and scores, whatever the method.

    Args:
        label_smoothing: of the task loss (0 <= x < 1).
        subset_weights: training subset weights by name (None: the method's default: uniform,
            or only the full subset for a method that trains on complete inputs; '*' names
            the others).
        metric: the task metric ("accuracy", "acer", "miou", ...).
        channels_last: keep convolution weights and image inputs in channels-last memory
            order (faster convolutions on tensor-core GPUs, with bf16/fp16 especially).
    """

    key: ClassVar[str] = "training"

    label_smoothing: float = 0.0
    subset_weights: dict[str, float] | None = None
    metric: str = "accuracy"
    channels_last: bool = False

    def __post_init__(self) -> None:
        require("training.label_smoothing", self.label_smoothing, FRACTION)
        if not isinstance(self.metric, str):
            raise ConfigError(f"training.metric must be a name such as 'accuracy'; got "
                              f"{self.metric!r}")
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"training.channels_last must be true or false; got "
                              f"{self.channels_last!r}")
        if self.subset_weights is not None and not isinstance(self.subset_weights, Mapping):
            raise ConfigError("training.subset_weights must map subset names to weights, e.g. "
                              f"{{'rgb+depth': 2, '*': 1}}; got {self.subset_weights!r}")


DEFAULT_NETWORK = NetworkConfig()
DEFAULT_TRAINING = TrainingConfig()
"""The defaults, as module argument defaults (the module never changes them)."""

CONCERNS: tuple[type[_Concern], ...] = (NetworkConfig, TrainingConfig)
"""The concerns whose fields the benchmark and older settings give by their short names."""

SHORT_NAMES: dict[str, str] = {name: c.key for c in CONCERNS for name in c.names()}
"""Each concern's field -> the concern's key (``encoder`` -> ``network``)."""

SHARED_SETTINGS = frozenset({*SHORT_NAMES, "optim", "class_weights"})
"""The shared model settings the benchmark's ``model:`` and ``--set`` take (the data's own
are linked from the data; a method's own are its options)."""


def nest_settings(settings: Mapping[str, Any],
                  concerns: tuple[type[_Concern], ...] = CONCERNS) -> dict[str, Any]:
    """``settings`` with each concern's fields given by short name (``encoder: resnet18``,
    ``label_smoothing: 0.1``) moved under the concern (``network``, ``training``), over what
    the concern's mapping gives. A field given both ways is an error."""
    out = dict(settings)
    for concern in concerns:
        short = {k: out.pop(k) for k in concern.names() if k in out}
        if not short:
            continue
        # unknown keys are left to the config's own check, where the module builds it
        given = concern.fields_of(out.get(concern.key), known_only=False)
        both = sorted(set(short) & set(given))
        if both:
            raise ConfigError(f"{both[0]!r} is given twice: as {both[0]} and as "
                              f"{concern.key}.{both[0]}; give it once")
        out[concern.key] = {**given, **short}
    return out


def flatten_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`nest_settings`: each concern's mapping (``network: {encoder:
    mlp}``) as short names (``encoder: mlp``), the benchmark's form. A field given both ways
    is an error; a concern that is not a mapping, or names a field it lacks, is an error."""
    out = dict(settings)
    for concern in CONCERNS:
        given = out.pop(concern.key, None)
        if given is None:
            continue
        given = concern.fields_of(given)
        both = sorted(set(given) & set(out))
        if both:
            raise ConfigError(f"{both[0]!r} is given twice: as {both[0]} and as "
                              f"{concern.key}.{both[0]}; give it once")
        out.update(given)
    return out
