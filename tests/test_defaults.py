"""Defaults for any data and a researcher's tools (issue 13): small training splits get enough
optimiser steps, a manifest's reports carry its file's name, one encoder setting serves mixed
kinds of data, ``--logger csv|tensorboard`` on ``benchmark`` and ``fit``, and the README's
numbers come from ``scripts/readme_numbers.py``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dmrnet.benchmark import BenchmarkConfig, prepare, run_benchmark
from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.nn import MLPEncoder, ResNet, create_encoder

from .fixtures import make_rgb_depth_manifest

ROOT = Path(__file__).resolve().parents[1]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def test_auto_encoder_follows_the_input_shape():
    assert isinstance(create_encoder("auto", (8,), vector={"hidden": [16]}), MLPEncoder)
    image = create_encoder("auto", (3, 16, 16), image={"width": 8})
    assert isinstance(image, ResNet) and image.out_features == 64
    assert isinstance(create_encoder("auto", (4, 3, 16, 16)), ResNet)  # a frame stack
    with pytest.raises(ConfigError, match="encoder 'auto' takes vectors"):
        create_encoder("auto", (1, 2, 3, 4, 5))
    with pytest.raises(ConfigError, match="encoder 'auto': .*'bogus'"):
        create_encoder("auto", (8,), vector={"bogus": 1})


def test_small_training_splits_get_enough_steps_and_the_output_says_so(tmp_path):
    path = make_rgb_depth_manifest(tmp_path / "data")  # 24 training samples: 1 step per epoch
    cfg = BenchmarkConfig(out=str(tmp_path / "run"), dataset="manifest", methods=["baseline"],
                          seeds=[0], dataset_kwargs={"manifest": str(path)}, min_steps=12,
                          progress=False, model={"encoder_kwargs": {"image": {"width": 4}}})
    scaled, _ = prepare(cfg)
    assert scaled.epochs == 30 and not scaled.epochs_note  # 30 steps already reach 12
    cfg.min_steps = 40
    lines: list[str] = []
    results = run_benchmark(cfg, echo=lines.append)
    printed = "\n".join(lines)
    assert ("24 training samples make 1 optimiser step(s) per epoch at batch 64: training 40 "
            "epochs instead of 30, so that every run takes at least 40 steps") in printed
    assert "training 40 epochs (40 steps)" in printed
    assert results["config"]["epochs"] == 40
    # reports name the data after the manifest's file, not "manifest"
    assert results["dataset"] == "my" and results["data_source"] == "manifest"
    assert "# Benchmark: my" in (tmp_path / "run" / "report.md").read_text()
    # the user's epochs and the dataset's own defaults are never changed
    assert prepare(BenchmarkConfig(out="-", dataset="manifest", epochs=3, min_steps=1000,
                                   dataset_kwargs={"manifest": str(path)}))[0].epochs == 3
    assert prepare(BenchmarkConfig(out="-", dataset="synthetic", min_steps=10_000))[0].epochs == 10


def test_benchmark_folder_default_is_named_after_the_manifest(tmp_path, monkeypatch, capsys):
    path = make_rgb_depth_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(path), "--methods",
                 "baseline", "--seeds", "0", "--epochs", "1", "--no-progress",
                 "--set", "encoder_kwargs={image: {width: 4}}"]) == 0
    made = [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert made == ["my"]  # beside it: its hidden lock file
    # the folder the README's later commands read is never in the way of the next run
    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(path), "--methods",
                 "baseline", "--seeds", "0", "--epochs", "1", "--no-progress",
                 "--set", "encoder_kwargs={image: {width: 4}}"]) == 0
    made = sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert made[0] == "my" and len(made) == 2 and made[1].startswith("my-20")
    assert main(["benchmark", "--min-steps", "-1"]) == 2
    assert "min_steps must be a whole number >= 0" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="needs tensorboard (the dev extra has it)")
def test_benchmark_and_fit_write_the_logger_asked_for(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--modalities", "fac,mor", "--methods", "baseline", "--seeds", "0",
                 "--epochs", "1", "--out", str(out), "--no-progress",
                 "--logger", "tensorboard"]) == 0
    assert list((out / "logs" / "baseline-seed0").glob("events.out.tfevents.*"))
    assert not list((out / "logs").rglob("metrics.csv"))
    cfg = str(ROOT / "configs" / "mfeat_baseline.yaml")
    common = ["--config", cfg, "--trainer.max_epochs", "1", "--data.modalities", "[fac, mor]"]
    assert main(["fit", *common, "--trainer.default_root_dir", str(tmp_path / "tb"),
                 "--logger", "tensorboard"]) == 0
    version = tmp_path / "tb" / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*")) and list(version.glob("checkpoints/*"))
    # csv by default, even with tensorboard installed (Lightning would pick TensorBoard)
    assert main(["fit", *common, "--trainer.default_root_dir", str(tmp_path / "csv")]) == 0
    assert (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").is_file()
    capsys.readouterr()
    assert main(["fit", *common, "--logger", "wandb"]) == 2
    assert "--logger takes one of ['csv', 'tensorboard']" in capsys.readouterr().err
    assert main(["fit", *common, "--logger", "csv", "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(tmp_path / "x")]) == 2
    assert "give --logger or --trainer.logger, not both" in capsys.readouterr().err
    assert main(["benchmark", "--logger", "wandb"]) == 2
    assert "invalid choice: 'wandb'" in capsys.readouterr().err


def test_tensorboard_missing_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    assert main(["benchmark", "--logger", "tensorboard", "--out", str(tmp_path / "o")]) == 2
    assert "needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _readme_numbers():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import readme_numbers
    finally:
        sys.path.pop(0)
    return readme_numbers


def test_readme_numbers_are_written_by_the_script_with_their_command(tmp_path):
    numbers = _readme_numbers()
    readme = (ROOT / "README.md").read_text()
    blocks = {m.group("name"): m.group("body") for m in numbers.MARK.finditer(readme)}
    assert set(blocks) == {*numbers.RUNS, *numbers.SCRIPTS}  # each block has its source
    for name, body in blocks.items():
        commands = ([numbers.command(a) for a in numbers.RUNS[name].values()]
                    if name in numbers.RUNS else ["python " + " ".join(numbers.SCRIPTS[name])])
        for call in commands:
            assert f"`{call}`" in body, f"block {name} lacks its command {call!r}"
        assert "dmrnet 0." in body and "commit " in body  # which code made the numbers
    # the script rewrites a block from runs it reads (a tiny real one here)
    runs = tmp_path / "runs" / "mfeat" / "mfeat"
    run_benchmark(BenchmarkConfig(out=str(runs), modalities=["fac", "mor"],
                                  methods=["baseline", "dmrnet"], seeds=[0, 1], epochs=1,
                                  progress=False), echo=lambda _: None)
    (runs / "readme_numbers.json").write_text(json.dumps(
        {"version": "9.9", "commit": "abc1234", "seconds": 75.0, "machine": "2-core CPU"}))
    copy = tmp_path / "README.md"
    copy.write_text(readme)
    assert numbers.main(["--only", "mfeat", "--runs", str(tmp_path / "runs"),
                         "--readme", str(copy)]) == 0
    new = {m.group("name"): m.group("body") for m in numbers.MARK.finditer(copy.read_text())}
    assert new["preset"] == blocks["preset"]  # only the block asked for
    res = json.loads((runs / "results.json").read_text())
    line = f"| baseline | {res['summary']['baseline']['mean']:.4f} ± "
    assert line in new["mfeat"] and "dmrnet 9.9, commit abc1234, 1 min 15 s on 2-core CPU" \
        in new["mfeat"] and "| method | mean over 3 subsets | worst subset |" in new["mfeat"]
    assert copy.read_text().replace(new["mfeat"], "") == readme.replace(blocks["mfeat"], "")
    loader = tmp_path / "runs" / "loader"
    loader.mkdir()
    (loader / "output.txt").write_text("after  350.0 samples/s\n")
    numbers.main(["--only", "loader", "--runs", str(tmp_path / "runs"), "--readme", str(copy)])
    assert "```text\nafter  350.0 samples/s\n```" in copy.read_text()
    with pytest.raises(SystemExit, match="no results.json"):
        numbers.main(["--only", "preset", "--runs", str(tmp_path / "runs"),
                      "--readme", str(copy)])


def test_the_benchmark_reads_a_fit_configs_concerns_as_its_short_names():
    """A benchmark's ``model:`` names the network's and the training's fields alone; the
    ``network:``/``training:`` mappings of a fit config mean the same, and a field given both
    ways, or one a concern lacks, is one line."""
    from dmrnet.benchmark import BenchmarkError, apply_dataset_defaults, method_settings

    flat = BenchmarkConfig(out="-", dataset="synthetic", methods=["dmrnet"],
                           model={"fusion": "mean", "label_smoothing": 0.1})
    nested = BenchmarkConfig(out="-", dataset="synthetic", methods=["dmrnet"],
                             model={"network": {"fusion": "mean"},
                                    "training": {"label_smoothing": 0.1}})
    one = method_settings(apply_dataset_defaults(flat), "dmrnet")
    assert one == method_settings(apply_dataset_defaults(nested), "dmrnet")
    assert one["fusion"] == "mean" and one["label_smoothing"] == 0.1
    for model, message in (({"fusion": "sum", "network": {"fusion": "mean"}}, "given twice"),
                           ({"network": {"fusion": "mean", "lr": 1}},
                            "network has no setting 'lr'")):
        with pytest.raises(BenchmarkError, match=message):
            apply_dataset_defaults(BenchmarkConfig(out="-", dataset="synthetic", model=model))
