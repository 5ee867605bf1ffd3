"""Pretrained encoders from a local Hugging Face model folder (``encoder: hf``): any
``AutoModel`` folder, read with ``local_files_only`` and safetensors weights only, so nothing is
downloaded and no pickle is loaded. Needs ``pip install 'dmrnet[hf]'`` (transformers).

Inputs by the model's main input: token ids (T,) of a text modality (a sequence with lengths:
the attention mask covers the real tokens), pixel values (C, H, W) of an image modality, a
waveform (N,) of an audio modality read with ``audio: {waveform: true}`` for a wav2vec2-like
model (standardised as its feature extractor would), or any other fixed-size input the model
takes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmrnet.batch import BatchError
from dmrnet.errors import ConfigError
from dmrnet.nn.sequence import SequenceEncoder, masked_mean
from dmrnet.registry import ENCODERS

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
"""Files of a model folder that hold weights (a model folder of dmrnet copies the others: the
configuration and the tokenizer)."""


def model_folder(path: Any, what: str = "encoder 'hf'") -> Path:
    """A local Hugging Face model folder (config.json inside), or a one-line error: nothing is
    downloaded, so a hub name is refused."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ConfigError(f"{what} needs path: the local folder of a Hugging Face model "
                          "(config.json and weights, e.g. written by save_pretrained)")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{what}: {str(path)!r} is not a local model folder (no config.json "
                          "there); nothing is downloaded: save the model with save_pretrained "
                          "and give its folder")
    return folder


def transformers_module() -> Any:
    """The transformers package, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ConfigError("encoder 'hf' needs transformers: pip install 'dmrnet[hf]' (after "
                          "torch)") from err
    return transformers


class FeatureStore:
    """Pooled features of frozen encoders, by (the encoder's weights and pooling, the input
    sample's content), shared by every model of a process (the runs of one benchmark). Least
    recently used entries go past ``max_bytes``; a sample seen again with other content (a
    random augmentation) is simply another entry."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str, bytes], Tensor] = OrderedDict()
        self.size = 0
        self.hits = self.misses = 0

    def get(self, key: tuple[str, bytes]) -> Tensor | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return found

    def put(self, key: tuple[str, bytes], value: Tensor) -> None:
        if key in self.entries:
            return
        self.entries[key] = value
        self.size += value.numel() * value.element_size()
        while self.size > self.max_bytes and self.entries:
            _, old = self.entries.popitem(last=False)
            self.size -= old.numel() * old.element_size()

    def clear(self) -> None:
        self.entries.clear()
        self.size = self.hits = self.misses = 0


FEATURES = FeatureStore()
"""The process's store of frozen encoders' features (:class:`FeatureStore`)."""


class PretrainedEncoder(SequenceEncoder):
    """A Hugging Face backbone pooled to (B, hidden_size): ``cls`` (its first token) or
    ``mean`` (over the real tokens, or every position of a fixed-size input).

    ``freeze``: True keeps every pretrained weight fixed and the backbone in eval mode (its
    features are then a function of the input: dropout off); an int k trains the last k
    layers only; False trains everything. ``lr_scale`` multiplies the learning rate of its
    trainable pretrained weights (the optimiser reads it).

    ``cache``: a frozen encoder computes each input sample's features once and reuses them
    (:data:`FEATURES`, keyed by its weights and the sample's content), in every epoch and
    for every model of the process with the same weights; a changed input (augmentation)
    is computed afresh.
    """

    def __init__(self, backbone: nn.Module, steps: int, pooling: str = "cls",
                 freeze: bool | int = True, lr_scale: float = 1.0, cache: bool = True) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"encoder 'hf': pooling must be 'cls' or 'mean'; got {pooling!r}")
        self.backbone = backbone
        self.input_name = str(getattr(backbone, "main_input_name", "input_ids"))
        # a ViT-like model takes images of another size than it was trained at when its
        # position embeddings are interpolated (it refuses them otherwise)
        size = getattr(backbone.config, "image_size", None)
        self.native_size = (size, size) if isinstance(size, int) else (
            tuple(size) if isinstance(size, list | tuple) else None)
        self.interpolates = self.native_size is not None and "interpolate_pos_encoding" in \
            inspect.signature(backbone.forward).parameters
        self.pooling, self.max_steps = pooling, steps
        self.out_features = int(backbone.config.hidden_size)
        self.frozen = freeze is True
        self.lr_scale = float(lr_scale)
        self.cache = bool(cache) and self.frozen
        # the digest of the tokenizer its token ids must come from (tokenizer_digest)
        self.tokenizer: str | None = None
        # a waveform model's (wav2vec2, HuBERT, WavLM): the rate its feature extractor
        # reads, and whether it standardises each waveform (zero mean, unit variance)
        self.waveform_rate: int | None = None
        self.normalize = False
        # an image model's (its image processor's mean and std): inputs are mapped to them
        # by a per-channel affine map, fitted to how the data were read (adapt_pixels) and
        # kept with the weights, so a served model maps its inputs the same way
        self.pixel_mean: tuple[float, ...] | None = None
        self.pixel_std: tuple[float, ...] | None = None
        self._identity: str | None = None  # the weights' digest, made at first use
        # weights loaded later (a checkpoint) are other weights: digest them again
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(
            module, "_identity", None))
        if freeze is True:
            backbone.requires_grad_(False)
        elif freeze is not False:
            layers = _layers(backbone)
            if not isinstance(freeze, int) or not 0 <= freeze <= len(layers):
                raise ConfigError(f"encoder 'hf': freeze must be true, false or a number of last "
                                  f"layers to train, 0..{len(layers)}; got {freeze!r}")
            backbone.requires_grad_(False)
            for layer in list(layers)[len(layers) - freeze:]:
                layer.requires_grad_(True)

    def normalizes_pixels(self, mean: list[float], std: list[float]) -> None:
        """Take pixels in [0, 1] and standardise them with the model's ``mean`` and ``std``
        (its image processor's), until :meth:`adapt_pixels` says the inputs are otherwise."""
        self.pixel_mean, self.pixel_std = tuple(map(float, mean)), tuple(map(float, std))
        self.register_buffer("in_scale", torch.ones(len(mean), 1, 1))
        self.register_buffer("in_shift", torch.zeros(len(mean), 1, 1))
        self.adapt_pixels(0.0, 1.0)

    def adapt_pixels(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        """The inputs are (p - mean) / std of pixels p in [0, 1] (a data reader's units):
        map them to the model's (p - pixel_mean) / pixel_std."""
        if self.pixel_mean is None or self.pixel_std is None:
            return
        c = len(self.pixel_mean)
        a = torch.as_tensor(mean, dtype=torch.float32).expand(c).reshape(c, 1, 1)
        b = torch.as_tensor(std, dtype=torch.float32).expand(c).reshape(c, 1, 1)
        m = torch.tensor(self.pixel_mean).reshape(c, 1, 1)
        s = torch.tensor(self.pixel_std).reshape(c, 1, 1)
        self.in_scale.copy_(b / s)
        self.in_shift.copy_((a - m) / s)
        self._identity = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        # weights saved before the pixel map existed (dmrnet 0.4): the map that was in
        # effect then, none
        for name, value in (("in_scale", 1.0), ("in_shift", 0.0)):
            if name in self._buffers and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full_like(self._buffers[name], value)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def train(self, mode: bool = True) -> PretrainedEncoder:
        super().train(mode)
        if self.frozen:  # a fixed backbone: no dropout, the same features every epoch
            self.backbone.eval()
        return self

    def identity(self) -> str:
        """A digest of the backbone's weights, pooling and input (the store's key): models
        whose frozen encoders hold the same weights share their features."""
        if self._identity is None:
            digest = hashlib.blake2b(f"{self.pooling}|{self.input_name}".encode(),
                                     digest_size=16)
            for name, t in sorted(self.backbone.state_dict().items()):
                digest.update(name.encode())
                digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
            self._identity = digest.hexdigest()
        return self._identity

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        # a traced or compiled graph computes its features (the store is Python-side)
        if not self.cache or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.features(x, lengths)
        real = self.full_lengths(x, lengths) if self.input_name == "input_ids" else None
        rows, weights = x.detach().cpu(), self.identity()
        keys = []
        for i in range(len(rows)):
            sample = rows[i, : int(real[i])] if real is not None else rows[i]
            keys.append((weights, hashlib.blake2b(
                sample.contiguous().numpy().tobytes(), digest_size=16).digest()))
        found = [FEATURES.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            index = torch.tensor(todo, device=x.device)
            with torch.no_grad():
                fresh = self.features(x.index_select(0, index), None if lengths is None
                                      else lengths.index_select(0, index.to(lengths.device)))
            for i, f in zip(todo, fresh, strict=True):
                found[i] = f
                FEATURES.put(keys[i], f)
        return torch.stack([f.to(x.device) for f in found])  # type: ignore[misc]

    def features(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, hidden_size) pooled features of the backbone."""
        mask = None
        if self.input_name == "input_ids":
            ids, lengths, mask = self.real_steps(x, lengths)
            if bool(((ids != ids.round()) | (ids < 0)).any()):  # one device sync
                raise BatchError("token ids must be whole numbers >= 0 for a pretrained text "
                                 "encoder")
            inputs = {"input_ids": ids.round().long(), "attention_mask": mask.long()}
        else:
            if lengths is not None:
                raise BatchError(f"encoder 'hf' of a model taking {self.input_name} reads "
                                 "fixed-size inputs, not variable-length sequences")
            if self.normalize:  # as the model's feature extractor does (do_normalize)
                x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(
                    x.var(dim=-1, keepdim=True, unbiased=False) + 1e-7)
            if self.pixel_mean is not None:
                x = x * self.in_scale + self.in_shift
            inputs = {self.input_name: x}
            if self.interpolates and tuple(x.shape[-2:]) != self.native_size:
                inputs["interpolate_pos_encoding"] = True
        hidden = self.backbone(**inputs).last_hidden_state
        if hidden.dim() > 3:  # a feature map (B, C, H, W): positions last
            hidden = hidden.flatten(2).transpose(1, 2)
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(dim=1)
        return masked_mean(hidden, mask)


def _layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of layers (BERT-, ViT- and wav2vec2-like models keep it at
    ``encoder.layer`` or ``encoder.layers``)."""
    encoder = getattr(backbone, "encoder", None)
    for name in ("layer", "layers"):
        layers = getattr(encoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError("encoder 'hf': freeze as a number of layers needs a model whose layers "
                      "are at encoder.layer (BERT, ViT, ...); use freeze: true or false")


@ENCODERS.register("hf")
def hf(input_shape: tuple[int, ...], path: str | None = None, pooling: str = "cls",
       freeze: bool | int = True, lr_multiplier: float = 1.0, cache: bool = True
       ) -> PretrainedEncoder:
    """A pretrained model from the local folder ``path`` (see :class:`PretrainedEncoder`).
    Its safetensors weights are read when the folder has them; a folder with the
    configuration alone (as a dmrnet model folder keeps it) builds the architecture, whose
    weights then come from the dmrnet checkpoint."""
    folder = model_folder(path)
    transformers = transformers_module()
    if not (isinstance(lr_multiplier, (int, float)) and lr_multiplier >= 0):
        raise ConfigError(f"encoder 'hf': lr_multiplier must be >= 0; got {lr_multiplier!r}")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    if any(folder.glob("*.safetensors")):
        backbone = transformers.AutoModel.from_pretrained(
            folder, config=config, local_files_only=True, use_safetensors=True)
    elif any(f.suffix in WEIGHT_SUFFIXES for f in folder.iterdir()):
        raise ConfigError(f"encoder 'hf': {str(folder)!r} holds weights in a pickle-based "
                          "format only; dmrnet reads safetensors (save_pretrained writes them)")
    else:
        backbone = transformers.AutoModel.from_config(config)
    extractor = _feature_extractor(folder)
    waveform = (getattr(backbone, "main_input_name", "") == "input_values"
                and extractor.get("feature_extractor_type") == "Wav2Vec2FeatureExtractor")
    if waveform and len(input_shape) != 1:
        rate = extractor.get("sampling_rate", 16000)
        raise ConfigError(f"encoder 'hf': the model at {str(folder)!r} reads waveforms (N,), "
                          f"not inputs of shape {tuple(input_shape)}; read the audio as one: "
                          f"dataset_kwargs: {{audio: {{waveform: true, sample_rate: {rate}}}}}")
    steps = int(input_shape[0]) if len(input_shape) == 1 else 0
    most = getattr(config, "max_position_embeddings", None)
    if getattr(backbone, "main_input_name", "") == "input_ids" and steps and \
            isinstance(most, int) and steps > most:
        raise ConfigError(f"encoder 'hf': the text holds up to {steps} tokens but the model at "
                          f"{str(folder)!r} takes at most {most}; read fewer: dataset_kwargs: "
                          f"{{text: {{max_tokens: {most}}}}}")
    encoder = PretrainedEncoder(backbone, steps, pooling, freeze, float(lr_multiplier),
                                cache=cache)
    if encoder.input_name == "input_ids" and tokenizer_folder(folder) is not None:
        encoder.tokenizer = tokenizer_digest(folder)
    if waveform:
        encoder.waveform_rate = int(extractor.get("sampling_rate", 16000))
        encoder.normalize = bool(extractor.get("do_normalize", True))
    mean, std = extractor.get("image_mean"), extractor.get("image_std")
    if encoder.input_name == "pixel_values" and extractor.get("do_normalize", True) and \
            _numbers(mean) and _numbers(std) and len(mean) == len(std) and min(std) > 0:
        encoder.normalizes_pixels(mean, std)
    return encoder


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value)


def _feature_extractor(folder: Path) -> dict[str, Any]:
    """The folder's feature extractor settings (``preprocessor_config.json``), or {}."""
    path = folder / "preprocessor_config.json"
    try:
        found = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise ConfigError(f"encoder 'hf': {str(path)!r} is not readable JSON ({err})") from err
    return found if isinstance(found, dict) else {}


def tokenizer_folder(folder: str | Path) -> str | None:
    """The folder as a tokenizer (resolved), where it holds one; else None."""
    path = Path(folder).expanduser()
    if any(path.glob("tokenizer*.json")) or (path / "vocab.txt").is_file():
        return str(path.resolve())
    return None


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def tokenizer_digest(folder: str | Path) -> str:
    """A digest of a tokenizer folder's vocabulary files: the same tokenizer wherever it is
    copied (a model folder keeps one beside its encoder's configuration)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in TOKENIZER_FILES:
        path = Path(folder).expanduser() / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _tokenizer_of(settings: dict[str, Any]) -> str | None:
    """The tokenizer an ``hf`` encoder of these settings reads text with (its folder's)."""
    path = settings.get("path")
    return tokenizer_folder(path) if isinstance(path, str) and Path(path).is_dir() else None


hf.tokenizer_of = _tokenizer_of  # type: ignore[attr-defined]
