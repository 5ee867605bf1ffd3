from __future__ import annotations

import logging
import warnings

import pytest
import torch

from dmrnet.benchmark import quiet_lightning


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    quiet_lightning()
    logging.getLogger("dmrnet").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    torch.manual_seed(0)
    yield


def random_batch(shapes: dict[str, tuple[int, ...]], batch: int = 8, seed: int = 0):
    """Inputs dict and a random availability (every row non-empty)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(batch, *s, generator=g) for m, s in shapes.items()}
    avail = torch.rand(batch, len(shapes), generator=g) > 0.4
    avail[~avail.any(dim=1), 0] = True
    return inputs, avail


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one (and said so)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
