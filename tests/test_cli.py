"""End-to-end: the `dmrnet` command, the benchmark files, Lightning CLI runs, determinism."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmrnet.benchmark import BenchmarkConfig, run_benchmark
from dmrnet.cli import main
from dmrnet.outputs import OutputError

ROOT = Path(__file__).resolve().parents[1]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_results_json_writes_non_finite_numbers_as_null():
    import numpy as np
    import torch

    from dmrnet.report import to_json

    text = to_json({"nan": float("nan"), "inf": [np.float32("inf")], "t": torch.tensor(0.5),
                    "path": Path("runs/x"), "ok": 1.25})
    assert strict_json(text) == {"nan": None, "inf": [None], "t": 0.5, "path": "runs/x",
                                 "ok": 1.25}


def test_benchmark_writes_every_file_with_all_63_subsets(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--dataset", "mfeat", "--methods", "baseline,dmrnet",
                 "--seeds", "0", "--epochs", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean over subsets" in printed and "differ most" in printed
    res = strict_json((out / "results.json").read_text())
    strict_json((out / "analysis.json").read_text())
    assert res["dataset"] == "mfeat" and res["metric"] == "accuracy"
    assert res["modalities"] == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert [r["method"] for r in res["runs"]] == ["baseline", "dmrnet"]
    for run in res["runs"]:
        assert run["seed"] == 0 and len(run["per_subset"]) == 63
        values = list(run["per_subset"].values())
        assert all(0.0 <= v <= 1.0 for v in values)
        assert run["mean"] == pytest.approx(sum(values) / 63)
        assert run["worst"] == pytest.approx(min(values))
        assert run["train_seconds"] > 0 and run["eval_seconds"] > 0
        assert run["mean"] > 0.5  # two epochs already far above chance (0.1)
    assert res["runs"][1]["objective_state"] == {}  # warm-up (5 epochs) not over after 2
    for method in ("baseline", "dmrnet"):
        s = res["summary"][method]
        assert {"mean", "mean_std", "worst"} <= set(s)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 63 and set(rows[0]) == {
        "method", "seed", "subset", "subset_size", "accuracy"}
    report = (out / "report.md").read_text()
    assert "| fou+fac+kar+pix+zer+mor |" in report and "per_subset.png" in report
    assert (out / "per_subset.png").stat().st_size > 10_000
    assert any((out / "checkpoints" / "dmrnet-seed0").glob("*.ckpt"))
    # an existing result is never overwritten silently
    assert main(["benchmark", "--seeds", "0", "--epochs", "1", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == res


def test_benchmark_selects_hard_subsets_and_runs_dedicated(tmp_path):
    cfg = BenchmarkConfig(
        out=str(tmp_path / "b"), modalities=["pix", "mor"], methods=["dmrnet", "dedicated"],
        seeds=[1], epochs=3, options={"hcr_warmup_epochs": 1}, progress=False,
    )
    res = run_benchmark(cfg, echo=lambda _: None)
    dmr, ded = res["runs"]
    hard = dmr["objective_state"]["hard_subsets"]  # the objective's own record of its choice
    assert len(hard) == 1 and hard[0] in ("pix", "mor")
    assert set(dmr["objective_state"]["subset_variance"]) == {"pix", "mor", "pix+mor"}
    assert f"- dmrnet, seed 1: hard subsets {hard[0]}" in (tmp_path / "b" / "report.md").read_text()
    assert ded["method"] == "dedicated" and set(ded["per_subset"]) == {"pix", "mor", "pix+mor"}
    assert min(ded["per_subset"].values()) > 0.3
    gap = res["gap_to_reference"]  # dedicated ran: every method's gap to it, per subset
    assert gap["reference"] == "dedicated" and gap["baseline"] is None
    assert gap["per_method"]["dmrnet"]["per_subset"]["pix"]["gap"] == pytest.approx(
        ded["per_subset"]["pix"] - dmr["per_subset"]["pix"])
    assert (tmp_path / "b" / "gap_to_reference.png").stat().st_size > 0
    assert "## Gap to dedicated" in (tmp_path / "b" / "report.md").read_text()


def test_same_seed_same_results(tmp_path):
    runs = []
    for k in range(2):
        cfg = BenchmarkConfig(out=str(tmp_path / f"r{k}"), modalities=["fou", "zer", "mor"],
                              methods=["dmrnet"], seeds=[5], epochs=2, progress=False)
        runs.append(run_benchmark(cfg, echo=lambda _: None)["runs"][0]["per_subset"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "baseline,magic"], "unknown method 'magic'"),
        (["--modalities", "pix,ir"], "modality 'ir' is not an mfeat view"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--root", "/nonexistent/mfeat"], "does not exist"),
        (["--option", "hcr_subsets=[pix+ir]"], "'pix\\+ir' is not a subset name"),
        (["--epochs", "0"], "epochs must be at least 1"),
    ],
)
def test_benchmark_errors_are_one_clear_line(tmp_path, capsys, args, message):
    defaults = {"--seeds": "0", "--epochs": "1", "--out": str(tmp_path / "o")}
    code = main(["benchmark", *[w for flag, value in defaults.items() if flag not in args
                                for w in (flag, value)], *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dmrnet: error:")
    import re

    assert re.search(message, err), err
    assert "Traceback" not in err


def test_lightning_cli_fit_then_test_from_yaml(tmp_path):
    cfg = ROOT / "configs" / "mfeat_dmrnet.yaml"
    common = [sys.executable, "-m", "dmrnet.cli"]
    fit = subprocess.run(
        [*common, "fit", "--config", str(cfg), "--trainer.max_epochs", "2",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
         "--data.modalities", "[fac, mor]", "--model.method_kwargs.hcr_warmup_epochs", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},  # dmrnet's choice
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    out = fit.stdout.splitlines()
    assert out[0].startswith("1 CPU thread (a 0.")  # the thread choice and why, first
    out = out[1:]
    assert out[0].startswith("epoch 0 (1 of 2): val/mean 0.") and out[1].startswith("epoch 1 ")
    assert out[-1].startswith("best checkpoint: ") and "(epoch " in out[-1]
    assert "validation at epoch" in fit.stdout and "fac+mor" in fit.stdout
    assert fit.stderr == "", fit.stderr  # no progress bars off a terminal, no tips
    ckpts = sorted(tmp_path.glob("lightning_logs/version_0/checkpoints/best-*.ckpt"))
    assert len(ckpts) == 1
    metrics = (tmp_path / "lightning_logs/version_0/metrics.csv").read_text()
    assert "val/mean" in metrics and "val/fac+mor/accuracy" in metrics
    assert "subset_variance/mor" in metrics
    test = subprocess.run(
        [*common, "test", "--config", str(cfg), "--data.modalities", "[fac, mor]",
         "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpts[0])],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    lines = test.stdout.strip().splitlines()
    assert lines[0].startswith("test split, ") and str(ckpts[0]) in lines[0]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:] if not ln.startswith("-- ")}
    assert rows["subset"] == ["accuracy"]  # one table: a column per metric
    names = [ln.split()[0] for ln in lines[2:]]
    assert names == ["--", "fac", "mor", "--", "fac+mor", "mean", "worst"]  # grouped by size
    values = [ln.split()[-1] for ln in lines[2:] if not ln.startswith("-- ")]
    assert len(values) == 5 and all(len(v.split(".")[1]) == 4 for v in values)  # rounded
    assert test.stderr == ""  # no tips, no accelerator inventory, no warnings


def test_fit_log_of_the_mfeat_config_stays_small(tmp_path):
    """``dmrnet fit --config configs/mfeat_dmrnet.yaml > log.txt``: under 5 KB for its 30
    epochs (2 run here; the other 28 add one line each), ending with the best checkpoint."""
    cfg = ROOT / "configs" / "mfeat_dmrnet.yaml"
    fit = subprocess.run(
        [sys.executable, "-m", "dmrnet.cli", "fit", "--config", str(cfg), "--trainer.max_epochs",
         "2", "--trainer.default_root_dir", str(tmp_path), "--data.batch_size", "256"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    lines = fit.stdout.splitlines()
    epoch_line = max(len(ln) + 1 for ln in lines if ln.startswith("epoch "))
    assert len(fit.stdout.encode()) + 28 * epoch_line < 5000, fit.stdout
    assert sum(1 for ln in lines if "+" in ln) == 57  # the table has every multimodal subset
    assert lines[-1].startswith("best checkpoint: ")
    # stderr: only the (true) note that 2 of the config's 30 epochs end before HCR's warm-up
    assert [ln[:27] for ln in fit.stderr.splitlines()] == ["HCR starts after epoch 6 (h"]


def test_a_config_written_for_0_2_names_where_each_key_moved(tmp_path, capsys):
    """dmrnet 0.2 took the network's and the training's fields directly under ``model:``;
    such a key, in a config file or on the command line, is one line naming its new place,
    before any data are read."""
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  method: dmrnet\n  embed_dim: 64\ndata:\n  dataset: mfeat\n")
    assert main(["fit", "--config", str(old), "--trainer.default_root_dir",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dmrnet: error: config {str(old)!r}: model.embed_dim is "
                   "model.network.embed_dim since dmrnet 0.3 (the model's settings are grouped: "
                   "network, training, optim); move it under model.network"], err
    assert main(["fit", "--data.dataset", "mfeat", "--model.metric", "acer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.metric is model.training.metric" in err[0], err
    assert not (tmp_path / "run").exists()


def test_help_and_a_mistyped_command_answer_without_loading_torch():
    """``dmrnet --help`` took seconds of CPU (torch, Lightning, torchmetrics); it, a
    mistyped command and ``dmrnet configs list`` now load none of them."""
    code = ("import sys\nfrom dmrnet.cli import main\n"
            "for argv in (['--help'], ['bnechmark'], [], ['configs', 'list']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'lightning', 'numpy') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "invalid choice: 'bnechmark'" in done.stderr and "benchmark" in done.stdout
    assert "mfeat_dmrnet" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"


def test_output_into_a_closed_pipe_ends_quietly():
    """``dmrnet configs list | head -1``: no 'Broken pipe' error once the reader has gone."""
    proc = subprocess.Popen([sys.executable, "-m", "dmrnet.cli", "configs", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, "")


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "benchmark" in out and "fit" in out
    from dmrnet.data import DATASETS
    from dmrnet.methods import METHODS
    from dmrnet.metrics import TASK_METRICS
    from dmrnet.registry import ENCODERS

    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    for names in (METHODS.names(), DATASETS.names(), ENCODERS.names(), list(TASK_METRICS)):
        missing = [n for n in names if n not in text]
        assert not missing, missing  # every registered name is discoverable from --help


def test_unknown_output_path_kind(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        run_benchmark(BenchmarkConfig(out=str(f), seeds=[0], epochs=1))


def test_the_benchmark_analysis_in_memory_equals_dmrnet_analyze_from_the_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert main(["benchmark", "--dataset", "synthetic", "--methods", "baseline,dmrnet",
                 "--seeds", "0", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    in_memory = strict_json((out / "analysis.json").read_text())
    assert set(in_memory["summary"]) == {"baseline", "dmrnet"}
    report = (out / "report.md").read_text()
    assert report.count("## Analysis") == 1  # written once, by one writer
    assert main(["analyze", str(out)]) == 0  # reloads the kept checkpoints
    assert strict_json((out / "analysis.json").read_text()) == in_memory


def test_version_is_printed_without_importing_torch():
    """`dmrnet --version` answers at once (issue 26); the parser's own flag says the same."""
    import subprocess
    import sys

    from dmrnet.version import __version__

    code = ("import sys; from dmrnet import launch; sys.argv = ['dmrnet', '--version']; "
            "rc = launch.main(); print('torch' in sys.modules, rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["dmrnet", __version__, "False", "0"]
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


def test_every_recipe_trains_on_one_device_by_default():
    """With devices: auto a multi-GPU machine would turn the paper's batch of 64 into 64 x N
    (issue 26); the README says how to keep it on N devices."""
    import yaml

    recipes = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
    assert len(recipes) >= 10
    for path in recipes:
        trainer = yaml.safe_load(path.read_text()).get("trainer") or {}
        assert trainer.get("devices") == 1, f"{path.name}: devices {trainer.get('devices')!r}"


def test_help_lists_each_shared_option_once():
    """Issue 26: benchmark --help listed the 12 booster options once per method (seven times);
    now once, with the methods that have them, and each method's own options."""
    from dmrnet.methods import METHODS, option_lines

    lines = option_lines()
    text = "\n".join(lines)
    assert text.count("unimodal_weight") == 1 and text.count("ogm_alpha") == 1
    shared = next(line for line in lines if " also: " in line)
    holders = shared.split(" also: ")[0].split(", ")
    assert {"baseline", "dmrnet", "tutored"} <= set(holders)
    assert all("unimodal_weight" in METHODS.get(m).option_names() for m in holders)
    assert "dmrnet: alpha, beta, hcr_warmup_epochs," in text and "full_only: none" in text
    assert "baseline: those below" in text
