"""``scripts/same_numbers.py BEFORE AFTER``: the bit-for-bit check of a refactoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "same_numbers.py"


def run(before: dict, after: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    for name, results in (("before", before), ("after", after)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "before"),
                           str(tmp_path / "after")], capture_output=True, text=True, check=False)


def results(*runs: dict) -> dict:
    return {"runs": [{"method": "dmrnet", "seed": s, "per_subset": {"a": 0.5, "b": 0.25},
                      "loss_terms": [{"epoch": 0, "loss": 1.0}], "best_epoch": 3,
                      "cpu_threads": 1, **r} for s, r in enumerate(runs)]}


def test_same_numbers_passes_equal_runs_and_names_each_difference(tmp_path):
    same = run(results({}, {}), results({}, {}), tmp_path)
    assert same.returncode == 0 and "2 runs, every number the same" in same.stdout
    # the least float difference, a loss term, a thread count and a missing run: each named
    tiny = {"per_subset": {"a": 0.5, "b": 0.25 + 2**-54 * 4}}
    other = run(results({}, {}), results(tiny, {"loss_terms": [{"epoch": 0, "loss": 1.5}],
                                                "cpu_threads": 2}), tmp_path)
    assert other.returncode == 1
    assert "run dmrnet seed 0: per_subset differs" in other.stdout
    assert "run dmrnet seed 1: loss_terms differs" in other.stdout
    assert "trained with 1 and 2 CPU threads" in other.stdout
    missing = run(results({}, {}), results({}), tmp_path)
    assert missing.returncode == 1 and "run dmrnet seed 1 is only in BEFORE" in missing.stdout
    (tmp_path / "after" / "results.json").unlink()
    gone = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "before"),
                           str(tmp_path / "after")], capture_output=True, text=True, check=False)
    assert gone.returncode == 1 and "holds no readable results.json" in gone.stderr
