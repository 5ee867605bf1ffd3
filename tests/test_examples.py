"""Every command and Python snippet in README.md and docs/*.md runs (issue 13), at a tiny scale.

A user follows a document top to bottom in a fresh folder; so does this test. The examples of
one document run in its order in one folder of their own (``configs/``, ``scripts/``,
``benchmarks/`` and ``.venv`` linked from this checkout; ``/data/<name>`` and ``data/my.csv``
are fixtures in the real on-disk formats), so an example that uses what an earlier one wrote
(export after benchmark, test after fit) finds it, and a broken one fails here by its line.

What is changed, and only this (:func:`scaled`):

- size: a benchmark trains 1 epoch on its first seed (a sweep, its first two values);
  ``fit``/``validate``/``test`` 1 epoch of at most 2 batches of 4 per split (NYUv2's images
  are 48 x 64, not 480 x 640; the CREMA-D and Kinetics-Sounds ResNets have one block per
  stage, not [3, 4, 6, 3]); the ``benchmarks/`` scripts 1 repetition at a small size
  (``SMALLER``: batch 8, fewer epochs and clips; ``threads.py`` without its two full benchmark
  runs; what ``preset_epoch.py`` prints is checked: ``OUTPUT_CHECKS``);
  ``scripts/gpu_check.sh`` skips its first item (the test suite, which is what runs this);
- hardware, where this machine lacks it: without CUDA, ``gpu`` accelerators become ``cpu``;
  several devices or nodes become 2 processes on this one machine (DDP over gloo), and
  torchrun's rendezvous host this machine. A command that this makes the same as one run
  above it (several nodes, then one node) is not run twice.

A Python block whose first line is ``# file: PATH`` is saved as PATH in the document's folder
(the reader saves it) and run. Shell lines must be commands this file knows how to run
(``dmrnet``, ``python``, ``torchrun``, ``bash scripts/...``, the setup lines); anything else
fails, so no example escapes. The setup
lines (venv, pip) are compared with ``scripts/setup.sh`` and the test command with ``.ci/run``
instead of being run again: CI has just run them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dmrnet.cli import main

from .fixtures import (
    make_casia,
    make_cremad,
    make_kinetics_sounds,
    make_nyuv2_prepared,
    make_rgb_depth_manifest,
    tone,
    write_video,
)

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console"}


@dataclass
class Example:
    """One example: a shell command (continuation lines joined, comment dropped) or a whole
    Python block, with the document line it starts on."""

    doc: str
    line: int
    kind: str  # "shell" or "python"
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def extract(doc: str, text: str | None = None) -> list[Example]:
    """The examples of a Markdown document, in order: every line of a ``bash`` block and every
    ``python`` block. A line in an unlabelled block that starts like a command is an error
    (label the block ``bash``), so a command cannot hide in a layout listing."""
    text = (ROOT / doc).read_text() if text is None else text
    examples: list[Example] = []
    for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
        indent, lang, body = m.group(1), m.group(2), m.group(3)
        first = text[: m.start()].count("\n") + 2
        lines = [ln[len(indent):] if ln.startswith(indent) else ln for ln in body.splitlines()]
        if lang == "python":
            examples.append(Example(doc, first, "python", "\n".join(lines) + "\n"))
        elif lang in SHELL_LANGS:
            pending, start = "", 0
            for i, ln in enumerate(lines):
                if not pending:
                    start = first + i
                stripped = re.sub(r"\s+#\s.*$", "", ln).rstrip()
                if not stripped.strip() or stripped.lstrip().startswith("#"):
                    continue
                if stripped.endswith("\\"):
                    pending += stripped[:-1] + " "
                    continue
                examples.append(Example(doc, start, "shell", " ".join((pending + stripped)
                                                                      .split())))
                pending = ""
        else:
            for i, ln in enumerate(lines):
                if re.match(r"\s*(\.venv/bin/)?(dmrnet|python3?|torchrun|pip|bash) ", ln):
                    raise AssertionError(f"{doc}:{first + i}: a command in a block that is not "
                                         f"labelled bash: {ln.strip()!r}")
    return examples


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set(argv: list[str], flag: str, value: str) -> None:
    """Give ``flag`` the value ``value``: in place where the command has it, else appended."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _scale_hardware(argv: list[str]) -> None:
    gpus = _cuda_devices()
    for flag in ("--accelerator", "--trainer.accelerator"):
        if flag in argv and argv[argv.index(flag) + 1] == "gpu" and not gpus:
            _set(argv, flag, "cpu")
    for flag, most in (("--trainer.devices", gpus or 2), ("--devices", gpus or 2),
                       ("--trainer.num_nodes", 1), ("--nnodes", 1),
                       ("--nproc-per-node", gpus or 2)):
        if flag in argv and argv[argv.index(flag) + 1].isdigit():
            _set(argv, flag, str(min(int(argv[argv.index(flag) + 1]), most)))
            if most == 1 and flag.startswith("--trainer."):  # one node: Lightning's default
                del argv[argv.index(flag):argv.index(flag) + 2]
    if "--rdzv-endpoint" in argv:
        _set(argv, "--rdzv-endpoint", f"127.0.0.1:{_free_port()}")


SMALLER = {  # the benchmark scripts' sizes, at which they still run every path
    "benchmarks/threads.py": ["--no-end-to-end", "--batch", "4"],  # no full benchmark runs
    "benchmarks/subset_eval.py": ["--batch", "8"],
    "benchmarks/train_step.py": ["--batch", "8"],
    "benchmarks/overhead.py": ["--epochs", "2", "--min-steps", "20"],
    "benchmarks/loader.py": ["--clips", "24"],
    "benchmarks/prepare_jobs.py": ["--clips", "2", "--seconds", "1", "--size", "32", "48",
                                   "--reps", "1"],
    "benchmarks/frozen_cache.py": ["--samples", "32", "--width", "16", "--layers", "1",
                                   "--epochs", "2", "--batch", "16"],
    "benchmarks/preset_epoch.py": ["--batch", "8"],  # its check asks for a measured ratio
    "benchmarks/aa_check.py": ["--pool", "6", "--seeds", "3", "--reps", "10", "--epochs", "1",
                               "--resamples", "50"],
}


def _preset_epoch_ratios(output: str) -> None:
    """The preset's epoch-cost script prints a measured ratio for both of its models (run here
    at batch 8 for every path of the script; the measured target uses its default batch)."""
    lines = [ln for ln in output.splitlines() if "ratio tutored/baseline" in ln]
    assert [ln.split()[0] for ln in lines] == ["mfeat", "conv"], output[-2000:]
    for ln in lines:
        ratio = float(ln.split("ratio tutored/baseline")[1].split()[0])
        # a measured ratio of two real runs' times; its size is the script's to report (with
        # one repetition beside the rest of the suite it ranged past 5)
        assert math.isfinite(ratio) and ratio > 0, ln


OUTPUT_CHECKS = {  # script -> a check of what the example printed
    "benchmarks/preset_epoch.py": _preset_epoch_ratios,
}


def scaled(argv: list[str]) -> list[str]:
    """The command at a tiny scale (see the module docstring); its meaning is unchanged."""
    argv = list(argv)
    _scale_hardware(argv)
    if "-m" in argv and argv[argv.index("-m") + 1] == "dmrnet.cli":  # torchrun ... -m dmrnet.cli
        verb_at = argv.index("-m") + 2
    elif Path(argv[0]).name == "dmrnet":
        verb_at = 1
    else:
        script = next((a for a in argv[1:] if a.endswith((".py", ".sh"))), "")
        if script.startswith("benchmarks/"):
            argv += ["--reps", "1"]
        argv += SMALLER.get(script, [])
        if script == "scripts/gpu_check.sh":
            argv += ["--no-tests"]
        return argv
    verb = argv[verb_at] if verb_at < len(argv) else ""
    if "--help" in argv:
        return argv
    if verb == "benchmark":
        seeds = argv[argv.index("--seeds") + 1].split(",")[0] if "--seeds" in argv else "0"
        _set(argv, "--seeds", seeds)
        _set(argv, "--epochs", "1")
        methods = argv[argv.index("--methods") + 1].split(",") if "--methods" in argv else []
        if ("dedicated" in methods and "--modalities" not in argv and "--dataset" in argv
                and argv[argv.index("--dataset") + 1] == "mfeat"):
            # dedicated trains one model per subset: 3 on two of the six views, not 63 (the
            # command's methods and options are kept; only the data shrink, as epochs do)
            argv += ["--modalities", "fou,kar"]
        if "--sweep" in argv:  # its first two values: a sweep needs two
            key, _, values = argv[argv.index("--sweep") + 1].partition("=")
            _set(argv, "--sweep", f"{key}={','.join(values.split(',')[:2])}")
        argv.append("--no-progress")
    elif verb in ("fit", "validate", "test"):
        argv += ["--trainer.max_epochs", "1", "--data.batch_size", "4"]
        configs = [a for a in argv if a.endswith(".yaml")]
        if any("nyuv2" in a for a in configs):
            argv += ["--data.dataset_kwargs.size", "[48, 64]"]  # the fixture's images
        if any(("cremad" in a or "kinetics_sounds" in a) for a in configs):
            # one block per ResNet stage (the recipes' [3, 4, 6, 3] networks are built and
            # trained at full size by tests/test_backbones.py and tests/test_determinism.py)
            argv += ["--model.network.encoder_kwargs.layers", "[1, 1, 1, 1]"]
        for split in ("train", "val", "test"):
            argv += [f"--trainer.limit_{split}_batches", "2"]
    return argv


def _fixtures(folder: Path, text: str) -> None:
    """The data the document ``text`` names, in their real formats, under ``folder/data``."""
    data = folder / "data"
    cremad = make_cremad(data / "CREMA-D", actors=("1001", "1002", "1003", "1004", "1005"))
    clip = sorted((cremad / "AudioWAV").glob("*.wav"))[0].stem
    for frame in (cremad / "Image-01-FPS" / clip).glob("*.jpg"):  # dmrnet prepare makes them
        frame.unlink()
    (cremad / "Image-01-FPS" / clip).rmdir()
    write_video(cremad / "VideoFlash" / f"{clip}.mp4")
    make_kinetics_sounds(data / "kinetics_sounds")
    for split in ("train", "test") if "kinetics_sounds_videos" in text else ():
        for k, cls in enumerate(("laughing", "singing")):  # for dmrnet prepare
            write_video(data / "kinetics_sounds_videos" / split / cls / "yt0.mp4", frames=12,
                        audio=tone(k, rate=44100, seconds=1.2), rate=44100)
    make_casia(data / "CASIA-SURF")
    # the README's example file names start at 0001
    make_nyuv2_prepared(data / "nyuv2", n_train=6, n_test=2, size=(48, 64), name="{n:04d}")
    make_rgb_depth_manifest(data)


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory):
    """document -> its folder, made on first use."""
    made: dict[str, Path] = {}

    def get(doc: str) -> Path:
        if doc not in made:
            folder = tmp_path_factory.mktemp(Path(doc).stem)
            for name in ("configs", "scripts", "benchmarks", "docs"):
                (folder / name).symlink_to(ROOT / name)
            (folder / ".venv").symlink_to(Path(sys.prefix))
            _fixtures(folder, (ROOT / doc).read_text())
            made[doc] = folder
        return made[doc]

    return get


def _environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    return env


def _words(command: str, folder: Path) -> list[str]:
    """The command's words as the shell gives them (globs, quotes, ``$(...)``), run in
    ``folder`` with ``/data/...`` pointing at the fixtures."""
    command = re.sub(r"(?<![\w.])/data/", f"{folder}/data/", command)
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], cwd=folder,
                          capture_output=True, text=True, env=_environment(folder), check=True)
    return done.stdout.split("\0")[:-1]


def _setup_commands() -> list[str]:
    return [ln.strip() for ln in (ROOT / "scripts" / "setup.sh").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def _check_setup_line(command: str) -> bool:
    """The README's setup and test lines: True if ``command`` is one, after checking that it
    says what ``scripts/setup.sh`` and ``.ci/run`` do."""
    ci = (ROOT / ".ci" / "run").read_text()
    if command.startswith("bash scripts/setup.sh && "):
        rest = command.removeprefix("bash scripts/setup.sh && ")
        if rest == ".venv/bin/python -m pytest":
            assert command in ci, f".ci/run does not run the README's test command {command!r}"
            return True
        return False  # the main job after the setup: run it
    if command.startswith("pip install "):
        wanted = shlex.split(command)[2:]
        setup = " ".join(_setup_commands())
        assert all(w in setup for w in wanted), (
            f"scripts/setup.sh does not install {wanted}; it runs {_setup_commands()}")
        return True
    if command.startswith("python3 -m venv .venv"):
        assert any("-m venv .venv" in c for c in _setup_commands())
        return True
    return False


def run_shell(example: Example, folder: Path) -> None:
    command = example.text
    if _check_setup_line(command):
        return
    command = command.removeprefix("bash scripts/setup.sh && ")  # setup: done by CI already
    words = _words(command, folder)
    argv = scaled(words)
    if _hardware_scaled(words):  # e.g. several nodes become this one machine
        key = (folder, _meaning(argv))
        if key in SCALED_RUNS:  # the same command as one run above: done
            return
        SCALED_RUNS.add(key)
    name = Path(argv[0]).name
    # in this process, unless the document saved a plugin: what one command registers would
    # stay registered for the next, which a user's fresh process does not see
    in_process = (name == "dmrnet" and "--trainer.strategy" not in argv
                  and folder not in WROTE_FILES)
    if in_process:  # as the console script does, without another interpreter start
        cwd = Path.cwd()
        os.chdir(folder)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv[1:])
                except SystemExit as stop:  # --help
                    code = int(stop.code or 0)
        finally:
            os.chdir(cwd)
        output = out.getvalue() + err.getvalue()
    else:
        known = {"dmrnet", "python", "python3", "torchrun", "bash"}
        assert name in known, (f"{example.id}: tests/test_examples.py does not know how to run "
                               f"{name!r}; teach it (and keep the example runnable)")
        if name in ("python", "python3"):
            argv[0] = sys.executable
        elif name != "bash":
            argv[0] = str(VENV_BIN / name)
        done = subprocess.run(argv, cwd=folder, env=_environment(folder), capture_output=True,
                              text=True, timeout=900)
        code, output = done.returncode, done.stdout + done.stderr
    assert code == 0, f"{example.id}: {' '.join(argv)} exited {code}:\n{output[-3000:]}"
    for script, check in OUTPUT_CHECKS.items():
        if script in argv:
            check(output)


SCALED_RUNS: set[tuple[Path, tuple[str, ...]]] = set()  # commands whose hardware was scaled
WROTE_FILES: set[Path] = set()  # document folders where a Python block saved a file


def _meaning(argv: list[str]) -> tuple[str, ...]:
    """``argv`` without what is the default on this machine: the CPU accelerator without CUDA
    (the configs say ``auto``)."""
    out = list(argv)
    flag = "--trainer.accelerator"
    if not _cuda_devices() and flag in out and out[out.index(flag) + 1] == "cpu":
        del out[out.index(flag):out.index(flag) + 2]
    return tuple(out)


def _hardware_scaled(argv: list[str]) -> bool:
    """Whether :func:`scaled` gives ``argv`` fewer devices or nodes than it names."""
    scaled_argv = list(argv)
    _scale_hardware(scaled_argv)
    return scaled_argv != argv


def run_python(example: Example, folder: Path) -> None:
    """Run a Python block; one whose first line is ``# file: PATH`` is also saved as PATH in
    the document's folder, as the reader would, for the commands below it."""
    saved = re.match(r"# file: (\S+)\n", example.text)
    if saved:
        (folder / saved.group(1)).write_text(example.text)
        WROTE_FILES.add(folder)
    done = subprocess.run([sys.executable, "-c", example.text], cwd=folder,
                          env=_environment(folder), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{example.id}: the snippet failed:\n{done.stderr[-3000:]}"


EXAMPLES = [e for doc in DOCUMENTS for e in extract(doc)]


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs(example: Example, sandboxes) -> None:
    # examples build on the ones above them: each runs once per sandbox, in document order,
    # whatever order the tests are taken in (conftest's xdist groups keep each document's
    # examples on one test worker, so its chain runs once); a test reports its own example
    folder = sandboxes(example.doc)
    for earlier in [e for e in EXAMPLES if e.doc == example.doc and e.line <= example.line]:
        if earlier.id not in RAN:
            try:
                (run_python if earlier.kind == "python" else run_shell)(earlier, folder)
                RAN[earlier.id] = ""
            except AssertionError as err:
                RAN[earlier.id] = str(err)
    assert RAN[example.id] == "", RAN[example.id]


RAN: dict[str, str] = {}  # example id -> "" (ran fine) or what went wrong, in this process


def test_every_document_has_examples_and_commands_hide_nowhere():
    docs = {e.doc for e in EXAMPLES}
    assert {"README.md", "docs/results.md", "docs/architecture.md"} <= docs
    assert sum(e.kind == "python" for e in EXAMPLES if e.doc == "README.md") >= 3
    with pytest.raises(AssertionError, match="not labelled bash"):
        extract("x.md", "```\nsrc/\ndmrnet fit --config a.yaml\n```\n")
    commands = [e.text.removeprefix("bash scripts/setup.sh && ") for e in EXAMPLES]
    for doc in ("README.md", "docs/results.md", "docs/architecture.md"):
        missing = inline_commands_not_run((ROOT / doc).read_text(), commands)
        assert not missing, f"{doc}: `{missing[0]}` is in no code block, so no test runs it"
    assert inline_commands_not_run("run `dmrnet fit --bogus 1` now", commands) == [
        "dmrnet fit --bogus 1"]


def inline_commands_not_run(text: str, commands: list[str]) -> list[str]:
    """Inline commands with flags that are neither syntax (a placeholder: ``...``, ``FILE``,
    ``a|b``, ``--help``) nor run by an example (perhaps with more flags, e.g. an --out)."""
    out = []
    for span in re.findall(r"`((?:dmrnet|python) [^`]*--[^`]*)`", text):
        words = " ".join(span.split())
        if re.search(r"\.\.\.|[A-Z]{2,}|\||--help$", span) or any(
                c == words or c.startswith(words + " ") for c in commands):
            continue
        out.append(span)
    return out


def test_scaling_keeps_meaning_and_shrinks_size():
    bench = scaled(["dmrnet", "benchmark", "--dataset", "mfeat", "--seeds", "3,4",
                    "--epochs", "30", "--out", "runs/x"])
    assert bench == ["dmrnet", "benchmark", "--dataset", "mfeat", "--seeds", "3",
                     "--epochs", "1", "--out", "runs/x", "--no-progress"]
    fit = scaled(["dmrnet", "fit", "--config", "c.yaml"])
    assert fit[:4] == ["dmrnet", "fit", "--config", "c.yaml"] and "--trainer.max_epochs" in fit
    assert "--model.network.encoder_kwargs.layers" not in fit
    recipe = scaled(["dmrnet", "test", "--config", "configs/cremad_dmrnet.yaml"])
    assert recipe[recipe.index("--model.network.encoder_kwargs.layers") + 1] == "[1, 1, 1, 1]"
    assert scaled(["dmrnet", "fit", "--help"]) == ["dmrnet", "fit", "--help"]
    peers = scaled(["dmrnet", "benchmark", "--dataset", "mfeat", "--methods", "dmrnet,dedicated"])
    assert peers[-3:] == ["--modalities", "fou,kar", "--no-progress"]
    assert "--modalities" not in scaled(["dmrnet", "benchmark", "--methods", "dmrnet,dedicated"])
    sweep = scaled(["dmrnet", "benchmark", "--sweep", "beta=0,0.2,0.5"])
    assert sweep[2:4] == ["--sweep", "beta=0,0.2"]
    if not torch.cuda.is_available():
        ddp = scaled(["dmrnet", "fit", "--trainer.accelerator", "gpu", "--trainer.devices", "8"])
        assert ddp[2:6] == ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
        nodes = ["dmrnet", "fit", "--trainer.num_nodes", "2", "--trainer.devices", "8"]
        assert _hardware_scaled(nodes) and _meaning(scaled(nodes)) == _meaning(ddp)
    assert not _hardware_scaled(["dmrnet", "fit", "--trainer.devices", "1"])
    with pytest.raises(AssertionError, match="ratio"):
        _preset_epoch_ratios("mfeat ratio tutored/baseline nan\nconv ratio tutored/baseline 1")


def test_the_readme_story_serves_the_first_commands_own_output():
    """Issue 26: the first command writes runs/mfeat (no --out: the default's first folder),
    and "Use a trained model" exports and serves that run; no other command writes there, so
    the examples test's in-order chain runs export and predict on the first command's own
    output."""
    readme = [e for e in EXAMPLES if e.doc == "README.md"]
    first = readme[0].text
    assert first.endswith("dmrnet benchmark --dataset mfeat") and "--out" not in first
    exports = [e.text for e in readme if e.text.startswith("dmrnet export --checkpoint runs/mf")]
    assert len(exports) == 2 and all(t.split()[3].startswith("runs/mfeat/") for t in exports)
    writers = [e.text for e in readme[1:] if re.search(r"--out runs/mfeat(\s|$)", e.text)]
    assert writers == [], writers
