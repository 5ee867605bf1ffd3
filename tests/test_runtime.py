"""Precision, CPU threads, TF32 settings and channels-last: the speed options of issue 9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from dmrnet.benchmark import BenchmarkConfig, BenchmarkError, run_benchmark
from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.methods.objectives import KLRegularizer, kl_divergence
from dmrnet.models.late_fusion import ProbabilisticEmbedding
from dmrnet.runtime import (
    FLOPS_PER_THREAD,
    DeviceSetup,
    busy_cores,
    check_precision,
    cpu_threads_for,
    thread_choice,
    training_flops,
    usable_cores,
)
from dmrnet.training import MultimodalDataModule, MultimodalModule

from .fixtures import make_cremad, write_cremad_splits
from .test_determinism import IMAGES, make_batch
from .test_tasks_cli import fit_and_test

MFEAT = {"fou": [76], "fac": [216], "kar": [64], "pix": [240], "zer": [47], "mor": [6]}


def test_small_models_get_one_thread_whatever_the_core_count():
    module = MultimodalModule(list(MFEAT), MFEAT, 10, method="dmrnet")
    flops = training_flops(module.model, {m: tuple(s) for m, s in MFEAT.items()}, 64)
    # six MLP encoders + embedding heads: ~0.77 M multiply-adds a sample, x2 x3 x64
    assert 0.2e9 < flops < 0.4e9
    assert [cpu_threads_for(flops, cores) for cores in (1, 2, 16, 128)] == [1, 1, 1, 1]
    assert thread_choice(flops)[0] == 1 and "under 2 threads' work" in thread_choice(flops)[1]
    # big steps get more threads, never more than the cores, never fewer with more cores
    big = 40 * FLOPS_PER_THREAD
    counts = [cpu_threads_for(big, cores) for cores in (1, 2, 8, 16, 64)]
    assert counts == [1, 2, 8, 16, 40]
    assert training_flops(module.model, {m: tuple(s) for m, s in MFEAT.items()}, 128) == \
        pytest.approx(2 * flops, rel=1e-6)


def test_cores_other_processes_keep_busy_are_not_used():
    big = 40 * FLOPS_PER_THREAD
    assert cpu_threads_for(big, 2, busy=0.2) == 2
    assert cpu_threads_for(big, 2, busy=0.9) == 1  # one core taken: one thread, not two
    assert cpu_threads_for(big, 2, busy=5.0) == 1  # never none
    assert cpu_threads_for(big, 16, busy=3.4) == 13
    assert cpu_threads_for(3 * FLOPS_PER_THREAD, 16, busy=3.4) == 3


@pytest.mark.skipif(not os.path.exists("/proc/stat") or usable_cores() < 2,
                    reason="needs /proc/stat and two cores")
def test_a_busy_process_beside_the_run_is_seen():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        seen = busy_cores(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert seen >= 0.6  # the busy loop: about one core (more if the machine has other work)
    assert seen <= usable_cores()


def _fit(module, data, callback, **trainer):
    L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", callbacks=[callback], **trainer).fit(module, datamodule=data)


def test_device_setup_sizes_threads_for_the_run_and_restores_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    data = MultimodalDataModule("mfeat", modalities=["fac", "mor"], batch_size=64)
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    setup = DeviceSetup()
    L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu", callbacks=[setup, Spy()]).fit(module, datamodule=data)
    assert setup.threads == 1 and seen == [1, 1]  # a small model: one thread
    assert setup.reason.startswith("1 CPU thread (a 0.")
    assert torch.get_num_threads() == before  # restored when the run ends
    fixed = DeviceSetup(cpu_threads=2)
    _fit(module, data, fixed)
    assert fixed.threads == 2 and fixed.reason == "2 CPU threads (as asked)"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    respected = DeviceSetup()
    _fit(module, data, respected)
    # the user's OMP_NUM_THREADS wins over "auto": torch's count is left as it is, and recorded
    assert respected.threads == torch.get_num_threads()
    assert "OMP_NUM_THREADS" in respected.reason
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(3)  # so does a torch.set_num_threads call
    try:
        user = DeviceSetup()
        _fit(module, data, user)
        assert user.threads == 3 and torch.get_num_threads() == 3
        assert "torch.set_num_threads" in user.reason
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [{"matmul_precision": "fast"}, {"cpu_threads": 0},
                                 {"cpu_threads": "many"}])
def test_device_setup_refuses_bad_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        DeviceSetup(**bad)


def test_precision_names_are_lightnings():
    assert check_precision("bf16-mixed") == "bf16-mixed"
    assert check_precision(None) is None
    with pytest.raises(ConfigError, match="unknown precision 'fp8'.*bf16-mixed"):
        check_precision("fp8")


def test_benchmark_bf16_mixed_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "bf16"
    code = main(["benchmark", "--dataset", "mfeat", "--seeds", "0", "--epochs", "2",
                 "--precision", "bf16-mixed", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["precision"] == "bf16-mixed"
    for run in saved["runs"]:
        assert len(run["per_subset"]) == 63
        assert run["mean"] > 0.8  # bf16 autocast still learns mfeat in two epochs


def test_fit_with_bf16_and_channels_last_on_the_cremad_recipe_pipeline(tmp_path):
    """The README's GPU fit command, on the CREMA-D smoke config and fixture, on CPU."""
    root = make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
    write_cremad_splits(root, {"1001", "1002"}, {"1003"})
    m = fit_and_test("cremad.yaml", tmp_path / "run", [
        "--data.root", str(root), "--data.dataset_kwargs.train_csv", "train.csv",
        "--data.dataset_kwargs.test_csv", "test.csv", "--trainer.precision", "bf16-mixed",
        "--model.training.channels_last", "true", "--device.cpu_threads", "2"])
    for subset in ("audio", "visual", "audio+visual"):
        assert 0.0 <= m[f"test/{subset}/accuracy"] <= 1.0


@pytest.mark.parametrize(("precision", "message"), [
    ("16-mixed", "16-mixed does not run on cpu.*--precision bf16-mixed"),
    ("half", "unknown precision 'half'"),
])
def test_benchmark_refuses_a_precision_before_touching_out(tmp_path, precision, message):
    out = tmp_path / "never"
    with pytest.raises((BenchmarkError, ConfigError), match=message):
        run_benchmark(BenchmarkConfig(out=str(out), dataset="mfeat", seeds=[0], epochs=1,
                                      precision=precision, accelerator="cpu"))
    assert not out.exists()


def test_kl_and_sampling_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    emb = ProbabilisticEmbedding(32, 16).train()
    h = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, mu, logvar = emb(h)
        kl = KLRegularizer(1.0)(mu, logvar)
    assert mu.dtype == torch.bfloat16  # the linear layers did run in bf16
    assert z.dtype == mu.dtype and bool(torch.isfinite(z).all())
    assert kl.dtype == torch.float32 and bool(torch.isfinite(kl))
    exact = kl_divergence(mu.double(), logvar.double())
    assert float(kl.detach()) == pytest.approx(float(exact), rel=1e-6)


def test_channels_last_gives_the_same_step_in_the_other_memory_order():
    batch = make_batch(IMAGES, classes=2)
    losses = {}
    for flag in (False, True):
        torch.manual_seed(0)
        module = MultimodalModule(list(IMAGES), IMAGES, 2, method="dmrnet",
                                  network={"encoder": "resnet", "encoder_kwargs": {"width": 8},
                                           "embed_dim": 16},
                                  training={"channels_last": flag})
        conv = module.model.encoders["rgb"].conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == flag
        module.log = lambda *a, **k: None
        torch.manual_seed(1)
        losses[flag] = module.training_step(batch, 0)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)
