"""Boosters: additions that combine with a method (baseline + X, dmrnet + X).

A booster is one class, registered by name in :data:`BOOSTERS` with :func:`register_booster`
(from the package or from a plugin file). It declares

- ``Options``: a dataclass of its own options (they join the method's ``method_kwargs``, so
  ``--option unimodal_weight=2`` reaches the heads booster), with their defaults and checks;
- ``network(options, config)``: what it asks of the network (e.g. unimodal heads);
- ``parts(options, config, names)``: its parts of the objective
  (:class:`~dmrnet.methods.base.ObjectivePart`: named loss terms and training hooks);
- ``check``, ``after_build``, ``stages``, ``training_context``: checks against the model,
  a change to the built network, earlier stages (e.g. teachers) and training inputs.

A method lists its boosters (names), and its ``Options`` are composed from its own option
groups and its boosters' (:func:`compose_options`): each group checks its own values and a
misspelt option is an error, never a silent default. Every hook receives the composed
options; ``booster.read(options)`` gives the booster's own typed ``Options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from torch import nn

from dmrnet.errors import ConfigError
from dmrnet.methods.base import ModelConfig, ObjectivePart, Stage, TrainingContext
from dmrnet.registry import Registry

G = TypeVar("G")


class ComposedOptions:
    """Base of composed option classes: the typed option groups it was checked with."""

    _groups: dict[type, Any]

    def group(self, cls: type[G]) -> G | None:
        """The checked options of group ``cls`` (a dataclass), or None if it has none."""
        return self._groups.get(cls)  # type: ignore[return-value]


def compose_options(name: str, groups: Sequence[type], defaults: Mapping[str, Any] | None = None,
                    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                    ) -> type[ComposedOptions]:
    """A dataclass named ``name`` with every field of the dataclasses ``groups`` (in order),
    ``defaults`` replacing some of their defaults (a preset). Creating one checks each group
    by building it from its fields (its ``__post_init__`` runs), after ``prepare`` (e.g. a
    preset's unset values resolved for the check); values a group normalises are kept."""
    defaults = dict(defaults or {})
    specs: list[tuple[str, Any, Any]] = []
    seen: dict[str, type] = {}
    for group in groups:
        for f in dataclasses.fields(group):
            if f.name in seen:
                raise ConfigError(f"option {f.name!r} of {group.__name__} is also an option of "
                                  f"{seen[f.name].__name__}; rename one")
            seen[f.name] = group
            if f.name in defaults:
                value = defaults.pop(f.name)
                default = dataclasses.field(default_factory=lambda v=value: v) if isinstance(
                    value, (list, dict)) else dataclasses.field(default=value)
            elif f.default_factory is not dataclasses.MISSING:
                default = dataclasses.field(default_factory=f.default_factory)
            else:
                default = dataclasses.field(default=f.default)
            specs.append((f.name, f.type, default))
    if defaults:
        raise ConfigError(f"{name}: no option {sorted(defaults)[0]!r} to give a default")

    def post_init(self: ComposedOptions) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        checked = prepare(dict(values)) if prepare is not None else values
        self._groups = {}
        for group in groups:
            keys = [f.name for f in dataclasses.fields(group)]
            instance = group(**{k: checked[k] for k in keys})
            self._groups[group] = instance
            for k in keys:  # what the group normalised, where prepare left the value alone
                if checked[k] is values[k]:
                    setattr(self, k, getattr(instance, k))

    return dataclasses.make_dataclass(name, specs, bases=(ComposedOptions,),
                                      namespace={"__post_init__": post_init})


def group_of(options: object, cls: type[G]) -> G | None:
    """The options of group ``cls`` within a method's ``options``: from composed options,
    the group; from a plain options dataclass, itself if it is one; else None."""
    if isinstance(options, ComposedOptions):
        return options.group(cls)
    return options if isinstance(options, cls) else None


@dataclasses.dataclass
class NoOptions:
    """A booster or a method without options of its own."""


class Booster:
    """Base class of a registered booster; subclasses set ``name``, ``Options`` and the
    hooks they need (every hook has a default that does nothing)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    training_only: ClassVar[tuple[str, ...]] = ()
    """Options a trained network does not need (left out of model folders)."""

    def read(self, options: Any) -> Any:
        """This booster's own typed options within a method's composed ``options``."""
        own = group_of(options, self.Options)
        return own if own is not None else self.Options()

    def check(self, options: Any, config: ModelConfig) -> None:
        """Raise ConfigError for settings this booster cannot serve (e.g. a dense model)."""

    def network(self, options: Any, config: ModelConfig) -> dict[str, Any]:
        """What it asks of the network, as the network's keyword arguments."""
        return {}

    def parts(self, options: Any, config: ModelConfig, names: Sequence[str]
              ) -> list[ObjectivePart]:
        """Its parts of the objective (``names``: every subset's name, in index order)."""
        return []

    def after_build(self, options: Any, network: nn.Module) -> None:
        """Change the built network (e.g. an initialisation)."""

    def stages(self, options: Any, settings: Mapping[str, Any], method: str,
               modalities: Sequence[str]) -> list[Stage] | None:
        """The run's stages when this booster needs earlier ones (None: it does not)."""
        return None

    def training_context(self, options: Any, config: ModelConfig, network: nn.Module
                         ) -> TrainingContext | None:
        """What its parts need besides the batch in training (None: nothing)."""
        return None


BOOSTERS: Registry[Booster] = Registry("booster", builtins="dmrnet.methods")
"""Registered boosters by name: ``@register_booster`` on a :class:`Booster` subclass."""


def register_booster(cls: type[Booster]) -> type[Booster]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name")
    BOOSTERS.register(cls.name)(cls())
    return cls


def dense_unsupported(option: str) -> ConfigError:
    """The error for a booster option that needs a classification network."""
    return ConfigError(f"{option} applies to classification (late_fusion) models; dense models "
                       "have no unimodal heads or pooled features yet (teacher_init works for "
                       "both)")
