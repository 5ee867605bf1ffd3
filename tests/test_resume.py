"""Kill a training process with SIGKILL mid-run, resume with --resume, and finish with exactly
the weights and metrics of an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", str(ROOT / "configs" / "mfeat_dmrnet.yaml"), "--data.modalities",
        "[fac, mor]", "--trainer.max_epochs", "4", "--data.batch_size", "16",
        "--model.method_kwargs.hcr_warmup_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--checkpoint.every_n_epochs", "1"]


def fit(root: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "dmrnet.cli", "fit", *ARGS,
                             "--trainer.default_root_dir", str(root), *extra],
                            cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def last_epoch(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # being written
        return -1


def val_means(csv_path: Path) -> dict[int, float]:
    with open(csv_path) as fh:
        return {int(r["epoch"]): float(r["val/mean"]) for r in csv.DictReader(fh)
                if r.get("val/mean")}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    full = fit(a)
    killed = fit(b)
    ckpt = b / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if ckpt.is_file() and last_epoch(ckpt) >= 1:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epochs_before = max(val_means(b / "lightning_logs/version_0/metrics.csv"), default=-1)
    assert epochs_before < 3  # killed before the end
    resumed = fit(b, ["--resume", str(b)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert full.wait(timeout=600) == 0, full.stderr.read()[-3000:]

    ref = val_means(a / "lightning_logs/version_0/metrics.csv")
    after = val_means(b / "lightning_logs/version_1/metrics.csv")
    assert sorted(ref) == list(range(4))
    # no epoch lost or repeated: the resumed run starts right after the last saved epoch
    start = last_epoch(sorted((b / "lightning_logs/version_0/checkpoints").glob("last*.ckpt"))[0])
    assert sorted(after) == list(range(start + 1, 4))
    for epoch, value in after.items():
        assert value == pytest.approx(ref[epoch], abs=1e-6), epoch
    final_a = torch.load(a / "lightning_logs/version_0/checkpoints/last.ckpt",
                         weights_only=True)["state_dict"]
    final_b = torch.load(b / "lightning_logs/version_1/checkpoints/last.ckpt",
                         weights_only=True)["state_dict"]
    for key, value in final_a.items():
        assert torch.allclose(value.float(), final_b[key].float(), atol=1e-6), key


def fake_checkpoint(path: Path, **hparams) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"method": "dmrnet", "modalities": ["fac", "mor"],
                                     "embed_dim": 256, **hparams}, "state_dict": {}}, path)
    return path


def test_resume_picks_this_runs_checkpoint_and_names_a_mismatch(tmp_path):
    from dmrnet.errors import ConfigError
    from dmrnet.lightning_cli import choose_resume_checkpoint

    ours = fake_checkpoint(tmp_path / "a" / "last.ckpt", method="baseline")
    theirs = fake_checkpoint(tmp_path / "b" / "last.ckpt")  # newer, another method
    os.utime(ours, (1, 1))
    model = {"method": "baseline", "network": {"embed_dim": 256},
             "optim": {"lr": 0.1}}  # optim: not saved
    assert choose_resume_checkpoint(str(tmp_path), model, None) == ours
    assert choose_resume_checkpoint(str(tmp_path), {**model, "method": "dmrnet"},
                                    ["fac", "mor"]) == theirs
    with pytest.raises(ConfigError, match=r"is not this run: method is 'dmrnet' there and "
                                          r"'shaspec' here \(nor do 1 older ones\)"):
        choose_resume_checkpoint(str(tmp_path), {**model, "method": "shaspec"}, None)
    with pytest.raises(ConfigError, match="modalities are"):
        choose_resume_checkpoint(str(theirs), {"method": "dmrnet"}, ["fac", "pix"])
    # a concern's field is named (the fake checkpoint holds 0.2's flat layout)
    with pytest.raises(ConfigError, match="network.embed_dim is 256 there and 64 here"):
        choose_resume_checkpoint(str(theirs), {"method": "dmrnet", "network": {"embed_dim": 64}},
                                 None)


def test_mismatched_resume_is_one_line_before_any_training(tmp_path):
    folder = tmp_path / "run"
    fake_checkpoint(folder / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
                    method="baseline")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "dmrnet.cli", "fit", *ARGS,
                           "--trainer.default_root_dir", str(tmp_path / "new"),
                           "--resume", str(folder)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "method is 'baseline' there and 'dmrnet' here" in lines[0], lines
    assert not (tmp_path / "new").exists()  # refused before anything was trained or written
    helped = subprocess.run([sys.executable, "-m", "dmrnet.cli", "fit", "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--resume RUN_DIR_OR_CKPT" in helped.stdout
    # dmrnet's own lines at the top read in a terminal (issue 26: it opened with 406 characters)
    top = helped.stdout.split("Lightning's options follow.")[0].splitlines()
    assert len(top) > 3 and max(len(line) for line in top) <= 100
    # each method's own options (model.method_kwargs is a mapping Lightning cannot list)
    assert "  dmrnet: alpha, beta, hcr_warmup_epochs," in helped.stdout
    assert "  full_only: none" in helped.stdout and "  mmanet: temperature," in helped.stdout
    # each concern's fields, typed, with their defaults and the dataclasses' descriptions
    for option in ("--model.network.embed_dim EMBED_DIM", "--model.training.metric METRIC",
                   "--model.training.subset_weights", "--model.optim.lr LR"):
        assert option in helped.stdout, option
    assert "the embedding size D each modality" in helped.stdout


def test_a_resumed_run_keeps_its_earlier_best_and_never_deletes_its_files(tmp_path):
    """Issue 26: a resumed fit writes a new version folder, where Lightning restored only the
    best file's path, so the next epoch became "best" at any score (0.9300 after 0.9304)."""
    from types import SimpleNamespace

    from dmrnet.runtime import ResumableCheckpoint

    old = tmp_path / "version_0" / "checkpoints"
    old.mkdir(parents=True)
    best = old / "best-epoch=1.ckpt"
    best.write_bytes(b"ckpt")
    state = {"dirpath": str(old), "best_model_score": torch.tensor(0.9304),
             "best_model_path": str(best), "best_k_models": {str(best): torch.tensor(0.9304)},
             "kth_best_model_path": str(best), "kth_value": torch.tensor(0.9304),
             "last_model_path": str(old / "last.ckpt")}
    removed = []
    trainer = SimpleNamespace(strategy=SimpleNamespace(
        reduce_boolean_decision=lambda decision, all=True: decision,
        remove_checkpoint=removed.append))
    cb = ResumableCheckpoint(dirpath=tmp_path / "version_1" / "checkpoints",
                             monitor="val/mean", mode="max", save_top_k=1)
    cb.load_state_dict(state)
    assert float(cb.best_model_score) == pytest.approx(0.9304)
    assert not cb.check_monitor_top_k(trainer, torch.tensor(0.9300))  # worse: not the best
    assert cb.check_monitor_top_k(trainer, torch.tensor(0.9310))  # better: it replaces it
    cb._remove_checkpoint(trainer, str(best))  # ... but the earlier folder keeps its file
    cb._remove_checkpoint(trainer, str(tmp_path / "version_1" / "checkpoints" / "x.ckpt"))
    assert removed == [str(tmp_path / "version_1" / "checkpoints" / "x.ckpt")]
    plain = ResumableCheckpoint(dirpath=old, monitor="val/mean", mode="max", save_top_k=1)
    plain.load_state_dict(state)  # the same folder: Lightning's own restore, unchanged
    assert plain.best_k_models == state["best_k_models"] and not plain.earlier
