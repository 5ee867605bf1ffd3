"""Ctrl-C (SIGINT) and SIGTERM sent to real ``dmrnet`` processes while they train (issue 22):
the shell's exit code, one line saying what was kept, and nothing else touched."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, r"terminated \(SIGTERM\)")]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def signal_when(argv: list[str], cwd: Path, ready: str, sig: int) -> tuple[int, str]:
    """Start ``dmrnet ARGV``, send ``sig`` once a file matching the glob ``ready`` exists
    under ``cwd`` (the run is training), and return its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "dmrnet.cli", *argv], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(cwd.glob(ready)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the run ended (or never trained) before the signal:\n{err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_benchmark_stopped_inside_training_leaves_out_and_its_neighbours_as_they_were(
        tmp_path, sig, code, word):
    (tmp_path / "notes.txt").write_text("the user's own file")
    before = files_under(tmp_path)
    code_, err = signal_when(
        ["benchmark", "--modalities", "fac,mor", "--methods", "baseline", "--seeds", "0",
         "--epochs", "400", "--no-progress", "--out", "run"],
        tmp_path, ".run.partial-*/logs/*/metrics.csv", sig)
    assert code_ == code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"dmrnet: {word} during baseline-seed0 \(fit, epoch \d+\): 'run' is "
                        r"as it was and nothing was left beside it", last), last
    assert files_under(tmp_path) == before  # no --out, no partial run, no lock file


@pytest.mark.slow
def test_fit_stopped_by_sigterm_keeps_its_checkpoints_and_exits_143(tmp_path):
    code, err = signal_when(
        ["fit", "--config", str(ROOT / "configs" / "mfeat_dmrnet.yaml"), "--trainer.max_epochs",
         "400", "--trainer.default_root_dir", "r", "--trainer.enable_progress_bar", "false"],
        tmp_path, "r/lightning_logs/version_0/checkpoints/last.ckpt", signal.SIGTERM)
    assert code == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"dmrnet: terminated \(SIGTERM\) during fit at epoch \d+, step \d+: "
                        r"checkpoints kept in .*; continue with --resume .*", last), last
    assert (tmp_path / "r" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_stopped_while_starting_is_one_line(tmp_path, sig, code, word):
    """Importing torch and Lightning takes seconds (more on a busy machine): a signal then
    ends ``dmrnet`` with one line, not a traceback from inside an import."""
    for delay in (0.1, 0.2, 0.35, 0.5):  # at different points of the imports (CI: numpy's)
        proc = subprocess.Popen([sys.executable, "-m", "dmrnet.launch", "fit", "--config",
                                 str(ROOT / "configs" / "mfeat_dmrnet.yaml")], cwd=tmp_path,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)  # "import dmrnet" is light; "import dmrnet.cli" takes seconds
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, (delay, err[-2000:])
        assert re.fullmatch(rf"dmrnet: {word} while starting; nothing was read or written",
                            err.strip()), (delay, err[-2000:])
        assert not list(tmp_path.iterdir())


def test_the_command_is_the_light_launcher():
    """``import dmrnet`` does not load torch, and the installed ``dmrnet`` runs
    :mod:`dmrnet.launch` (which catches a signal while the rest loads)."""
    from importlib.metadata import entry_points

    script = {e.name: e.value for e in entry_points(group="console_scripts")}.get("dmrnet")
    assert script == "dmrnet.launch:main"
    out = subprocess.run([sys.executable, "-c", "import sys, dmrnet, dmrnet.launch; "
                          "print('torch' in sys.modules, dmrnet.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"


@pytest.mark.slow
def test_signal_after_the_results_are_written_prints_no_atexit_noise(tmp_path):
    """A Ctrl-C once the run is complete (its last line printed) leaves the finished run and
    no "Exception ignored in atexit callback" from Python's clean-up."""
    proc = subprocess.Popen([sys.executable, "-m", "dmrnet.launch", "benchmark", "--modalities",
                             "fac,mor", "--methods", "baseline", "--seeds", "0", "--epochs", "1",
                             "--no-progress", "--out", "run"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("wrote '"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err[-2000:]
    assert "Exception ignored" not in err and "Traceback" not in err, err[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()
