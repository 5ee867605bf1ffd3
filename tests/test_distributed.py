"""2-process DDP on CPU (gloo): training runs and per-subset test metrics are synced, i.e. equal
to evaluating the same checkpoint in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from dmrnet.predict import load_module
from dmrnet.training import MultimodalDataModule

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_process_ddp_metrics_equal_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    run = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and len(ddp["hard_subsets"]) == 1
    module = load_module(ddp["checkpoint"])
    data = MultimodalDataModule("mfeat", modalities=["fac", "pix", "mor"], seed=0,
                                eval_batch_size=100)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(module, datamodule=data, verbose=False)
    single = module.test_results["per_subset"]
    assert set(single) == set(ddp["test"]["per_subset"])
    for subset, value in single.items():
        assert ddp["test"]["per_subset"][subset] == pytest.approx(value, abs=1e-9), subset
    assert ddp["test"]["mean"] == pytest.approx(module.test_results["mean"], abs=1e-9)
    # each test sample's statistics, gathered from both processes (they were not recorded
    # under DDP, and the comparisons had no test-sample intervals for such runs)
    samples = np.load(tmp_path / "samples.npz")
    assert set(samples.files) == {f"{s}|{k}" for s in module.test_samples for k in ("ids", "rows")}
    for subset, parts in module.test_samples.items():
        assert np.array_equal(samples[f"{subset}|ids"], parts["ids"]), subset
        assert np.allclose(samples[f"{subset}|rows"], parts["rows"], atol=1e-6), subset


def test_first_of_each_keeps_one_row_per_sample():
    """A distributed sampler repeats samples to even out the processes: each kept once."""
    from dmrnet.training import _first_of_each

    unique, first = _first_of_each(torch.tensor([4, 0, 2, 0, 4, 1]))
    assert unique.tolist() == [0, 1, 2, 4] and first.tolist() == [1, 5, 2, 0]


@pytest.mark.slow
def test_torchrun_launch(tmp_path):
    """The same worker under torchrun: Lightning takes the processes torchrun started."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", str(HERE / "ddp_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and set(ddp["test"]["per_subset"]) == {
        "fac", "pix", "mor", "fac+pix", "fac+mor", "pix+mor", "fac+pix+mor"}
