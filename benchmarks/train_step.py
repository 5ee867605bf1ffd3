"""Training step time, DMRNet / baseline, on the same network (target <= 1.05).

A step is what Lightning's training_step does plus backward and the optimiser: draw subsets,
forward, loss terms (task, KL, HCR bookkeeping), backward, AdamW. The two methods differ only by
DMRNet's variance head, sampling, KL and HCR. Two models are measured:

- mfeat: the default benchmark model (six MLP encoders on 649 features, embedding 256); here the
  embedding heads are a large share of all compute, so the variance head shows;
- conv: two conv encoders on 3x64x64 inputs (encoders dominate, as with the paper's ResNets).

    python benchmarks/train_step.py [--reps 7] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved
from dmrnet.batch import Batch
from dmrnet.data import mfeat
from dmrnet.training import MultimodalModule


def make_step(module: MultimodalModule, inputs: dict, avail: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()

    def step() -> None:
        drawn = module.sampler.sample(avail)
        idx = module.space.indices_of(drawn)
        out = module.model(inputs, drawn)
        extra = {} if module.context is None else module.context(
            Batch(inputs=inputs, availability=drawn, target=target), "cpu")
        loss = module.objective(out, target, idx, **extra)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def case(name: str, kwargs: dict, inputs: dict, target: torch.Tensor, reps: int, inner: int):
    avail = torch.ones(len(target), len(inputs), dtype=torch.bool)
    fns = {}
    for method in ("baseline", "dmrnet"):
        torch.manual_seed(0)
        module = MultimodalModule(method=method, **kwargs)
        fns[method] = make_step(module, inputs, avail, target)
    t = interleaved(fns, reps=reps, inner=inner)
    ratio = t["dmrnet"] / t["baseline"]
    print(f"{name:<8} baseline {t['baseline'] * 1e3:7.2f} ms/step   dmrnet "
          f"{t['dmrnet'] * 1e3:7.2f} ms/step   ratio dmrnet/baseline {ratio:.3f}"
          f"   target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=64, help="samples per step")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")

    data = mfeat(seed=0)
    batch = args.batch
    inputs = {m: data.train.features[m][:batch] for m in data.modalities}
    target = data.train.labels[:batch]
    case("mfeat", dict(modalities=data.modalities, input_shapes=data.input_shapes,
                       num_classes=10), inputs, target, args.reps, inner=20)

    shapes = {"rgb": [3, 64, 64], "depth": [1, 64, 64]}
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(batch, *s, generator=g) for m, s in shapes.items()}
    target = torch.randint(0, 10, (batch,), generator=g)
    case("conv", dict(modalities=list(shapes), input_shapes=shapes, num_classes=10,
                      network={"encoder": "bench_cnn"}), inputs, target, args.reps, inner=3)


if __name__ == "__main__":
    main()
