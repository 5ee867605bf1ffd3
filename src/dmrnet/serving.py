"""Using a trained model: a model folder (human-readable ``config.json`` + ``model.safetensors``),
``load_model`` that rebuilds it without the training code's objects, and ``Predictor.predict``
that takes whatever modalities arrive.

Nothing here unpickles: the config is JSON and the weights are safetensors, so a model folder
cannot run code when it is loaded.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from dmrnet.batch import BatchError, stats_view
from dmrnet.data.base import DataError
from dmrnet.data.files import IMAGE_SUFFIXES, READERS_KEY, reader_from_dict, special_file
from dmrnet.data.io import read_image, read_npy
from dmrnet.data.rgbd import _read_png
from dmrnet.data.text import is_text, read_words, text_reader
from dmrnet.errors import ConfigError, DMRNetError, first_line
from dmrnet.methods import METHODS, ModelConfig, build_method, get_method, upgrade_settings
from dmrnet.models.protocol import MultimodalNetwork
from dmrnet.nn.pretrained import WEIGHT_SUFFIXES
from dmrnet.outputs import OutputError, RunFolder
from dmrnet.plugins import plugin_of
from dmrnet.registry import ENCODERS, TRUNKS
from dmrnet.settings import NetworkConfig
from dmrnet.version import __version__

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = "dmrnet-model/1"


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for a batch of B samples.

    Attributes:
        probs: (B, K) class probabilities (or (B, K, H, W) for dense models).
        subsets: the subset each sample was predicted with, e.g. ["rgb+depth", "rgb"].
        uncertainty: (B,) mean sigma^2 of the embedding (DMRNet-family methods), else None.
            Higher means the embedding of that input is more spread; it is a relative score
            within one model, not a calibrated probability (see the README).
    """

    probs: Tensor
    subsets: list[str]
    uncertainty: Tensor | None


class Predictor:
    """A trained network with its metadata; ``predict`` serves any subset of modalities."""

    def __init__(self, model: MultimodalNetwork, config: dict[str, Any]) -> None:
        self.model = model.eval()
        self.config = config
        args = config["model"]
        self.modalities: list[str] = list(args["modalities"])
        self.input_shapes = {m: tuple(s) for m, s in args["input_shapes"].items()}
        self.class_names: list[str] = list(config.get("class_names") or
                                           [str(k) for k in range(args["num_classes"])])
        self.preprocessing: dict[str, Any] = dict(config.get("preprocessing") or {})
        self.sequences: list[str] = list(args.get("sequences") or [])
        # text modalities: the vocabulary the model was trained with reads raw text
        self.vocabularies = {m: text_reader(p, f"preprocessing of {m!r}")
                             for m, p in self.preprocessing.items() if is_text(p)}

    def _fits(self, m: str, given: Sequence[int]) -> bool:
        """Whether a sample of shape ``given`` fits modality ``m``: its shape, or for a
        sequence (T, ...) any 1..T steps of it."""
        shape, given = self.input_shapes[m], tuple(given)
        if m not in self.sequences:
            return given == shape
        return len(given) == len(shape) and given[1:] == shape[1:] and 1 <= given[0] <= shape[0]

    def _tensor(self, m: str, value: Any) -> Tensor:
        """One input as a tensor: a text modality's string (or list of strings, a batch) as
        token ids of the model's vocabulary; a file's path (a ``Path``, or a string for a
        modality that is not text) read by :meth:`read`."""
        if isinstance(value, os.PathLike) or (isinstance(value, str) and
                                              m not in self.vocabularies):
            return self.read(m, value)
        if m in self.vocabularies and isinstance(value, str):
            return self.vocabularies[m].ids(value)
        if m in self.vocabularies and isinstance(value, (list, tuple)) and value and \
                all(isinstance(v, str) for v in value):
            raise BatchError(f"modality {m!r}: give a batch of texts as a list of per-sample "
                             "dicts, each with its own text")
        return _as_tensor(m, value)

    def _batch(self, inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]]
               ) -> tuple[dict[str, Tensor], Tensor, bool, dict[str, Tensor]]:
        """Stack inputs into the batch contract; returns (inputs, availability, single,
        lengths of the sequence modalities)."""
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in self.modalities]
            if unknown:
                raise BatchError(f"modality {unknown[0]!r} is not one of {self.modalities}")
            if not inputs:
                raise BatchError(f"no modality given; the model takes any of {self.modalities}")
            given = {m: self._tensor(m, v) for m, v in inputs.items()}
            kinds = {}
            for m, v in given.items():
                shape = self.input_shapes[m]
                if self._fits(m, v.shape):
                    kinds[m] = None  # one sample
                elif v.dim() == len(shape) + 1 and self._fits(m, v.shape[1:]):
                    kinds[m] = int(v.shape[0])
                else:
                    steps = "up to " if m in self.sequences else ""
                    raise BatchError(f"modality {m!r} has shape {tuple(v.shape)}; expected "
                                     f"{steps}{shape} for one sample or (B, "
                                     f"{', '.join(map(str, shape))}) for a batch")
            if len(set(kinds.values())) != 1:
                raise BatchError(f"modalities disagree on the batch size: {kinds} (None = one "
                                 "sample without a batch axis)")
            size = next(iter(kinds.values()))
            single = size is None
            samples = [dict(given)] if single else [
                {m: v[i] for m, v in given.items()} for i in range(size)]
        else:
            samples, single = list(inputs), False
        if not samples:
            raise BatchError("empty batch: no sample to predict")
        batch = len(samples)
        avail = torch.zeros(batch, len(self.modalities), dtype=torch.bool)
        out: dict[str, Tensor] = {}
        lengths = {m: torch.zeros(batch, dtype=torch.long) for m in self.sequences}
        for j, m in enumerate(self.modalities):
            shape = self.input_shapes[m]
            t = torch.zeros(batch, *shape)
            for i, s in enumerate(samples):
                unknown = [k for k in s if k not in self.modalities]
                if unknown:
                    raise BatchError(f"sample {i}: modality {unknown[0]!r} is not one of "
                                     f"{self.modalities}")
                v = s.get(m)
                if v is None:
                    continue
                v = self._tensor(m, v)
                if not self._fits(m, v.shape):
                    steps = f" with 1..{shape[0]} steps" if m in self.sequences else ""
                    raise BatchError(f"sample {i}: modality {m!r} has shape {tuple(v.shape)}, "
                                     f"expected {shape}{steps}")
                if not bool(torch.isfinite(v).all()):
                    raise BatchError(f"sample {i}: modality {m!r} holds NaN or inf")
                t[i, : v.shape[0]] = apply_preprocessing(self.preprocessing, m, v)
                if m in lengths:
                    lengths[m][i] = v.shape[0]
                avail[i, j] = True
            out[m] = t
        empty = (~avail.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise BatchError(f"sample(s) {empty[:5]} have no modality; give at least one of "
                             f"{self.modalities}")
        return out, avail, single, lengths

    def read(self, modality: str, path: str | Path) -> Tensor:
        """``modality``'s file as this model's input (*shape): read as its training data
        were at evaluation (a WAV, a frame, an image, text; see :func:`read_sample`), for
        :meth:`predict`, which applies the stored statistics."""
        return read_sample(self.preprocessing, self.input_shapes, modality, path)

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Prediction:
        """Predict from whatever modalities are present.

        Args:
            inputs: a dict modality -> array that simply omits absent modalities, for one
                sample (arrays shaped like the model's inputs; a sequence modality's (T, D)
                with any 1..T steps; a file's path, read by :meth:`read`; a text
                modality's string) or a batch (a leading batch axis); or a list of such
                per-sample dicts, each with its own modalities (sequences of any length).
        """
        x, avail, _, lengths = self._batch(inputs)
        out = self.model(x, avail, *([lengths] if lengths else []))
        space = self.model.space
        subsets = [space.name(int(i)) for i in space.indices_of(avail)]
        return Prediction(probs=out.logits.softmax(dim=1), subsets=subsets,
                          uncertainty=out.variance)


FILE_KINDS = {"audio": "a WAV file", "frames": "a frame or a folder of frames",
              "image": "an image file", "npy": "a .npy file"}
"""A stored reader's kind in words, for errors."""


def read_sample(preprocessing: Mapping[str, Any], input_shapes: Mapping[str, Sequence[int]],
                modality: str, path: str | Path) -> Tensor:
    """One modality's file -> that modality's input for one sample (*shape), read as the
    model's training data were at evaluation, before the stored statistics (which
    :meth:`Predictor.predict` and ``dmrnet predict`` apply).

    - ``.npy``: the input array itself;
    - ``.txt``: a text modality's words, as token ids of the stored vocabulary;
    - any other file: the modality's stored reader (a WAV to its spectrogram, a frame or a
      frame folder, a face image with its recipe), else an image as it is (RGB-D: depth as
      16-bit PNG, the stored scale applies).
    """
    path = Path(path)
    known = list(input_shapes)
    if modality not in known:
        raise DataError(f"modality {modality!r} is not one of the model's {known}")
    problem = special_file(path, "give a regular file")  # reading it would never end
    if problem is not None:
        raise DataError(problem)
    shape = tuple(input_shapes[modality])
    suffix = path.suffix.lower()
    stored = preprocessing.get(modality)
    if is_text(stored):  # text: the model's vocabulary or tokenizer
        if suffix != ".txt":
            raise DataError(f"modality {modality!r} reads text: give a .txt file, not "
                            f"{str(path)!r}")
        return text_reader(stored, f"preprocessing of {modality!r}").ids(read_words(path))
    recipe = (preprocessing.get(READERS_KEY) or {}).get(modality)
    if suffix == ".txt":
        kind = recipe.get("reader") if isinstance(recipe, Mapping) else "image"
        raise DataError(f"modality {modality!r} was not trained on text; give its .npy input "
                        f"or {FILE_KINDS.get(kind, f'a {kind} file')} ({str(path)!r} was given)")
    if suffix == ".npy":
        return read_npy(path).float()
    if recipe is not None:
        return reader_from_dict(recipe, f"preprocessing of {modality!r}").read_one(path)
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(f"cannot read {str(path)!r} for modality {modality!r}: use .npy or an "
                        "image file")
    if len(shape) == 3 and shape[0] == 1:  # depth-like: keep the raw values (16-bit mm)
        x = torch.from_numpy(_read_png(path).astype(np.float32))
        return (x[..., 0] if x.dim() == 3 else x)[None]
    return read_image(path, "RGB" if shape[0] == 3 else "L").float()


def apply_preprocessing(pre: Mapping[str, Any], modality: str, x: Tensor,
                        batched: bool = False) -> Tensor:
    """Apply the input statistics stored with a model to one sample (*shape) of a modality, or
    to a batch (B, *shape) with ``batched``.

    Two forms: ``{modality: {"scale", "mean", "std"}}`` (per channel for images, e.g. RGB-D)
    and ``{"standardize": {"mean": {modality: [...]}, "std": {...}}}`` (per feature, mfeat).
    """
    p = pre.get(modality)
    if is_text(p):
        return x  # token ids: text was read with the vocabulary (:meth:`Predictor.predict`)
    if isinstance(p, Mapping):
        x = x * float(p.get("scale", 1.0))
        mean = torch.as_tensor(p.get("mean", 0.0), dtype=x.dtype)
        std = torch.as_tensor(p.get("std", 1.0), dtype=x.dtype)
        if mean.dim() == 1:
            mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        return (x - mean) / std
    st = pre.get("standardize")
    if st is None or modality not in st.get("mean", {}):
        return x
    shape = x.shape[1:] if batched else x.shape
    mean = stats_view(torch.tensor(st["mean"][modality], dtype=x.dtype), shape)
    std = stats_view(torch.tensor(st["std"][modality], dtype=x.dtype), shape)
    return (x - mean) / std


def _as_tensor(modality: str, value: Any) -> Tensor:
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise BatchError(f"modality {modality!r} is not a numeric array: {err}") from err


def model_arguments(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The network-building arguments among a module's hyperparameters: the fields of
    :class:`~dmrnet.methods.ModelConfig` a trained network needs, with the method's own
    options as it stores them (e.g. without a teacher's path)."""
    args = {k: hparams[k] for k in ModelConfig.names(serving=True) if k in hparams}
    if not args.get("sequences"):  # a model of fixed-size inputs: a folder dmrnet 0.3 reads
        args.pop("sequences", None)
    if "method_kwargs" in args:
        args["method_kwargs"] = get_method(args["method"]).serving_kwargs(args["method_kwargs"])
    return args


def save_model(module: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``path/config.json`` and ``path/model.safetensors`` for a trained MultimodalModule."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ConfigError(f"{str(path)!r} exists; choose another folder or pass overwrite")
    # written beside the target and moved into place when complete; overwrite replaces only
    # a folder dmrnet wrote, never '', '.', the home folder or '/'
    try:
        with RunFolder(path, overwrite, kind="model") as work:
            _write_model_folder(module, work)
    except OSError as err:  # e.g. a full disk: the partial folder is gone
        raise OutputError(f"cannot write the model folder {str(path)!r}: "
                          f"{err.strerror or first_line(err)}; {str(path)!r} is as it was"
                          ) from err
    return path


def _registered_parts(args: Mapping[str, Any]) -> list[tuple[Any, str, str]]:
    """(registry, kind, name) of each registered piece a model's arguments name: its method,
    encoders and trunk."""
    parts = [(METHODS, "method", args["method"])]
    network = args.get("network")
    network = network if isinstance(network, Mapping) else {}
    encoders = [network.get("encoder", NetworkConfig.encoder)] + [
        e.get("name") if isinstance(e, Mapping) else e
        for e in (network.get("encoders") or {}).values()]
    parts += [(ENCODERS, "encoder", e) for e in encoders if isinstance(e, str)]
    if isinstance(network.get("trunk"), str):
        parts.append((TRUNKS, "trunk", network["trunk"]))
    return parts


def _plugins_used(args: Mapping[str, Any]) -> list[str]:
    """The plugins whose method, encoder or trunk the model is built from."""
    found = {plugin_of(registry.get(name)) for registry, _, name in _registered_parts(args)
             if name in registry}
    return sorted(p for p in found if p is not None)


def _check_plugins(config: Mapping[str, Any], args: Mapping[str, Any], where: str) -> None:
    """A method, encoder or trunk the folder names that nothing registered: one line naming
    the plugin it was written with, if it says."""
    needed = config.get("plugins") or []
    for registry, kind, name in _registered_parts(args):
        if name not in registry:
            if needed:
                raise ConfigError(f"{where!r} needs the plugin(s) {needed} that registered its "
                                  f"{kind} {name!r}; pass --plugin with that file or module "
                                  "(Python: dmrnet.load_plugin(...) first)")
            registry.get(name)  # the registry's own error, listing what exists


def _folder_settings(config: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(mapping, key, name in a model folder) of each local folder a model's settings name:
    an encoder's ``path`` (a pretrained model) and a text modality's ``tokenizer``."""
    found: list[tuple[dict[str, Any], str, str]] = []
    network = config["model"].get("network")
    if isinstance(network, dict):
        if isinstance(network.get("encoder_kwargs"), dict):
            found.append((network["encoder_kwargs"], "path", "pretrained/all"))
        for m, spec in (network.get("encoders") or {}).items():
            if isinstance(spec, dict):
                found.append((spec, "path", f"pretrained/{m}"))
    for m, spec in (config.get("preprocessing") or {}).items():
        if isinstance(spec, dict):
            found.append((spec, "tokenizer", f"tokenizers/{m}"))
    return [(d, k, name) for d, k, name in found if isinstance(d.get(k), str)]


def _bundle_folders(config: dict[str, Any], path: Path) -> None:
    """Copy each local folder the settings name into the model folder, without its weights
    (they are in model.safetensors), and name the copy (relative) in the settings."""
    for spec, key, name in _folder_settings(config):
        source = Path(spec[key]).expanduser()
        if not source.is_dir():  # a file or a name (a plugin encoder's own setting): kept as is
            continue
        target = path / name
        target.mkdir(parents=True)
        for f in sorted(source.iterdir()):
            if f.is_file() and f.suffix not in WEIGHT_SUFFIXES:
                shutil.copyfile(f, target / f.name)
        spec[key] = name


def _localise_folders(config: dict[str, Any], path: Path) -> None:
    """A model folder's relative folder settings (:func:`_bundle_folders`) as paths inside
    it."""
    for spec, key, _ in _folder_settings(config):
        if not Path(spec[key]).is_absolute() and (path / spec[key]).is_dir():
            spec[key] = str(path / spec[key])


def _write_model_folder(module: Any, path: Path) -> None:
    hp = copy.deepcopy(dict(module.hparams))
    args = model_arguments(hp)
    config = {
        "format": FORMAT, "dmrnet_version": __version__,
        "model": args, "class_names": hp.get("class_names"),
        "preprocessing": hp.get("preprocessing"),
        "objective_state": dict(getattr(module, "objective_state", None) or {}),
        **({"plugins": used} if (used := _plugins_used(args)) else {}),
    }
    _bundle_folders(config, path)
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in module.model.state_dict().items()}
    try:
        save_file(state, str(path / WEIGHTS), metadata=_weights_metadata(config))
    except SafetensorError as err:  # its I/O errors (a full disk) as the OSError they are
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))),
                      str(path / WEIGHTS)) from None


_RECORDED = ("modalities", "input_shapes", "class_names")
"""What the weights file records of its model, checked against config.json on loading."""


def _weights_metadata(config: Mapping[str, Any]) -> dict[str, str]:
    model = config["model"]
    names = config.get("class_names") or [str(k) for k in range(model["num_classes"])]
    recorded = {"modalities": list(model["modalities"]),
                "input_shapes": {m: list(s) for m, s in model["input_shapes"].items()},
                "class_names": list(names)}
    return {"format": FORMAT, **{k: json.dumps(v) for k, v in recorded.items()}}


def _check_config(config: Any, where: str) -> dict[str, Any]:
    """The build arguments of a model folder's config, or a ConfigError naming what is wrong."""
    fix = "; write the folder again with save_model or 'dmrnet export'"
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ConfigError(f"{where!r} is not a dmrnet model config ({FORMAT})")
    model = config.get("model")
    if not isinstance(model, dict):
        raise ConfigError(f"{where!r} has no 'model' mapping{fix}")
    model = upgrade_settings(model)  # a folder written by an earlier dmrnet
    missing = [k for k in ("method", "modalities", "input_shapes", "num_classes")
               if k not in model]
    if missing:
        raise ConfigError(f"{where!r} lacks model.{missing[0]}{fix}")
    unknown = sorted(set(model) - set(ModelConfig.names()))
    if unknown:
        raise ConfigError(f"{where!r} has model settings this dmrnet does not know: {unknown} "
                          f"(written by dmrnet {config.get('dmrnet_version')}); upgrade dmrnet")
    mods, shapes, k = model["modalities"], model["input_shapes"], model["num_classes"]
    if (not isinstance(mods, list) or not mods or len(set(mods)) != len(mods)
            or not all(isinstance(m, str) and m for m in mods)):
        raise ConfigError(f"{where!r}: model.modalities must be a list of distinct names, "
                          f"got {mods!r}")
    if not isinstance(shapes, dict) or sorted(shapes) != sorted(mods):
        raise ConfigError(f"{where!r}: model.input_shapes must have one entry per modality "
                          f"{mods}, got {shapes!r}")
    for m, shape in shapes.items():
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in shape)):
            raise ConfigError(f"{where!r}: input shape of {m!r} must be a list of positive "
                              f"sizes, got {shape!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"{where!r}: model.num_classes must be an integer >= 2, got {k!r}")
    names = config.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != k
                              or len(set(map(str, names))) != k):
        raise ConfigError(f"{where!r}: class_names must list {k} distinct names (num_classes), "
                          f"got {names!r}")
    sequences = model.get("sequences") or []
    if not isinstance(sequences, list) or any(m not in shapes for m in sequences):
        raise ConfigError(f"{where!r}: model.sequences must list some of the modalities "
                          f"{mods}, got {sequences!r}")
    _check_preprocessing(config.get("preprocessing") or {}, shapes, where, sequences)
    args = dict(model)
    args["input_shapes"] = {m: tuple(s) for m, s in shapes.items()}
    return args


def _numbers(value: Any, size: int | None, positive: bool = False) -> bool:
    """Whether ``value`` is a finite number (``size`` None or 1) or a list of ``size`` of
    them; with ``positive``, all > 0."""
    items = value if isinstance(value, list) else [value]
    if size is not None and len(items) != size and not (len(items) == 1 and
                                                         not isinstance(value, list)):
        return False
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               and (v > 0 or not positive) for v in items)


def _check_preprocessing(pre: Any, shapes: Mapping[str, list[int]], where: str,
                         sequences: Sequence[str] = ()) -> None:
    """A ConfigError unless ``pre`` is input statistics :func:`apply_preprocessing` can use
    on these input shapes: a std of 0 or a NaN would turn every prediction into NaN or inf,
    a list of the wrong length would fail at the first prediction."""
    if not isinstance(pre, dict):
        raise ConfigError(f"{where!r}: preprocessing must be a mapping")
    fix = "; write the folder again with 'dmrnet export'"
    for key, value in pre.items():
        if key == "standardize":
            if not (isinstance(value, dict) and isinstance(value.get("mean"), dict)
                    and isinstance(value.get("std"), dict)
                    and sorted(value["mean"]) == sorted(value["std"])):
                raise ConfigError(f"{where!r}: preprocessing.standardize must hold mean and std "
                                  f"mappings of the same modalities{fix}")
            for m, mean in value["mean"].items():
                if m not in shapes:
                    raise ConfigError(f"{where!r}: preprocessing.standardize names {m!r}, not a "
                                      f"modality of the model{fix}")
                # a sequence's statistics are per feature, the same for every step
                size = math.prod(shapes[m][1:] if m in sequences else shapes[m])
                if not (isinstance(mean, list) and _numbers(mean, size)
                        and isinstance(value["std"][m], list)
                        and _numbers(value["std"][m], size, positive=True)):
                    raise ConfigError(f"{where!r}: preprocessing.standardize of {m!r} must be "
                                      f"{size} finite means and {size} stds > 0{fix}")
        elif key == READERS_KEY:
            if not (isinstance(value, dict) and all(
                    m in shapes and isinstance(r, dict) and isinstance(r.get("reader"), str)
                    for m, r in value.items())):
                raise ConfigError(f"{where!r}: preprocessing.{READERS_KEY} must map modalities "
                                  f"of the model to file readers ({{reader: KIND, ...}}){fix}")
        elif key in shapes and is_text(value):
            try:
                vocabulary = text_reader(value, f"preprocessing of {key!r}")
            except DMRNetError as err:
                raise ConfigError(f"{where!r}: {err}{fix}") from err
            if key not in sequences or list(shapes[key]) != [vocabulary.max_tokens]:
                raise ConfigError(f"{where!r}: {key!r} has a vocabulary but is not a token "
                                  f"sequence of {vocabulary.max_tokens} ids{fix}")
        elif key in shapes:
            channels = shapes[key][0]
            if not (isinstance(value, dict) and set(value) <= {"scale", "mean", "std"}
                    and _numbers(value.get("scale", 1.0), 1, positive=True)
                    and _numbers(value.get("mean", 0.0), channels)
                    and _numbers(value.get("std", 1.0), channels, positive=True)):
                raise ConfigError(f"{where!r}: preprocessing of {key!r} must be scale > 0, "
                                  f"mean and std > 0 (one number, or {channels}, one a "
                                  f"channel){fix}")
        else:
            raise ConfigError(f"{where!r}: preprocessing names {key!r}, neither a modality of "
                              f"the model nor 'standardize' or {READERS_KEY!r}{fix}")


def _check_recorded(config: Mapping[str, Any], metadata: Mapping[str, str] | None,
                    where: str) -> None:
    """Compare what the weights file recorded (modality order, input shapes, class names)
    with config.json: a config edited or paired with other weights is refused."""

    recorded = {k: metadata[k] for k in _RECORDED if metadata and k in metadata}
    if not recorded:
        warnings.warn(f"{where!r} records no modality order, input shapes or class names "
                      "(written by an older dmrnet); config.json cannot be checked against "
                      "it. Save the model again to record them.", stacklevel=3)
        return
    expected = {k: json.loads(v) for k, v in _weights_metadata(config).items() if k != "format"}
    for key, text in recorded.items():
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where!r}: recorded {key} is not valid JSON: {err}") from err
        if value != expected[key]:
            raise ConfigError(f"config.json says {key} {expected[key]!r} but the weights in "
                              f"{where!r} were trained with {value!r}; use the config.json "
                              "saved with these weights")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Rebuild a model folder written by :func:`save_model` (no training objects, no pickle).

    The config is checked before anything is built: required keys, modality names and input
    shapes, class names; then against what the weights file recorded (modality order, input
    shapes, class names) and, with a forward pass of zeros, that the weights take those shapes.
    """

    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"load_model takes the path of a model folder; got "
                          f"{type(path).__name__} {path!r}")
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ConfigError(f"model folder {str(path)!r} has no {p.name}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(cfg_path)!r} is not valid JSON: {err}") from err
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        _localise_folders(config, path.resolve())
    args = _check_config(config, str(cfg_path))
    _check_plugins(config, args, str(path))
    try:
        with safe_open(str(w_path), framework="pt", device=str(device)) as f:  # read once
            metadata = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"cannot read weights {str(w_path)!r}: {err}") from err
    _check_recorded(config, metadata, str(w_path))
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"weights in {str(w_path)!r} hold NaN or inf ({key}): a diverged "
                              "or damaged model would predict nothing; export a good one")
    try:
        model, _ = build_method(**args)
    except (TypeError, KeyError) as err:
        raise ConfigError(f"{str(cfg_path)!r} does not describe a model: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"weights in {str(w_path)!r} do not fit the config: {first}") from err
    model = model.to(device).eval()
    probe = {m: torch.zeros(1, *s, device=device) for m, s in args["input_shapes"].items()}
    try:
        with torch.no_grad():
            model(probe, torch.ones(1, len(probe), dtype=torch.bool, device=device))
    except (RuntimeError, BatchError) as err:
        raise ConfigError(f"the weights in {str(w_path)!r} do not take the input shapes in "
                          f"config.json {config['model']['input_shapes']}: "
                          f"{str(err).splitlines()[0]}") from err
    return Predictor(model, config)


class _ExportWrapper(torch.nn.Module):
    """(x_1, ..., x_M, availability) -> (probs, uncertainty): one graph for every subset,
    with the model's input statistics applied first when ``preprocessing`` is given."""

    def __init__(self, model: MultimodalNetwork,
                 preprocessing: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.modalities = list(model.modalities)
        self.preprocessing = dict(preprocessing or {})

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *xs, avail = args
        if self.preprocessing:
            xs = [apply_preprocessing(self.preprocessing, m, x, batched=True)
                  for m, x in zip(self.modalities, xs, strict=True)]
        out = self.model(dict(zip(self.modalities, xs, strict=True)), avail > 0.5)
        # zeros of the batch's own size (len() would be traced as the export batch's)
        var = out.variance if out.variance is not None else torch.zeros_like(out.logits[:, 0])
        probs = out.logits.softmax(dim=1)
        # a row with no modality present, or with an availability that is not a number, has
        # no prediction (predict refuses it): NaN, not probabilities that look normal
        ok = (avail > 0.5).any(dim=1) & torch.isfinite(avail).all(dim=1)
        return (torch.where(ok[:, None], probs, torch.full_like(probs, float("nan"))),
                torch.where(ok, var, torch.full_like(var, float("nan"))))


ONNX_INPUTS_KEY = "dmrnet_inputs"
"""ONNX metadata key saying whether the graph takes raw inputs (its preprocessing inside)."""


def export_onnx(predictor: Predictor, path: str | Path, overwrite: bool = False,
                preprocessing: bool = True) -> Path:
    """Write an ONNX graph with inputs ``<modality>`` (B, *shape) and ``availability`` (B, M)
    float (1 = present) and outputs ``probs`` (B, K) and ``uncertainty`` (B,); a row with no
    modality present (or a NaN in its availability) gets NaN outputs.

    The graph starts with the input statistics the model was trained with (the same
    preprocessing as :meth:`Predictor.predict`), so it takes raw inputs. ``preprocessing=False``
    leaves them out: the graph then expects preprocessed inputs, and its metadata
    (``dmrnet_inputs``) says so.
    """
    path = Path(path)
    if predictor.sequences:
        raise ConfigError(f"ONNX export does not take variable-length sequences (modality "
                          f"{predictor.sequences[0]!r}: its graph would need their lengths as "
                          "an input); serve this model with dmrnet predict or "
                          "dmrnet.load_model, or export --format folder")
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give the path of the .onnx file to write")
    if path.exists() and not overwrite:
        raise ConfigError(f"{str(path)!r} exists; choose another file or pass overwrite")
    if path.exists() and not written_by_export(path):
        raise ConfigError(f"{str(path)!r} is not an ONNX model dmrnet exported, so overwrite "
                          "will not replace it; choose another file")
    final, path = path, path.with_name(f".{path.name}.partial-{os.getpid()}")
    model = predictor.model
    was = getattr(model, "validate_inputs", False)
    model.validate_inputs = False  # data-dependent Python checks cannot live in a graph
    try:
        stats = predictor.preprocessing if preprocessing else None
        wrapper = _ExportWrapper(model, stats).eval()
        xs = tuple(torch.zeros(2, *predictor.input_shapes[m]) for m in predictor.modalities)
        avail = torch.ones(2, len(predictor.modalities))
        names = [*predictor.modalities, "availability"]
        axes = {n: {0: "batch"} for n in [*names, "probs", "uncertainty"]}
        with torch.no_grad():
            torch.onnx.export(wrapper, (*xs, avail), str(path), input_names=names,
                              output_names=["probs", "uncertainty"], dynamic_axes=axes,
                              opset_version=17, dynamo=False)
        _set_onnx_inputs_note(path, onnx_inputs_note(predictor, preprocessing))
        os.replace(path, final)  # a complete file, or none
    except OSError as err:  # e.g. a full disk: the partial file is removed below
        raise OutputError(f"cannot write {str(final)!r}: {err.strerror or first_line(err)}; "
                          f"{str(final)!r} is as it was") from err
    finally:
        model.validate_inputs = was
        path.unlink(missing_ok=True)
    return final


def written_by_export(path: Path) -> bool:
    """Whether ``path`` is an ONNX model :func:`export_onnx` wrote (its metadata says so)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # anything that is not an ONNX model
        return False
    return any(prop.key == ONNX_INPUTS_KEY for prop in graph.metadata_props)


def onnx_inputs_note(predictor: Predictor, preprocessing: bool) -> str:
    """What the exported graph expects, in words (stored in its metadata)."""
    if not set(predictor.preprocessing) - {READERS_KEY}:  # file readers: not the graph's
        return "raw: the model was trained without stored input statistics"
    if preprocessing:
        return "raw: the stored input statistics are applied inside the graph"
    return ("preprocessed: the stored input statistics are NOT in the graph; apply them (see "
            "config.json 'preprocessing') before feeding it")


def _set_onnx_inputs_note(path: Path, note: str) -> None:
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {ONNX_INPUTS_KEY: note})
    onnx.save(graph, str(path))
