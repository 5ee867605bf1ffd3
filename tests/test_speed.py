"""Per-run overhead and the use of the machine's cores (issue 21): the validation cadence, runs
side by side, the thread line in the output, and their bad values."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace

import pytest

from dmrnet.benchmark import (
    BenchmarkConfig,
    BenchmarkError,
    concurrent_runs,
    prepare,
    run_benchmark,
    runs,
    validation_interval,
)
from dmrnet.cli import main


def test_long_runs_validate_at_most_max_validations_times():
    cfg = BenchmarkConfig(out="unused")
    assert validation_interval(replace(cfg, epochs=30)) == 1
    assert validation_interval(replace(cfg, epochs=300)) == 10
    assert validation_interval(replace(cfg, epochs=301)) == 11
    assert validation_interval(replace(cfg, epochs=300, max_validations=0)) == 1
    assert validation_interval(replace(cfg, epochs=300, max_validations=100)) == 3


def test_a_run_validates_every_kth_epoch_and_selects_among_them(tmp_path):
    out = tmp_path / "run"
    results = run_benchmark(BenchmarkConfig(
        out=str(out), methods=["baseline"], seeds=[0], epochs=6, max_validations=3,
        modalities=["fac", "mor"]), echo=lambda _: None)
    with open(out / "logs" / "baseline-seed0" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/mean")]
    assert [int(r["epoch"]) for r in rows] == [1, 3, 5]  # every 2nd epoch, 3 times
    assert all(r["val/fac+mor/accuracy"] for r in rows)  # the per-subset values are logged
    assert results["runs"][0]["best_epoch"] in (1, 3, 5)


class _Garbage:
    """Cyclic garbage whose destructor says which process ran it (a native one, such as an
    ONNX Runtime session's, hangs in a forked worker)."""

    def __init__(self, marker):
        self.marker, self.me = marker, self

    def __del__(self):
        if os.getpid() != self.parent:
            self.marker.write_text(f"destroyed in worker {os.getpid()}")


def test_runs_side_by_side_give_what_they_give_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # dmrnet's own choice
    outputs = {}
    results = {}
    _Garbage.parent = os.getpid()
    choose = runs.concurrent_runs

    def garbage_then_choose(*args):  # garbage made just before the workers fork
        _Garbage(tmp_path / "destroyed")  # unreachable at once; freed only by a gc pass
        return choose(*args)

    monkeypatch.setattr(runs, "concurrent_runs", garbage_then_choose)
    for jobs in (1, 2):
        lines: list[str] = []
        results[jobs] = run_benchmark(BenchmarkConfig(
            out=str(tmp_path / f"jobs{jobs}"), methods=["baseline", "dmrnet"], seeds=[0, 1],
            epochs=2, modalities=["fac", "kar", "mor"], jobs=jobs), echo=lines.append)
        outputs[jobs] = lines
    assert any("training 2 runs at a time (--jobs 2" in line for line in outputs[2])
    assert not (tmp_path / "destroyed").exists()  # the workers destroy nothing they inherit
    assert not any("runs at a time" in line for line in outputs[1])
    for a, b in zip(results[1]["runs"], results[2]["runs"], strict=True):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert a["per_subset"] == b["per_subset"]  # exactly: same steps, same thread count
        assert a["best_epoch"] == b["best_epoch"]
    saved = json.loads((tmp_path / "jobs2" / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in saved["runs"]] == [
        ("baseline", 0), ("dmrnet", 0), ("baseline", 1), ("dmrnet", 1)]
    assert (tmp_path / "jobs2" / "checkpoints" / "dmrnet-seed1" / "best.ckpt").is_file()
    # every run says its thread choice once, in its block
    assert sum("1 CPU thread (" in line for line in outputs[2]) >= 1


def test_each_run_records_its_cpu_threads_and_a_rerun_with_them_is_bit_exact(tmp_path,
                                                                            monkeypatch):
    """Float sums depend on the thread count, which dmrnet chooses per run from the machine's
    load: results.json keeps each run's (and each teacher's), and ``--threads N`` with it
    reruns bit-exactly."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # dmrnet's own choice
    quick = dict(methods=["tutored"], seeds=[0], epochs=1, modalities=["fac", "mor"],
                 progress=False)
    auto = run_benchmark(BenchmarkConfig(out=str(tmp_path / "auto"), **quick),
                         echo=lambda _: None)["runs"][0]
    assert auto["cpu_threads"] >= 1
    assert set(auto["stage_cpu_threads"]) == {"teacher-fac", "teacher-mor"}
    again = run_benchmark(BenchmarkConfig(out=str(tmp_path / "again"),
                                          threads=auto["cpu_threads"], **quick),
                          echo=lambda _: None)["runs"][0]
    assert again["per_subset"] == auto["per_subset"]
    assert again["cpu_threads"] == auto["cpu_threads"]  # an explicit count is recorded too
    assert set(again["stage_cpu_threads"].values()) == {auto["cpu_threads"]}


def test_runs_side_by_side_only_where_they_help():
    cfg, data = prepare(BenchmarkConfig(out="unused", seeds=[0, 1], epochs=30))
    auto = concurrent_runs(cfg, data, 6)
    assert auto[0] >= 1 and (auto[0] == 1 or "takes one CPU thread" in auto[1])
    for change in ({"progress": True}, {"threads": 2}, {"devices": 2}, {"epochs": 1}):
        assert concurrent_runs(replace(cfg, **change), data, 6)[0] == 1, change
    assert concurrent_runs(cfg, data, 1)[0] == 1
    assert concurrent_runs(replace(cfg, jobs=4), data, 3) == (3, "--jobs 4")
    # the choice builds the first method's own model with its options (it built the default
    # method with them: tutored's vote on the baseline was refused, a 5-seed run stopped)
    voted, data = prepare(BenchmarkConfig(out="unused", dataset="synthetic", seeds=[0, 1],
                                          epochs=30, methods=["tutored"],
                                          options={"tutored.unimodal_ensemble": 0.25}))
    assert concurrent_runs(voted, data, 5)[0] >= 1


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--jobs", "0", "jobs must be"),
    ("--threads", "0", "threads must be"),
    ("--max-validations", "-1", "max-validations must be"),
])
def test_bad_speed_settings_are_one_line_before_any_work(tmp_path, capsys, flag, value,
                                                         message):
    out = tmp_path / "never"
    assert main(["benchmark", flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()
    with pytest.raises(BenchmarkError, match=message):
        run_benchmark(BenchmarkConfig(out=str(out), **{flag[2:].replace("-", "_"): int(value)}))
