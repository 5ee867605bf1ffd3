"""Registries: a name -> object mapping whose errors list what exists; encoders and trunks.

Add an encoder with ``@ENCODERS.register("name")`` on a function
``(input_shape: tuple[int, ...], **kwargs) -> nn.Module`` whose module has an ``out_features``
attribute (an int for vector features). Every method then accepts it by name, per modality.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from dmrnet.errors import DMRNetError

T = TypeVar("T")


class RegistryError(DMRNetError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> builder mapping with errors that list what exists."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins  # the module that registers the built-in entries

    def _load(self) -> None:
        """Import the module of the built-in entries on first use (``import dmrnet`` is lazy,
        so ``from dmrnet.registry import ENCODERS`` alone would see none)."""
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        self._load()

        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a method a test registered)."""
        self._load()
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; available: {sorted(self._items)} (one of "
                "your own: register it in a plugin file and pass --plugin FILE.py)"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items


ENCODERS: Registry[Callable[..., Any]] = Registry("encoder", builtins="dmrnet.nn")
TRUNKS: Registry[Callable[..., Any]] = Registry("trunk", builtins="dmrnet.nn")
"""Shared stages after mid-level fusion: ``(in_channels: int, **kwargs) -> nn.Module`` with
``out_features``."""
