from __future__ import annotations

import numpy as np
import pytest
import torch

from dmrnet.data import DataError, synthetic
from dmrnet.data.synthetic import generate


def test_deterministic_under_a_seed_and_recorded():
    a, b = synthetic(seed=4, train=50, val=20, test=20), synthetic(seed=4, train=50, val=20,
                                                                   test=20)
    for m in a.modalities:
        assert torch.equal(a.test.features[m], b.test.features[m])
    assert not torch.equal(a.test.features["weak"],
                           synthetic(seed=5, train=50, val=20, test=20).test.features["weak"])
    assert a.modalities == ["strong", "medium", "weak"] and a.num_classes == 8
    assert a.info["params"]["weak_order"] == 4
    assert synthetic(num_modalities=5, train=10, val=5, test=5).modalities == [
        "strong", "medium", "medium2", "medium3", "weak"]
    with pytest.raises(DataError, match="at least 3 modalities"):
        synthetic(num_modalities=2)
    with pytest.raises(DataError, match="reads no folder"):
        synthetic(root="/x")


def _linear_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares one-vs-rest readout, fitted on half and scored on the other half."""
    n = len(y) // 2
    onehot = np.eye(8)[y]
    xb = np.c_[x, np.ones(len(x))]
    w, *_ = np.linalg.lstsq(xb[:n], onehot[:n], rcond=None)
    return float((xb[n:] @ w).argmax(1).__eq__(y[n:]).mean())


def test_modalities_differ_in_informativeness():
    feats, y = generate(6000, seed=0)
    acc = {m: _linear_accuracy(f, y) for m, f in feats.items()}
    # the strong view reads two of three bits linearly; the weak one hides its bit in a parity
    # code, so a linear readout of it is near chance (1/8) while the strong one is near 1/2
    assert acc["strong"] > 0.4 > acc["medium"] > 0.15
    assert acc["weak"] < 0.2
    both = _linear_accuracy(np.c_[feats["medium"], feats["weak"]], y)
    assert both > acc["medium"]  # b2's evidence adds up across the two
