from __future__ import annotations

import pytest
import torch

from dmrnet.batch import BatchError, MultimodalCollate, check_inputs, check_targets
from dmrnet.subsets import SubsetError

SHAPES = {"a": (3,), "b": (2, 2)}


def test_collate_zero_fills_absent_modalities():
    collate = MultimodalCollate(["a", "b"], SHAPES)
    items = [
        {"inputs": {"a": torch.ones(3), "b": torch.ones(2, 2)}, "target": 1},
        {"inputs": {"a": torch.full((3,), 2.0)}, "target": 0},
        {"inputs": {"b": torch.full((2, 2), 3.0), "a": None}, "target": 2},
    ]
    batch = collate(items)
    assert batch.availability.tolist() == [[True, True], [True, False], [False, True]]
    assert batch.inputs["a"].shape == (3, 3) and batch.inputs["b"].shape == (3, 2, 2)
    assert torch.equal(batch.inputs["b"][1], torch.zeros(2, 2))
    assert torch.equal(batch.inputs["a"][2], torch.zeros(3))
    assert torch.equal(batch.inputs["a"][1], torch.full((3,), 2.0))
    assert batch.target.tolist() == [1, 0, 2]
    assert batch.inputs["a"].dtype == torch.float32
    # numpy float64 / int items are converted to the model's float32
    import numpy as np

    mixed = collate([{"inputs": {"a": np.arange(3.0), "b": np.ones((2, 2), dtype=np.int64)}}])
    assert mixed.inputs["a"].dtype == torch.float32 and mixed.inputs["b"].dtype == torch.float32
    assert len(batch) == 3


def test_collate_modality_absent_from_whole_batch():
    batch = MultimodalCollate(["a", "b"], SHAPES)([{"inputs": {"a": torch.ones(3)}}])
    assert batch.inputs["b"].shape == (1, 2, 2)
    assert batch.availability.tolist() == [[True, False]]
    assert batch.target is None


def test_collate_errors():
    collate = MultimodalCollate(["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="modality 'a' of item 0 has shape \\(4,\\), expected"):
        collate([{"inputs": {"a": torch.ones(4)}}])
    with pytest.raises(BatchError, match="item 0 has modality 'c', not one of"):
        collate([{"inputs": {"a": torch.ones(3), "c": torch.ones(1)}}])
    with pytest.raises(BatchError, match="empty batch"):
        collate([])
    with pytest.raises(BatchError, match="label all or none"):
        collate([{"inputs": {"a": torch.ones(3)}, "target": 1}, {"inputs": {"a": torch.ones(3)}}])


def test_check_inputs_errors():
    x = {"a": torch.zeros(2, 3), "b": torch.zeros(2, 2, 2)}
    ok = torch.ones(2, 2, dtype=torch.bool)
    check_inputs(x, ok, ["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="modality 'ir' is not one of \\['a', 'b'\\]"):
        check_inputs({**x, "ir": torch.zeros(2, 1)}, ok, ["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="has shape \\(4,\\) per sample, expected \\(3,\\)"):
        check_inputs({**x, "a": torch.zeros(2, 4)}, ok, ["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="no tensor for modality 'b'"):
        check_inputs({"a": x["a"]}, ok, ["a", "b"], SHAPES)
    with pytest.raises(SubsetError, match="no available modality"):
        check_inputs(x, torch.tensor([[True, True], [False, False]]), ["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="availability has 3 columns"):
        check_inputs(x, torch.ones(2, 3, dtype=torch.bool), ["a", "b"], SHAPES)
    with pytest.raises(BatchError, match="empty batch"):
        check_inputs(
            {"a": torch.zeros(0, 3), "b": torch.zeros(0, 2, 2)},
            torch.zeros(0, 2, dtype=torch.bool), ["a", "b"], SHAPES,
        )
    bad = x["a"].clone()
    bad[1, 2] = float("nan")
    with pytest.raises(BatchError, match="modality 'a' holds NaN or inf \\(first in sample 1\\)"):
        check_inputs({**x, "a": bad}, ok, ["a", "b"], SHAPES)
    # NaN in a modality marked unavailable is not the model's concern: it is never used
    check_inputs({**x, "a": bad}, torch.tensor([[True, True], [False, True]]), ["a", "b"])
    inf = x["b"].clone()
    inf[0, 0, 0] = float("inf")
    with pytest.raises(BatchError, match="modality 'b' holds NaN or inf"):
        check_inputs({**x, "b": inf}, ok, ["a", "b"])


def test_check_targets():
    check_targets(torch.tensor([0, 2]), 3)
    with pytest.raises(BatchError, match="target label 3 is outside 0..2"):
        check_targets(torch.tensor([0, 3]), 3)
    with pytest.raises(BatchError, match="target label -1"):
        check_targets(torch.tensor([-1, 0]), 3)
    with pytest.raises(BatchError, match="integer class labels"):
        check_targets(torch.tensor([0.5]), 3)
