"""Plugins: a user's Python file or module that registers methods, datasets, encoders, ...
with dmrnet's registries (``@dmrnet.ENCODERS.register("name")``,
``@dmrnet.DATASETS.register("name")``, :func:`dmrnet.register_method`), loaded before a
command reads its settings:

- ``dmrnet COMMAND --plugin my_plugin.py`` (or a module name on ``sys.path``; repeatable);
- installed packages that declare an entry point in the group ``dmrnet.plugins`` (the
  ``dmrnet`` command loads them; the Python API loads none by itself: call
  :func:`load_plugin` or import the module).

A plugin is imported once per process, whatever the number of times it is named.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from dmrnet.errors import ConfigError, first_line

ENTRY_POINT_GROUP = "dmrnet.plugins"
_LOADED: dict[str, ModuleType] = {}


def load_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a ``.py`` file (by path) or an importable module name. Returns the
    module. A missing file or module, or an error while it runs, is a :class:`ConfigError`
    naming the plugin and, for an error inside it, its file and line."""
    key = str(Path(spec).resolve()) if spec.endswith(".py") else spec
    if key in _LOADED:
        return _LOADED[key]
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"plugin {spec!r} does not exist; give the path of a .py file or "
                              "an importable module name")
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        name = f"dmrnet_plugin_{path.stem}_{digest}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"plugin {spec!r} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as err:
            sys.modules.pop(name, None)
            _raise_from_plugin(spec, err)
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as err:
            if err.name is not None and spec.split(".")[0] == err.name.split(".")[0]:
                raise ConfigError(f"plugin {spec!r} is neither a .py file nor an importable "
                                  "module; give a path ending in .py or install the package"
                                  ) from None
            _raise_from_plugin(spec, err)
        except BaseException as err:
            _raise_from_plugin(spec, err)
    _LOADED[key] = module
    return module


def _raise_from_plugin(spec: str, err: BaseException) -> None:
    if isinstance(err, KeyboardInterrupt | SystemExit):
        raise err
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "importlib" not in f.filename]
    # the plugin's own line where it has one (an error raised by dmrnet's registry, say, is
    # reported where the plugin called it), else the innermost frame outside importlib
    own = [f for f in frames
           if spec.endswith(".py") and Path(f.filename).resolve() == Path(spec).resolve()]
    frame = (own or frames or [None])[-1]
    where = f" ({Path(frame.filename).name}, line {frame.lineno})" if frame else ""
    if isinstance(err, SyntaxError) and err.lineno is not None:
        where = f" ({Path(err.filename or spec).name}, line {err.lineno})"
    raise ConfigError(f"plugin {spec!r} failed while loading: {type(err).__name__}: "
                      f"{first_line(err)}{where}") from err


def load_plugins(specs: list[str] | tuple[str, ...] = (), entry_point_plugins: bool = True
                 ) -> list[ModuleType]:
    """The installed ``dmrnet.plugins`` entry points (with ``entry_point_plugins``), then each
    of ``specs`` in order."""
    modules = []
    if entry_point_plugins:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            modules.append(load_plugin(point.value.split(":")[0]))
    modules += [load_plugin(s) for s in specs]
    return modules


def plugin_of(obj: object) -> str | None:
    """The plugin (a file's name, or a module's) that defined ``obj``; None for dmrnet's own
    and anything not loaded as a plugin."""
    module = getattr(obj, "__module__", None)
    for key, loaded in _LOADED.items():
        if loaded.__name__ == module:
            return Path(key).name if key.endswith(".py") else key
    return None
