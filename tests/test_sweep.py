"""dmrnet benchmark --sweep: one benchmark per value, a table and a plot of mean and worst."""

from __future__ import annotations

import json

import pytest

from dmrnet.cli import main

BASE = ["benchmark", "--modalities", "pix,mor", "--seeds", "0", "--epochs", "2",
        "--methods", "dmrnet", "--no-progress", "--option", "hcr_warmup_epochs=1"]


def test_sweep_of_a_method_option(tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*BASE, "--sweep", "beta=0,0.5", "--out", str(out)]) == 0
    # each value's "wrote" line names where it ends up, not the unfinished folder
    wrote = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("wrote '")]
    assert wrote == [f"wrote '{out / 'beta=0'}'", f"wrote '{out / 'beta=0.5'}'",
                     f"wrote '{out}'"], wrote
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["key"] == "beta" and sweep["values"] == [0, 0.5]
    for run in sweep["runs"]:
        res = json.loads((out / run["folder"] / "results.json").read_text())
        assert res["config"]["options"]["beta"] == run["value"]
        assert run["summary"] == res["summary"]
    a, b = (r["summary"]["dmrnet"]["mean"] for r in sweep["runs"])
    assert a != b  # HCR is on after the one warm-up epoch with beta 0.5 only
    assert (out / "sweep.png").stat().st_size > 0
    assert "| 0.5 |" in (out / "sweep.md").read_text()


def test_sweep_of_a_model_setting(tmp_path):
    out = tmp_path / "s"
    assert main([*BASE, "--sweep", "optim.lr=0.001,0.01", "--out", str(out)]) == 0
    for value in (0.001, 0.01):
        res = json.loads((out / f"optim.lr={value}" / "results.json").read_text())
        assert res["config"]["model"]["optim"]["lr"] == value


@pytest.mark.parametrize(("sweep", "message"), [
    ("beta=0.1", "needs at least two values"),
    ("beta=0.1,0.1", "lists a value twice"),
    ("beta=0.1,-1", "beta must be a finite number >= 0; got -1"),
    ("bogus=1,2", "no method in this run \\(dmrnet\\) has option 'bogus'"),
    ("optim.lr=0.1,0", "optim.lr must be a finite number > 0"),
    ("beta", "--sweep takes KEY=V1,V2"),
])
def test_bad_sweeps_stop_before_any_work(tmp_path, capsys, sweep, message):
    import re

    out = tmp_path / "never"
    assert main([*BASE, "--sweep", sweep, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []
