"""Shared helpers for the benchmark scripts: a conv encoder whose cost dominates, and timing."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from dmrnet.registry import ENCODERS


class SmallCNN(nn.Module):
    """A 4-stage conv encoder over (C, H, W) maps; stands in for the paper's ResNets."""

    def __init__(self, channels: int, width: int = 32, out_features: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for k in range(4):
            w = width * 2**k
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out_features)]
        self.net = nn.Sequential(*layers)
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


if "bench_cnn" not in ENCODERS:
    ENCODERS.register("bench_cnn")(
        lambda input_shape, **kw: SmallCNN(int(input_shape[0]), **kw)
    )


def interleaved(fns: dict[str, Callable[[], None]], reps: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (ABAB...) so that machine
    noise hits every contender alike."""
    for f in fns.values():  # warm-up
        for _ in range(2):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def busy_process(count: int = 1) -> Iterator[None]:
    """``count`` CPU-bound processes (busy loops) running beside the block: another job on a
    shared machine. They are killed when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(count)]
    try:
        time.sleep(0.5)  # let them reach the scheduler's steady state
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
