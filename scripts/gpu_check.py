"""The GPU check a maintainer runs in one command (``bash scripts/gpu_check.sh``).

Items, each run as its own process with its log kept under ``--logs``:

1. the test suite (``pytest``; tests marked ``cuda`` run only where CUDA is);
2. on CUDA: every smoke config's ``dmrnet fit`` + ``dmrnet test`` on a fixture in its
   dataset's real layout (CREMA-D, Kinetics-Sounds, CASIA-SURF, manifest, NYUv2);
3. on CUDA: ``dmrnet benchmark`` on mfeat, synthetic and rgbd-shapes for one epoch, with the
   shipped defaults (deterministic training included);
4. on CUDA: cached = naive every-subset evaluation and run-to-run bit-identical training
   (the ``cuda`` tests of ``tests/test_cuda.py``);
5. on CUDA: a ``--precision bf16-mixed`` benchmark run.

One summary line per item: PASS, FAIL or SKIP (with the reason); the exit code is 1 if any
item failed. Without a GPU the CUDA items are skipped, and the line says so.

    bash scripts/gpu_check.sh [--no-tests] [--logs DIR] [--accelerator cpu] [--only TEXT ...]

``--only TEXT`` runs only the items whose name contains TEXT (repeatable; e.g. to rerun the one
that failed); the others are listed as skipped.

``--accelerator cpu`` rehearses the CUDA items on the CPU (the tests do, so the script itself
cannot rot on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dmrnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "dmrnet.cli", *args]


def smoke_items(data: Path, runs: Path, accelerator: str) -> dict[str, list[list[str]]]:
    """Fixture builders + fit/test commands for every config under configs/smoke."""
    from tests.fixtures import (
        make_casia,
        make_cremad,
        make_kinetics_sounds,
        make_manifest,
        make_nyuv2_prepared,
        write_cremad_splits,
    )

    crema = make_cremad(data / "cremad", actors=("1001", "1002", "1003"))
    write_cremad_splits(crema, {"1001", "1002"}, {"1003"})
    extra = {
        "cremad": ["--data.root", str(crema), "--data.dataset_kwargs.train_csv", "train.csv",
                   "--data.dataset_kwargs.test_csv", "test.csv"],
        "kinetics_sounds": ["--data.root", str(make_kinetics_sounds(data / "ks"))],
        "casia_surf": ["--data.root", str(make_casia(data / "casia"))],
        "manifest": ["--data.dataset_kwargs.manifest", str(make_manifest(data / "manifest"))],
        "nyuv2": ["--data.root", str(make_nyuv2_prepared(data / "nyu"))],
    }
    items = {}
    for name, args in extra.items():
        out = runs / name
        common = ["--config", str(ROOT / "configs" / "smoke" / f"{name}.yaml"),
                  "--trainer.accelerator", accelerator, "--trainer.default_root_dir", str(out),
                  *args]
        # in one process (an interpreter start with torch and Lightning is most of a smoke
        # item's time)
        items[f"smoke {name}: fit + test on {where(accelerator)}"] = [[
            sys.executable, str(Path(__file__).resolve()), "--chain", "fit", *common, "--then",
            "test", *common, "--ckpt_path", "best-from-fit"]]
    return items


def best_from_fit(cmd: list[str]) -> list[str] | None:
    """``cmd`` with ``best-from-fit`` replaced by the fit's selected checkpoint (None: the
    fit wrote none)."""
    if "best-from-fit" not in cmd:
        return cmd
    root = Path(cmd[cmd.index("--trainer.default_root_dir") + 1])
    found = sorted(root.glob("lightning_logs/version_0/checkpoints/best-*.ckpt"))
    return [str(found[0]) if c == "best-from-fit" else c for c in cmd] if found else None


def chain(argv: list[str]) -> int:
    """``dmrnet`` commands separated by ``--then``, run one after another in this process."""
    from dmrnet.cli import main as dmrnet_main

    commands: list[list[str]] = [[]]
    for word in argv:
        if word == "--then":
            commands.append([])
        else:
            commands[-1].append(word)
    for cmd in commands:
        resolved = best_from_fit(cmd)
        if resolved is None:
            print("gpu_check: fit wrote no best checkpoint", flush=True)
            return 1
        print("$ dmrnet " + " ".join(resolved), flush=True)
        code = dmrnet_main(resolved)
        if code:
            return code
    return 0


def where(accelerator: str) -> str:
    return "cuda" if accelerator == "gpu" else accelerator


def run_item(commands: list[list[str]], log: Path) -> tuple[bool, str]:
    with open(log, "w") as fh:
        for cmd in commands:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
            if code != 0:
                return False, f"exit {code}: {' '.join(cmd[2:6])} ..."
    return True, _last_line(log)


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):  # pytest's closing line, or a benchmark run's test line
        if ln.startswith("test ") or any(w in ln for w in (" passed", " failed", " skipped")):
            return ln.strip("= ")
    return ""


def main() -> int:
    if sys.argv[1:2] == ["--chain"]:  # an item's commands, run in one process
        return chain(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-tests", action="store_true", help="skip item 1 (the test suite)")
    p.add_argument("--logs", help="folder for the logs (default: a new temporary folder)")
    p.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu",
                   help="where the CUDA items run (cpu: a rehearsal of the script)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only the items whose name contains TEXT (repeatable)")
    args = p.parse_args()
    acc, on = args.accelerator, where(args.accelerator)
    import lightning
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    cuda = torch.cuda.is_available() or acc == "cpu"
    print(f"gpu_check: {device}; torch {torch.__version__}, lightning {lightning.__version__}, "
          f"python {sys.version.split()[0]}", flush=True)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="dmrnet-gpu-check-"))
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dmrnet-gpu-check-work-"))
    items: dict[str, list[list[str]] | None] = {}
    items["tests (pytest)"] = None if args.no_tests else [
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]]
    cuda_items: dict[str, list[list[str]]] = {}
    if cuda:
        cuda_items.update(smoke_items(work / "data", work / "runs", acc))
    else:
        cuda_items.update({f"smoke {n}: fit + test on cuda": [] for n in
                           ("cremad", "kinetics_sounds", "casia_surf", "manifest", "nyuv2")})
    for ds in ("mfeat", "synthetic", "rgbd-shapes"):
        cuda_items[f"benchmark {ds}, 1 epoch on {on}"] = [dmrnet(
            "benchmark", "--dataset", ds, "--seeds", "0", "--epochs", "1", "--accelerator",
            acc, "--out", str(work / f"bench-{ds}"), "--no-progress")]
    cuda_items[f"cached = naive evaluation, bit-identical reruns on {on}"] = [
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "cuda",
         "tests/test_cuda.py"]]  # one process: the tests share one device
    cuda_items[f"benchmark mfeat, bf16-mixed on {on}"] = [dmrnet(
        "benchmark", "--dataset", "mfeat", "--seeds", "0", "--epochs", "1", "--accelerator",
        acc, "--precision", "bf16-mixed", "--out", str(work / "bench-bf16"), "--no-progress")]
    items.update(cuda_items)
    failed = 0
    width = max(len(k) for k in items)
    for k, (name, commands) in enumerate(items.items()):
        if commands is None:
            print(f"SKIP  {name:<{width}}  --no-tests", flush=True)
            continue
        if name in cuda_items and not cuda:
            print(f"SKIP  {name:<{width}}  no CUDA device (torch.cuda.is_available() is "
                  "False)", flush=True)
            continue
        if args.only and not any(text in name for text in args.only):
            print(f"SKIP  {name:<{width}}  not chosen (--only)", flush=True)
            continue
        log = logs / f"{k:02d}.log"
        t0 = time.perf_counter()
        ok, detail = run_item(commands, log)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {time.perf_counter() - t0:6.1f} s"
              f"  {detail}{'' if ok else f'  (log: {log})'}", flush=True)
    shutil.rmtree(work, ignore_errors=True)  # the items' runs and data (gigabytes); logs stay
    print(f"gpu_check: {failed} failed; logs in {logs}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
