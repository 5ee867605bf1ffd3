"""Training epoch cost of the preset (``tutored``) against the baseline (target <= 1.3).

An epoch is the same number of steps for both (and the same validation), so the ratio of
their training steps is the ratio of their epochs. A step is what Lightning's training_step
does plus backward and AdamW: draw subsets, forward, the method's training context (the
teachers: nothing per step for ``teacher_init``), loss terms, backward. The teachers' own
training (a stage before the student) is excluded, as the target says. Two models, as in
``train_step.py``: mfeat (six MLP encoders) and conv (two conv encoders on 3x64x64).

    python benchmarks/preset_epoch.py [--reps 7] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved
from dmrnet.data import mfeat
from dmrnet.training import MultimodalModule
from train_step import make_step

TARGET = 1.3
VARIANTS = {"baseline": {}, "tutored": {},
            "baseline+distill": {"teacher_distill": 1.0, "teacher_init": True}}


def case(name: str, kwargs: dict, inputs: dict, target: torch.Tensor, reps: int,
         inner: int, teachers: dict[str, str]) -> float:
    avail = torch.ones(len(target), len(inputs), dtype=torch.bool)
    fns = {}
    for label, options in VARIANTS.items():
        torch.manual_seed(0)
        method = label.split("+")[0]
        opts = None if label == "baseline" else {**options, "teacher_checkpoints": teachers}
        module = MultimodalModule(method=method, method_kwargs=opts, **kwargs)
        if module.context is not None:
            module.context.setup()
        fns[label] = make_step(module, inputs, avail, target)
    t = interleaved(fns, reps=reps, inner=inner)
    ratio = t["tutored"] / t["baseline"]
    print(f"{name:<6} baseline {t['baseline'] * 1e3:7.2f} ms/step   tutored "
          f"{t['tutored'] * 1e3:7.2f} ms/step   ratio tutored/baseline {ratio:.3f}   target <= "
          f"{TARGET}: {'met' if ratio <= TARGET else 'NOT met'}   (baseline + teacher_distill "
          f"{t['baseline+distill'] / t['baseline']:.3f})")
    return ratio


def save_teachers(folder: Path, kwargs: dict) -> dict[str, str]:
    """Untrained one-modality teachers in the checkpoint format (their weights do not change
    the step's cost)."""
    paths = {}
    for m in kwargs["modalities"]:
        module = MultimodalModule(modalities=[m], input_shapes={m: kwargs["input_shapes"][m]},
                                  num_classes=kwargs["num_classes"], method="dedicated",
                                  **{k: v for k, v in kwargs.items()
                                     if k not in ("modalities", "input_shapes", "num_classes")})
        paths[m] = str(folder / f"{m}.ckpt")
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
                   paths[m])
    return paths


def main() -> None:
    import tempfile
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=64, help="samples per step")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")
    batch = args.batch
    with tempfile.TemporaryDirectory() as tmp:
        data = mfeat(seed=0)
        inputs = {m: data.train.features[m][:batch] for m in data.modalities}
        kwargs = dict(modalities=data.modalities, input_shapes=data.input_shapes,
                      num_classes=10)
        case("mfeat", kwargs, inputs, data.train.labels[:batch], args.reps, 20,
             save_teachers(Path(tmp), kwargs))
        shapes = {"rgb": [3, 64, 64], "depth": [1, 64, 64]}
        g = torch.Generator().manual_seed(0)
        inputs = {m: torch.randn(batch, *s, generator=g) for m, s in shapes.items()}
        kwargs = dict(modalities=list(shapes), input_shapes=shapes, num_classes=10,
                      network={"encoder": "bench_cnn"})
        case("conv", kwargs, inputs, torch.randint(0, 10, (batch,), generator=g), args.reps, 3,
             save_teachers(Path(tmp), kwargs))


if __name__ == "__main__":
    main()
