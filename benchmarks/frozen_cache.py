"""A frozen pretrained text encoder with and without its feature store: training epoch time
after the first epoch, measured side by side (epochs alternate between the two models), idle
and beside a busy process, and the largest difference between stored and computed features.

    .venv/bin/python benchmarks/frozen_cache.py

A BERT-shaped model (made here with ``from_config`` + ``save_pretrained``, random weights: the
cost of a forward pass does not depend on them) reads token sequences of 16..64 ids.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_process
from dmrnet.batch import MultimodalCollate
from dmrnet.data.base import ArrayDataset
from dmrnet.nn.pretrained import FEATURES
from dmrnet.training import MultimodalModule


def bert_folder(folder: Path, width: int, layers: int, vocab: int) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                         num_attention_heads=4, intermediate_size=2 * width,
                         max_position_embeddings=128)).save_pretrained(folder)
    return folder


def data(samples: int, steps: int, vocab: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, steps + 1, (samples,), generator=g)
    ids = torch.randint(5, vocab, (samples, steps), generator=g).float()
    labels = torch.arange(samples) % 2
    return ArrayDataset({"text": ids, "face": torch.randn(samples, 8, generator=g)}, labels,
                        lengths={"text": lengths})


def model(folder: Path, steps: int, cache: bool) -> MultimodalModule:
    torch.manual_seed(0)
    shapes = {"text": [steps], "face": [8]}
    module = MultimodalModule(list(shapes), shapes, 2, sequences=["text"], network={
        "embed_dim": 32, "encoder_kwargs": {"hidden": [32]},
        "encoders": {"text": {"name": "hf", "path": str(folder), "cache": cache}}})
    module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no trainer here
    return module


def epoch(module: MultimodalModule, opt: torch.optim.Optimizer, batches: list) -> float:
    module.train()
    t0 = time.perf_counter()
    for i, b in enumerate(batches):
        loss = module.training_step(b, i)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - t0


def measure(folder: Path, args: argparse.Namespace, batches: list) -> tuple[float, float, float]:
    """(first epoch with the store, median later epoch with it, median epoch without)."""
    FEATURES.clear()
    cached, plain = model(folder, args.steps, True), model(folder, args.steps, False)
    opts = {m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
            for m in (cached, plain)}
    first = epoch(cached, opts[cached], batches)
    with_store, without = [], []
    for _ in range(args.epochs - 1):  # alternating, so machine noise hits both alike
        with_store.append(epoch(cached, opts[cached], batches))
        without.append(epoch(plain, opts[plain], batches))
    return first, statistics.median(with_store), statistics.median(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=64, help="longest sequence T")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="the first fills the store")
    parser.add_argument("--reps", type=int, default=1, help="repetitions (medians printed)")
    args = parser.parse_args()
    args.epochs = max(args.epochs, 2)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    vocab = 1000
    dataset = data(args.samples, args.steps, vocab)
    collate = MultimodalCollate(["text", "face"], {"text": (args.steps,), "face": (8,)},
                                sequences=["text"])
    batches = [collate(dataset.__getitems__(list(range(i, min(i + args.batch, args.samples)))))
               for i in range(0, args.samples, args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = bert_folder(Path(tmp) / "bert", args.width, args.layers, vocab)
        for label, busy in (("idle", 0), ("beside 1 busy process", 1)):
            runs = []
            for _ in range(args.reps):
                with busy_process(busy) if busy else contextlib.nullcontext():
                    runs.append(measure(folder, args, batches))
            first, store, plain = (statistics.median(r[k] for r in runs) for k in range(3))
            print(f"{label}: epoch 1 with the store {first:.3f} s; later epochs {store:.3f} s "
                  f"with it vs {plain:.3f} s without: ratio without/with {plain / store:.1f}x")
        # stored features against computed ones, for every sample
        FEATURES.clear()
        cached, plain = model(folder, args.steps, True), model(folder, args.steps, False)
        cached.eval(), plain.eval()
        worst = 0.0
        with torch.no_grad():
            for b in batches:
                enc, ref = cached.model.encoders["text"], plain.model.encoders["text"]
                enc(b.inputs["text"], b.lengths["text"])  # fills the store
                stored = enc(b.inputs["text"], b.lengths["text"])  # reads it
                worst = max(worst, float((stored - ref(b.inputs["text"], b.lengths["text"]))
                                         .abs().max()))
        print(f"stored vs computed features: max |difference| {worst:.2e} over "
              f"{args.samples} samples")


if __name__ == "__main__":
    main()
