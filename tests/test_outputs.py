"""Outputs are never destroyed by accident (issue 10, item 1): the benchmark writes --out only
when a run is complete, replaces only folders it wrote, refuses paths that hold more than a
run, locks the folder, and Ctrl-C leaves --out as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dmrnet.benchmark import BenchmarkConfig, RunInterruptedError, run_benchmark
from dmrnet.cli import main
from dmrnet.outputs import MARKER, OutputError, RunFolder, check_output_path

from .fixtures import make_manifest

QUICK = ["--modalities", "fac,mor", "--methods", "baseline", "--seeds", "0", "--epochs", "1",
         "--no-progress"]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("out", ["", ".", "./", "~"])
def test_paths_that_hold_more_than_a_run_are_refused_and_nothing_is_touched(
        out, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("1,2")
    before = files_under(tmp_path)
    assert main(["benchmark", "--out", out, "--overwrite", *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmrnet: error: --out") and err.count("\n") == 1
    assert files_under(tmp_path) == before


def test_root_and_data_folders_are_refused(tmp_path):
    path = make_manifest(tmp_path / "m")
    with pytest.raises(OutputError, match="file system root"):
        check_output_path("/")
    for out in (tmp_path / "m", tmp_path):  # the data's folder, or any folder above it
        with pytest.raises(OutputError, match="holds your data"):
            check_output_path(out, [path])
    assert check_output_path(tmp_path / "m" / "runs", [path]) == (tmp_path / "m" / "runs")


def test_overwrite_replaces_only_a_folder_dmrnet_wrote(tmp_path, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"jpeg")
    assert main(["benchmark", "--out", str(mine), "--overwrite", *QUICK]) == 2
    assert "not written by dmrnet" in capsys.readouterr().err
    assert (mine / "a.jpg").read_bytes() == b"jpeg"


def test_a_failed_run_leaves_the_previous_results_in_place(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["benchmark", "--out", str(out), *QUICK]) == 0
    assert (out / MARKER).is_file()
    previous = files_under(out)
    # a typo in the manifest: reported, and the previous run is untouched
    code = main(["benchmark", "--dataset", "manifest", "--manifest", str(tmp_path / "typo.csv"),
                 "--out", str(out), "--overwrite", "--seeds", "0", "--epochs", "1"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert files_under(out) == previous
    assert not list(tmp_path.glob(".run.partial-*"))  # nothing was trained: nothing kept
    # a complete run replaces it, at the end
    assert main(["benchmark", "--out", str(out), "--overwrite", *QUICK[:-3], "--epochs", "2",
                 "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["epochs"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # and no lock file left


def test_ctrl_c_leaves_out_as_it_was_and_says_what_was_kept(tmp_path):
    out = tmp_path / "run"
    calls = []

    def echo(line: str) -> None:
        calls.append(line)
        if "test accuracy" in line:  # the first run has trained: press Ctrl-C
            raise KeyboardInterrupt

    cfg = BenchmarkConfig(out=str(out), modalities=["fac", "mor"], methods=["baseline"],
                          seeds=[0, 1], epochs=1, progress=False)
    with pytest.raises(RunInterruptedError, match="is as it was and nothing was left beside it"
                       ) as info:
        run_benchmark(cfg, echo=echo)
    assert info.value.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # no --out, no partial run, no lock file


def test_a_finished_run_leaves_no_lock_and_a_folder_filled_meanwhile_is_kept(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, overwrite=False) as work:
        (work / "results.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the lock file is gone
    # a user's file put into --out while the run trained is never replaced
    later = tmp_path / "later"
    with (pytest.raises(OutputError, match="filled while the run trained.*finished run is in"),
          RunFolder(later, overwrite=False) as work):
        (work / "results.json").write_text("{}")
        later.mkdir()
        (later / "mine.txt").write_text("the user's")
    assert (later / "mine.txt").read_text() == "the user's"
    kept = list(tmp_path.glob(".later.partial-*"))
    assert len(kept) == 1 and (kept[0] / "results.json").is_file()
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*.lock"))
    # an empty folder made meanwhile is simply filled
    empty = tmp_path / "empty"
    with RunFolder(empty, overwrite=False) as work:
        (work / "results.json").write_text("{}")
        empty.mkdir()
    assert (empty / "results.json").is_file()


def test_a_second_process_on_the_same_out_gets_a_clear_error(tmp_path):
    import fcntl

    out = tmp_path / "run"
    with open(tmp_path / ".run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running benchmark holds
        with (pytest.raises(OutputError, match="another dmrnet process is writing"),
              RunFolder(out, overwrite=False)):
            pass
    assert not out.exists()


def test_read_only_parent_is_a_one_line_error(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write to read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["benchmark", "--out", str(ro / "run"), *QUICK]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_out_under_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["benchmark", "--out", str(tmp_path / "notes.txt" / "run"), *QUICK]) == 2
    assert "which is a file" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_never_empties_the_current_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["benchmark", "--out", str(run), *QUICK]) == 0
    ckpt = str(run / "checkpoints" / "baseline-seed0" / "best.ckpt")
    # the benchmark keeps weights, settings and choices, not the optimiser's state
    saved = torch.load(ckpt, weights_only=True)
    assert "optimizer_states" not in saved
    assert {"state_dict", "hyper_parameters", "dmrnet"} <= set(saved)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", ""):
        assert main(["export", "--checkpoint", ckpt, "--out", out, "--overwrite"]) == 2
    assert main(["export", "--checkpoint", ckpt, "--format", "onnx", "--out", "."]) == 2
    assert (work / "notes.txt").read_text() == "mine" and len(list(work.iterdir())) == 1
    capsys.readouterr()
    # a model folder can be replaced by a new export of it, and is complete when it appears
    assert main(["export", "--checkpoint", ckpt, "--out", "model"]) == 0
    assert main(["export", "--checkpoint", ckpt, "--out", "model", "--overwrite"]) == 0
    assert {p.name for p in (work / "model").iterdir()} == {
        "config.json", "model.safetensors", MARKER}


def test_results_record_every_seeds_split_and_defaults_allow_a_verdict(tmp_path):
    from dmrnet.benchmark import apply_dataset_defaults
    from dmrnet.data import DATASETS

    for dataset in DATASETS.names():  # a verdict needs 2 seeds; the default gives more
        assert len(apply_dataset_defaults(BenchmarkConfig(out="-", dataset=dataset)).seeds) >= 3
    cfg = BenchmarkConfig(out=str(tmp_path / "run"), modalities=["fac", "mor"],
                          methods=["baseline"], seeds=[0, 1], epochs=1, progress=False)
    results = run_benchmark(cfg, echo=lambda _: None)
    per_seed = results["data_per_seed"]
    assert [d["seed"] for d in per_seed] == [0, 1]
    assert all(d["sizes"] == {"train": 1200, "val": 400, "test": 400} for d in per_seed)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["data_per_seed"] == per_seed
    # the README's results.json row names these keys
    for key in ("dataset", "data_source", "modalities", "subsets", "metric", "runs",
                "failed_runs", "summary", "comparisons", "robustness_profile", "config"):
        assert key in saved, key
    assert saved["failed_runs"] == []
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `results.json`"))
    assert "`failed_runs`" in row and "`data_per_seed`" in row and "`comparisons`" in row
    assert "`loss_terms`" in row and all("loss_terms" in r for r in saved["runs"])


def test_one_seed_shows_no_spread_instead_of_zero():
    """A single seed's std is unknown, not 0 (issue 26: "± 0.0000")."""
    from dmrnet.report import _pm

    assert _pm(0.91234, 0.0, 1) == "0.9123 (1 seed)"
    assert _pm(0.91234, 0.01234, 3) == "0.9123 ± 0.0123"
