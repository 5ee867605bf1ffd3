"""What a method is: a registered unit with its settings, its network and objective, and the
stages a run of it trains.

A method is a :class:`Method` subclass registered by name in :data:`METHODS`. It declares

- ``Options``: a dataclass of its own hyperparameters (given as ``method_kwargs``), with their
  defaults in one place; unknown keys are an error that lists them;
- ``build(config)``: the network (any :class:`~dmrnet.models.protocol.MultimodalNetwork`) and
  the objective for a :class:`ModelConfig`;
- ``stages(settings, modalities)``: the models a run trains, in order (one for most methods);
- ``combine(stages)``: the run's per-subset results from its stages' results;
- ``training_context(config)``: anything a training step needs besides the batch (e.g. a
  frozen teacher's outputs), passed to the objective as keyword arguments.

The training loop, the benchmark, serving and the command line use only this interface: adding
a method touches its own file (or a test's) and nothing else.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dmrnet.batch import Batch
from dmrnet.errors import ConfigError, checkpoint_error, local_checkpoint
from dmrnet.records import Stage, StageResult
from dmrnet.registry import Registry
from dmrnet.settings import NetworkConfig, TrainingConfig, nest_settings


@dataclass
class ModelConfig:
    """Everything that builds a network and its objective (the arguments of
    :func:`build_method`): the data's shape, the shared ``network``
    (:class:`~dmrnet.settings.NetworkConfig`, a mapping is read as one), the method's own
    ``Options`` (``method_kwargs``) and the task loss's settings."""

    method: str
    modalities: Sequence[str]
    input_shapes: Mapping[str, Sequence[int]]
    num_classes: int
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method_kwargs: Mapping[str, object] | None = None
    sequences: Sequence[str] | None = None
    label_smoothing: float = field(default=0.0, metadata={"training_only": True})
    class_weights: Sequence[float] | None = field(default=None,
                                                  metadata={"training_only": True})

    def __post_init__(self) -> None:
        """The core fields' types, so a wrong one is one line naming it, not a TypeError from
        deep inside torch."""
        if not isinstance(self.method, str):
            raise ConfigError(f"method must be a name such as 'dmrnet'; got {self.method!r}")
        if isinstance(self.modalities, str) or not isinstance(self.modalities, Sequence):
            raise ConfigError("modalities must be a list of names, e.g. ['rgb', 'depth']; got "
                              f"{self.modalities!r}")
        if not isinstance(self.input_shapes, Mapping):
            raise ConfigError("input_shapes must map each modality to its shape, e.g. "
                              f"{{'rgb': (3, 224, 224)}}; got {self.input_shapes!r}")
        for m, shape in self.input_shapes.items():
            if isinstance(shape, str) or not isinstance(shape, Sequence) or not shape or not all(
                    isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                    for d in shape):
                raise ConfigError(f"input_shapes[{m!r}] must be a list of positive sizes, e.g. "
                                  f"(64,) or (3, 224, 224); got {shape!r}")
        seqs = self.sequences or ()
        if isinstance(seqs, str) or not isinstance(seqs, Sequence) or any(
                m not in self.input_shapes for m in seqs):
            raise ConfigError(f"sequences must list modalities whose input shape is (T, ...); "
                              f"got {self.sequences!r} for shapes {dict(self.input_shapes)}")
        k = self.num_classes
        if not isinstance(k, numbers.Integral) or isinstance(k, bool):
            raise ConfigError(f"num_classes must be a whole number; got {k!r}")
        if k < 2:
            raise ConfigError(f"num_classes must be at least 2; got {k!r}")
        self.network = NetworkConfig.of(self.network)

    @classmethod
    def names(cls, serving: bool = False) -> list[str]:
        """The field names (``serving``: those a trained network needs, without training-only
        ones such as class weights)."""
        return [f.name for f in dataclasses.fields(cls)
                if not (serving and f.metadata.get("training_only"))]

    @classmethod
    def pick(cls, settings: Mapping[str, Any]) -> ModelConfig:
        """The model config of a module's settings (its ``training`` gives the label
        smoothing; other keys are left out; settings saved by earlier versions are read
        through :func:`upgrade_settings`)."""
        settings = upgrade_settings(settings)
        known = set(cls.names()) - {"label_smoothing"}
        training = TrainingConfig.of(settings.get("training"))
        return cls(**{k: v for k, v in settings.items() if k in known},
                   label_smoothing=training.label_smoothing)


LEGACY_OPTIONS = ("alpha", "beta", "hcr_warmup_epochs", "hcr_top_k", "hcr_candidates",
                  "hcr_subsets", "teacher_checkpoint")
"""Method options that dmrnet 0.1 kept as top-level module settings."""

LEGACY_OPTIM = ("optimizer", "lr", "weight_decay", "momentum", "nesterov", "scheduler",
                "milestones", "gamma", "warmup_epochs")
"""Optimisation settings that dmrnet 0.1 kept as top-level module settings."""


def upgrade_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Module settings saved by dmrnet 0.1 (checkpoints, model folders) in today's layout:
    method options move into ``method_kwargs`` (those the method has; unset ones are
    dropped) and optimisation settings into ``optim``; network and training settings, which
    0.1 and 0.2 kept at the top level, go under ``network`` and ``training``
    (:func:`~dmrnet.settings.nest_settings`). Current settings pass unchanged."""
    out = nest_settings(settings)
    legacy = [k for k in LEGACY_OPTIONS if k in out]
    if legacy and "method" in out and out["method"] in METHODS:
        known = set(METHODS.get(out["method"]).option_names())
        kwargs = dict(out.get("method_kwargs") or {})
        for key in legacy:
            value = out.pop(key)
            if key in known and value is not None:
                kwargs.setdefault(key, value)
        out["method_kwargs"] = kwargs or None
    moved = {k: out.pop(k) for k in LEGACY_OPTIM if k in out}
    if moved:
        out["optim"] = {**moved, **dict(out.get("optim") or {})}
    return out


def drop_settings(settings: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """``settings`` without the named keys."""
    return {k: v for k, v in settings.items() if k not in names}


@dataclass
class Choice:
    """What an objective chose in training, in its own words. The glue knows none of the
    words: it keeps ``record`` (JSON-able) in order with checkpoints and results, makes
    ``state`` (where given) the standing choice reported with the run, logs ``message`` and
    ``values``, and, where ``sampling`` is given, draws training subsets with those factors
    from then on."""

    record: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    """The objective's new standing choice; its "summary" (a short line) is what reports
    print. None: the standing choice is unchanged."""
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)
    sampling: dict[str, float] = field(default_factory=dict)
    """Training subset sampling factors from now on, by subset name, multiplying the run's
    own ``subset_weights`` (empty: sampling unchanged)."""


CheckpointUpgrade = Callable[[dict[str, Any]], dict[str, Any]]
CHECKPOINT_UPGRADES: list[CheckpointUpgrade] = []
"""Functions that bring the training record kept in a checkpoint by an earlier version (its
``"dmrnet"`` entry) to today's layout; a method adds its own with
:func:`register_checkpoint_upgrade`."""


def register_checkpoint_upgrade(fn: CheckpointUpgrade) -> CheckpointUpgrade:
    """Decorator: apply ``fn`` to every checkpoint's training record when it is loaded."""
    CHECKPOINT_UPGRADES.append(fn)
    return fn


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's training record in today's layout (see :data:`CHECKPOINT_UPGRADES`)."""
    out = dict(record)
    for fn in CHECKPOINT_UPGRADES:
        out = fn(out)
    return out


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the training processes (the identity on one process)."""


class Objective(nn.Module):
    """Base of objectives with training-time state: ``forward(out, target, subset_index,
    **context)`` returns the named loss terms with their total under "loss"; the hooks let
    an objective choose something from what it saw and report it (:class:`Choice`). A
    plain ``nn.Module`` objective without hooks works too."""

    def start(self) -> Choice | None:
        """Called when training starts; a Choice if the objective chose already."""
        return None

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Choice | None:
        """Called after each training epoch (0-based); ``reduce`` sums a tensor over the
        processes. A Choice when the objective chose in this epoch."""
        return None

    def epoch_values(self) -> dict[str, float]:
        """Values to log after every training epoch (name -> number), e.g. the weight the
        objective gives each subset now."""
        return {}

    def epochs_note(self, epochs: int) -> str | None:
        """A warning for training of ``epochs`` epochs (e.g. a choice due after more epochs
        than that, so never made); None when there is nothing to say."""
        return None

    observes_validation: bool = False
    """Whether the glue passes validation outputs to :meth:`observe` and :meth:`end_validation`
    (validation only; never test)."""

    def observe(self, subset: int, logits: torch.Tensor, target: torch.Tensor) -> None:
        """One validation batch's outputs for subset index ``subset``."""

    def end_validation(self, errors: Mapping[str, float], reduce: Reduce) -> None:
        """The validation epoch's error per subset name (1 - metric, or the metric where
        lower is better), after every :meth:`observe` of the epoch."""

    def adjust_gradients(self, network: nn.Module, epoch: int, reduce: Reduce
                         ) -> dict[str, float]:
        """Change ``network``'s gradients after backward, before the optimiser step (e.g.
        gradient modulation); returns values to log (name -> number)."""
        return {}


@dataclass
class TermContext:
    """What a part of an objective sees of one training step besides the network's output
    and the target: ``per_sample`` (B,) task loss of the main logits, ``subset_index`` (B,)
    each sample's training subset, ``loss(logits, target)`` the task's per-sample loss for
    any logits, and ``extra`` the method's training context (e.g. teacher features)."""

    per_sample: torch.Tensor
    subset_index: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extra: Mapping[str, Any] = field(default_factory=dict)


class ObjectivePart(nn.Module):
    """One named piece of a composed objective (pytorch-metric-learning's composed losses):
    its weighted loss terms for a step and the hooks of :class:`Objective`, each optional.
    Parts are registered on the objective under ``name``, so their buffers are saved with
    checkpoints as ``objective.<name>.*``."""

    name: str = ""

    def terms(self, out: Any, target: torch.Tensor, ctx: TermContext) -> dict[str, torch.Tensor]:
        """This step's weighted loss terms by name (none: {})."""
        return {}

    def start(self) -> Choice | None:
        return None

    def end_train_epoch(self, epoch: int, reduce: Reduce) -> Choice | None:
        return None

    def epoch_values(self) -> dict[str, float]:
        return {}

    def epochs_note(self, epochs: int) -> str | None:
        return None

    observes_validation: bool = False

    def observe(self, subset: int, logits: torch.Tensor, target: torch.Tensor,
                loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """One validation batch's outputs for subset index ``subset``; ``loss`` as in
        :class:`TermContext`."""

    def end_validation(self, errors: Mapping[str, float], reduce: Reduce) -> None:
        pass

    def adjust_gradients(self, network: nn.Module, epoch: int, reduce: Reduce
                         ) -> dict[str, float]:
        return {}


class TrainingContext:
    """Extra inputs of a method's objective in training (see :meth:`Method.training_context`).
    ``setup`` runs when training starts (load files there, so a bad file stops the run
    before its first step); ``__call__`` gives the objective's keyword arguments for a batch."""

    def setup(self) -> None:
        """Prepare (e.g. load a checkpoint); called when training starts."""

    def initialise(self, network: nn.Module) -> None:
        """Change the network before its first step (e.g. load pretrained weights); called
        when training starts from scratch, after :meth:`setup`, and not when it resumes."""

    def __call__(self, batch: Batch, device: Any) -> dict[str, Any]:
        return {}


class Method:
    """Base class of a registered method. Subclasses set ``name``, ``description``,
    ``Options`` and ``build``; the rest has defaults for single-stage methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    train_subsets: ClassVar[str] = "random"
    """"random": one subset per sample (the protocol); "full": complete inputs only."""
    role: ClassVar[str] = ""
    """"reference": what a shared model could reach (reports measure every method's gap to
    it); "baseline": the plain shared model whose gap the others try to close; "": neither."""

    @dataclass
    class Options:
        """The method's own hyperparameters (``method_kwargs``); none by default. A
        ``__post_init__`` that raises ConfigError checks their values."""

    def option_names(self) -> list[str]:
        """The names of the method's options (the fields of its ``Options``)."""
        return [f.name for f in dataclasses.fields(self.Options)]

    def options(self, method_kwargs: Mapping[str, object] | None) -> Any:
        """``method_kwargs`` as this method's ``Options``, or a ConfigError naming the keys
        it does not know."""
        kwargs = dict(method_kwargs or {})
        known = self.option_names()
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f"method {self.name!r} has no option {unknown[0]!r} in "
                              f"method_kwargs; its options: {known or 'none'}")
        return self.Options(**kwargs)

    def serving_kwargs(self, method_kwargs: Mapping[str, object] | None
                       ) -> dict[str, object] | None:
        """The ``method_kwargs`` a trained network needs (stored in a model folder); by
        default all of them."""
        return None if method_kwargs is None else dict(method_kwargs)

    def build(self, config: ModelConfig) -> tuple[nn.Module, nn.Module]:
        """The network and the objective (``objective(out, target, subset_index, **context)``
        -> dict of loss terms with the total under "loss")."""
        raise NotImplementedError

    def stages(self, settings: Mapping[str, Any], modalities: Sequence[str]) -> list[Stage]:
        """The models a run trains: by default one, with the given settings."""
        return [Stage("", {**settings, "method": self.name})]

    def combine(self, results: Sequence[StageResult], higher_is_better: bool) -> dict[str, Any]:
        """The run's :class:`Scores` fields (and, optionally, ``eval_seconds``) from its
        stages' results; by default the last stage's scores."""
        return results[-1].scores()

    def combine_samples(self, results: Sequence[StageResult]) -> dict[str, dict[str, Any]]:
        """The test samples behind the scores of :meth:`combine`, per subset name; by
        default the last stage's."""
        return results[-1].test_samples

    def training_context(self, config: ModelConfig, network: nn.Module
                         ) -> TrainingContext | None:
        """What the objective needs besides the batch in training; None: nothing."""
        return None

    def analysis(self, runs: Sequence[Mapping[str, Any]]) -> Contribution | None:
        """This method's own part of ``dmrnet analyze``, from a benchmark's runs (every
        method's ``results.json`` records); None: it has none."""
        return None


@dataclass
class Contribution:
    """A method's part of an analysis: ``rows`` (JSON-able, kept in ``analysis.json`` under
    the method) and ``markdown`` (lines printed in ``analysis.md``)."""

    rows: list[dict[str, Any]]
    markdown: list[str]


METHODS: Registry[Method] = Registry("method")
"""Registered methods by name: ``@register_method`` on a :class:`Method` subclass."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name")
    METHODS.register(cls.name)(cls())
    return cls


SHARED_BY = 5
"""Options held by this many methods or more (a booster's) are listed once for all of them."""


def option_lines() -> list[str]:
    """Each registered method's options as lines ``name: a, b``, for help texts and errors;
    options that many methods share (a booster's) come once, after them, with the methods
    that have them."""
    names = METHODS.names()
    opts = {n: list(METHODS.get(n).option_names()) for n in names}
    holders: dict[str, tuple[str, ...]] = {}
    for n in names:
        for o in opts[n]:
            holders[o] = (*holders.get(o, ()), n)
    shared: dict[tuple[str, ...], list[str]] = {}
    for n in names:
        for o in opts[n]:
            if len(holders[o]) >= SHARED_BY and o not in shared.get(holders[o], []):
                shared.setdefault(holders[o], []).append(o)
    common = {o for group in shared.values() for o in group}
    lines = []
    for n in names:
        own = [o for o in opts[n] if o not in common]
        lines.append(f"{n}: {', '.join(own) if own else 'those below' if opts[n] else 'none'}")
    lines += [f"{', '.join(ms)} also: {', '.join(group)}" for ms, group in shared.items()]
    return lines


def options_summary() -> str:
    """Each registered method's options in one paragraph (:func:`option_lines`)."""
    return "Options: " + "; ".join(option_lines())


def get_method(name: str) -> Method:
    """The registered method called ``name`` (an error lists the available ones)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {METHODS.names()}")
    return METHODS.get(name)


def build_method(method: str, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """Build the network and objective of a named method from :class:`ModelConfig`'s fields
    (``modalities``, ``input_shapes``, ``num_classes``, ``network``, ...); the network's
    fields may also be given by name (``encoder="mlp", embed_dim=64``)."""
    try:
        config = ModelConfig(method=method, **nest_settings(kwargs, (NetworkConfig,)))
    except TypeError as err:
        raise ConfigError(f"cannot build method {method!r}: {err}") from err
    return get_method(method).build(config)


def create_model(method: str, **kwargs: Any) -> nn.Module:
    """Build the network of a method (see :func:`build_method`; the objective is left out)."""
    return build_method(method, **kwargs)[0]


def read_checkpoint(path: object) -> tuple[str, dict[str, Any]]:
    """A dmrnet training checkpoint (ours or Lightning's: ``hyper_parameters`` and
    ``state_dict``) read with ``weights_only=True``, its settings in today's layout
    (:func:`upgrade_settings`): (the local path, the checkpoint)."""
    path = local_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or unsafe files
        raise checkpoint_error(path, err) from err
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"{path!r} is not a dmrnet training checkpoint (no hyperparameters "
                          "or state_dict)")
    # Lightning's CLI keeps its own bookkeeping there too ("_instantiator", "_class_path")
    settings = {k: v for k, v in ckpt["hyper_parameters"].items() if not str(k).startswith("_")}
    return path, {**ckpt, "hyper_parameters": upgrade_settings(settings)}


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """``module.load_state_dict(state)``, or a ConfigError saying the weights in ``path`` do
    not fit the settings stored with them."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"the weights in {path!r} do not fit its settings: "
                          f"{str(err).splitlines()[0]}") from err


def checkpoint_network(path: str) -> nn.Module:
    """The network stored in a training checkpoint (``state_dict`` under ``model.``),
    rebuilt and loaded (see :func:`read_checkpoint`); plain PyTorch, no training objects."""
    path, ckpt = read_checkpoint(path)
    config = ModelConfig.pick(ckpt["hyper_parameters"])
    network, _ = get_method(config.method).build(config)
    load_weights(network, {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
                           if k.startswith("model.")}, path)
    return network
