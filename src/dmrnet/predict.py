"""``dmrnet predict``: run a trained checkpoint on one sample with whatever modalities are given,
for every subset of them; for dense models, write a picture of the predictions side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from dmrnet.data.base import DataError
from dmrnet.data.io import read_npy
from dmrnet.data.rgbd import VOID, _labels_from_file, _read_png
from dmrnet.errors import ConfigError
from dmrnet.evaluation import subset_outputs
from dmrnet.methods import load_weights, read_checkpoint
from dmrnet.serving import apply_preprocessing, load_model, read_sample
from dmrnet.training import MultimodalModule


def load_module(checkpoint: str | Path) -> MultimodalModule:
    """A MultimodalModule from a Lightning checkpoint, read with ``weights_only=True``
    (settings saved by earlier dmrnet versions are upgraded; see ``upgrade_settings``). The
    random-number state stored for resuming is not applied."""

    path, ckpt = read_checkpoint(checkpoint)
    try:
        module = MultimodalModule(**ckpt["hyper_parameters"])
    except TypeError as err:
        raise ConfigError(f"{path!r} has settings this dmrnet does not know ({err}); "
                          "upgrade dmrnet") from err
    load_weights(module, ckpt["state_dict"], path)
    module.restore_choice(ckpt)
    return module.eval()


@dataclass
class ServedModel:
    """A model folder in the shape the commands use a checkpoint's module: ``model`` (eval
    mode), ``hparams`` (its model arguments, class names, preprocessing), ``objective_state``
    (what its training objective chose, in its own words)."""

    model: nn.Module
    hparams: dict[str, Any]
    objective_state: dict[str, Any] = field(default_factory=dict)


def load_trained(path: str | Path) -> Any:
    """A checkpoint (.ckpt, read with ``weights_only=True``) or a model folder (config.json +
    model.safetensors, no pickle) -> a MultimodalModule or a :class:`ServedModel`."""
    if Path(path).is_dir():
        pred = load_model(path)
        hparams = {**pred.config["model"], "class_names": pred.config.get("class_names"),
                   "preprocessing": pred.preprocessing}
        return ServedModel(pred.model, hparams, dict(pred.config.get("objective_state") or {}))
    return load_module(path)


def read_input(module: Any, modality: str, path: str | Path) -> Tensor:
    """One modality's file -> the model's input (1, *shape), read as its training data were
    at evaluation (:func:`~dmrnet.serving.read_sample`), with the stored statistics."""
    pre: Mapping[str, Any] = module.hparams.get("preprocessing") or {}
    x = read_sample(pre, module.hparams["input_shapes"], modality, path)
    return apply_preprocessing(pre, modality, x)[None]  # shapes: checked by the model


def predict_subsets(module: Any, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Probabilities for every subset of the given modalities: name -> (1, K[, H, W])."""

    model = module.model
    unknown = [m for m in inputs if m not in model.modalities]
    if unknown:
        raise DataError(f"modality {unknown[0]!r} is not one of the model's {model.modalities}")
    if not inputs:
        raise DataError(f"give at least one input, e.g. --input {model.modalities[0]}=FILE")
    shapes = module.hparams["input_shapes"]
    sequences = list(module.hparams.get("sequences") or [])
    lengths = {}
    for m in sequences:  # one sample of 1..T steps, padded to T
        shape, given = tuple(shapes[m]), inputs.get(m)
        steps = 0 if given is None else int(given.shape[1])
        if given is not None and (given.dim() != len(shape) + 1 or not 1 <= steps <= shape[0]
                                  or tuple(given.shape[2:]) != shape[1:]):
            raise DataError(f"modality {m!r} is a sequence of 1..{shape[0]} steps of "
                            f"{shape[1:]}; got an input of shape {tuple(given.shape[1:])}")
        if given is not None:
            inputs = {**inputs, m: torch.cat(
                [given, given.new_zeros(1, shape[0] - steps, *shape[1:])], dim=1)}
        lengths[m] = torch.tensor([steps])
    # a dense model takes pictures of any size: an absent picture trained at the size of a
    # given one takes that one's size now; other inputs (a vector, a spectrogram) keep theirs
    sizes = {tuple(shapes[m][1:]): tuple(x.shape[-2:]) for m, x in inputs.items()
             if len(shapes[m]) == 3 and x.dim() == 4}
    full = {}
    for m in model.modalities:
        if m in inputs:
            full[m] = inputs[m]
        else:  # absent: zeros of the right shape, marked unavailable
            shape = tuple(shapes[m])
            if len(shape) == 3:
                shape = (shape[0], *sizes.get(shape[1:], shape[1:]))
            full[m] = torch.zeros(1, *shape)
    avail = torch.tensor([[m in inputs for m in model.modalities]])
    with torch.no_grad():
        return {model.space.name(s): out.logits.softmax(dim=1)
                for s, _, out in subset_outputs(model, full, avail, lengths=lengths or None)}


def palette(k: int) -> np.ndarray:
    """A fixed, distinct colour per class (tab20, then seeded random colours; void = black)."""
    import matplotlib

    tab = (np.array(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    tab = np.concatenate([tab[0::2], tab[1::2]])  # the strong colours first
    extra = np.random.default_rng(12345).integers(40, 256, (max(k - len(tab), 0), 3))
    return np.concatenate([tab, extra.astype(np.uint8)])[:k]


def colourise(label: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((*label.shape, 3), np.uint8)
    valid = (label >= 0) & (label < k)
    out[valid] = palette(k)[label[valid]]
    return out


def write_picture(path: str | Path, raw: Mapping[str, np.ndarray], probs: Mapping[str, Tensor],
                  class_names: list[str], label: np.ndarray | None = None) -> None:
    """Inputs, ground truth and each subset's prediction side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = []
    for name, img in raw.items():
        if img.ndim == 3:
            panels.append((name, img, {}))
        else:
            panels.append((name, img, {"cmap": "viridis"}))
    if label is not None:
        panels.append(("ground truth", colourise(label, k), {}))
    for subset, p in probs.items():
        panels.append((f"prediction: {subset}", colourise(p[0].argmax(0).numpy(), k), {}))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, img, kw) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    colours = palette(k) / 255.0
    handles = [matplotlib.patches.Patch(color=colours[c], label=class_names[c]) for c in range(k)]
    fig.legend(handles=handles, loc="lower center", ncol=min(k, 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_predict(checkpoint: str, inputs: Mapping[str, str], out: str | None,
                label: str | None = None, overwrite: bool = False) -> dict[str, Tensor]:
    module = load_trained(checkpoint)
    tensors = {m: read_input(module, m, p) for m, p in inputs.items()}
    probs = predict_subsets(module, tensors)
    names = list(module.hparams.get("class_names") or
                 [str(c) for c in range(module.hparams["num_classes"])])
    first = next(iter(probs.values()))
    if first.dim() == 2:
        for subset, p in probs.items():
            top = int(p[0].argmax())
            print(f"{subset:<30} {names[top]}  (p = {float(p[0, top]):.3f})")
        return probs
    if out is None:
        raise DataError("dense prediction writes a picture: give --out FILE.png")
    if Path(out).exists() and not overwrite:
        raise DataError(f"{out!r} exists; choose another --out or pass --overwrite")
    raw = {m: _shown(p, tensors[m][0]) for m, p in inputs.items()}
    lab = None
    if label is not None:

        lab_t = _labels_from_file(_read_png(Path(label)), len(names), repr(label))
        lab = np.where(lab_t.numpy() == VOID, -1, lab_t.numpy())
    write_picture(out, raw, probs, names, lab)
    print(f"wrote {out}: {', '.join(raw)} inputs and predictions for {', '.join(probs)}")
    return probs


def _shown(path: str, x: Tensor) -> np.ndarray:
    """What the picture shows of an input: a colour image as it is ((H, W, 3) uint8; a
    3-channel .npy scaled to its own range), any other input's first channel."""
    if x.shape[0] != 3:
        return x[0].numpy()
    if Path(path).suffix.lower() != ".npy":
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    arr = read_npy(Path(path)).numpy().astype(np.float64)
    arr = arr.transpose(1, 2, 0) if arr.ndim == 3 and arr.shape[0] == 3 else arr
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
