"""``dmrnet benchmark --resume OUT --seeds 3,4``: runs added to a finished benchmark give the
results of one benchmark of all the seeds, and nothing of OUT is lost on the way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dmrnet.cli import main

QUICK = ["--modalities", "fac,mor", "--methods", "baseline,dmrnet", "--epochs", "2",
         "--no-progress"]
TIMINGS = {"train_seconds", "eval_seconds", "stage_train_seconds"}


def untimed(obj):
    """``obj`` without wall-clock times (two runs of one seed differ only in those)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_adds_seeds_and_equals_one_benchmark_of_all(tmp_path, capsys):
    three, five = tmp_path / "three", tmp_path / "five"
    assert main(["benchmark", "--out", str(three), "--seeds", "0,1,2", *QUICK]) == 0
    (three / "notes.txt").write_text("the user's own file")
    before = digest(three)

    # settings other than the runs to add are the finished run's: refused, OUT untouched
    for extra, says in ((["--epochs", "3"], "epochs is 3 here but 2 in"),
                        (["--set", "embed_dim=64"], "model.embed_dim is 64 here but None"),
                        (["--seeds", "1,2"], "every run of methods"),
                        (["--out", str(five)], "leave --out out")):
        assert main(["benchmark", "--resume", str(three), *extra]) == 2
        assert says in capsys.readouterr().err
        assert digest(three) == before
    assert main(["benchmark", "--resume", str(tmp_path / "none"), "--seeds", "3"]) == 2
    assert "cannot read the finished benchmark's results.json" in capsys.readouterr().err

    assert main(["benchmark", "--resume", str(three), "--seeds", "3,4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "adding 4 run(s)" in out and "baseline seed 0:" not in out.split("adding")[1]
    assert main(["benchmark", "--out", str(five), "--seeds", "0,1,2,3,4", *QUICK]) == 0
    added = json.loads((three / "results.json").read_text())
    fresh = json.loads((five / "results.json").read_text())
    for key in ("runs", "failed_runs", "summary", "comparisons", "robustness_profile",
                "data_per_seed", "subsets", "modalities"):
        assert untimed(added[key]) == untimed(fresh[key]), key
    assert [(r["method"], r["seed"]) for r in added["runs"]] == [
        (m, s) for s in range(5) for m in ("baseline", "dmrnet")]
    assert {k: v for k, v in added["config"].items() if k not in ("out", "overwrite")} == \
        {k: v for k, v in fresh["config"].items() if k not in ("out", "overwrite")}
    assert json.loads((three / "analysis.json").read_text()) == \
        json.loads((five / "analysis.json").read_text())
    # the earlier runs' files are kept as they were, the user's file too
    after = digest(three)
    for name, md5 in before.items():
        if name.startswith(("checkpoints/", "logs/")) or name == "notes.txt":
            assert after[name] == md5, name
    assert (three / "checkpoints" / "dmrnet-seed4" / "best.ckpt").is_file()
    assert not list(tmp_path.glob(".three*"))  # no partial folder or lock left


def test_resume_interrupted_leaves_out_as_it_was(tmp_path, capsys, monkeypatch):
    import dmrnet.benchmark.runs as bench

    out = tmp_path / "run"
    assert main(["benchmark", "--out", str(out), "--seeds", "0", *QUICK]) == 0
    before = digest(out)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "_run_method", stop)
    assert main(["benchmark", "--resume", str(out), "--seeds", "1"]) == 130
    assert "is as it was and nothing was left beside it" in capsys.readouterr().err
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
