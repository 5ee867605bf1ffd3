"""2-process DDP on CPU (gloo): training runs and per-subset test metrics are synced, i.e. equal
to evaluating the same checkpoint in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

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
