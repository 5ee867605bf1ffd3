"""scripts/gpu_check.sh: on a machine without CUDA it skips the CUDA items and says so; its
CUDA items, rehearsed on the CPU, all pass (so the script works when a maintainer first runs it
on a GPU)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_without_cuda_every_cuda_item_is_skipped_and_says_why():
    done = gpu_check("--no-tests")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == 11
    assert all(ln.startswith("SKIP") for ln in lines)
    assert sum("no CUDA device" in ln for ln in lines) == 10


@pytest.mark.slow
def test_cuda_items_rehearsed_on_cpu_pass(tmp_path):
    # one item of each kind (a smoke fit + test in one process, a benchmark, the cuda tests):
    # the other items are the same code with other configs, which the suite runs on CPU
    # (tests/test_tasks_cli.py, tests/test_segmentation.py, tests/test_runtime.py)
    chosen = ["smoke nyuv2", "benchmark synthetic", "cached = naive"]
    done = gpu_check("--no-tests", "--accelerator", "cpu", "--logs", str(tmp_path),
                     *[w for c in chosen for w in ("--only", c)])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == 11
    passed = [ln for ln in lines if ln.startswith("PASS")]
    assert [c for c in chosen if any(c in ln for ln in passed)] == chosen, done.stdout
    assert len(passed) == 3 and sum("not chosen (--only)" in ln for ln in lines) == 7
    assert "test accuracy: mean" in done.stdout  # the benchmark item reports its result
    assert len(list(tmp_path.glob("*.log"))) == 3
    work = re.findall(r"(/\S+dmrnet-gpu-check-work-\w+)/", done.stdout)
    assert work and not Path(work[0]).exists()  # its runs (gigabytes) are not left behind
