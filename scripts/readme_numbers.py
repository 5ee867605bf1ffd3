"""Write the measured numbers into README.md from benchmark runs of the current code.

Each block between ``<!-- numbers: NAME -->`` and ``<!-- /numbers -->`` in README.md is
rewritten from the run folders behind it, and says the command that produced them:

- ``mfeat``: the quick start's job, ``dmrnet benchmark --dataset mfeat`` (defaults; about
  45 seconds on 2 idle CPU cores);
- ``preset``: the preset against the baseline and dedicated models: synthetic and mfeat
  (``--methods baseline,tutored,dedicated --seeds 0,1,2,3,4``) and rgbd-shapes
  (``--methods baseline,tutored --seeds 0,1,2,3,4``); about 1 hour on 2 CPU cores;
- ``loader``: what ``python benchmarks/loader.py`` prints (about 1 minute).

Without ``--runs``, every benchmark a block needs is run now into ``runs/readme/<NAME>`` (an
existing complete run there is reused); ``--runs DIR`` reads them from DIR instead.

    python scripts/readme_numbers.py [--only mfeat] [--runs DIR] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dmrnet

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- numbers: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)",
                  re.S)

RUNS: dict[str, dict[str, list[str]]] = {
    "mfeat": {"mfeat": ["--dataset", "mfeat"]},
    "preset": {
        "synthetic": ["--dataset", "synthetic", "--methods", "baseline,tutored,dedicated",
                      "--seeds", "0,1,2,3,4"],
        "mfeat": ["--dataset", "mfeat", "--methods", "baseline,tutored,dedicated",
                  "--seeds", "0,1,2,3,4"],
        "rgbd-shapes": ["--dataset", "rgbd-shapes", "--methods", "baseline,tutored",
                        "--seeds", "0,1,2,3,4"],
    },
}
"""Block name -> run name -> the ``dmrnet benchmark`` arguments of that run."""

SCRIPTS: dict[str, list[str]] = {"loader": ["benchmarks/loader.py"]}
"""Block name -> a script (and its arguments) whose printed lines are the block."""


def command(args: list[str]) -> str:
    return "dmrnet benchmark " + " ".join(args)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _worst_name(results: Mapping[str, Any], method: str) -> str:
    per = results["summary"][method]["per_subset"]
    pick = min if results["higher_is_better"] else max
    return pick(per, key=per.get)


def render_mfeat(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The quick start's table: per method the mean over subsets and the worst subset."""
    res = runs["mfeat"]
    cfg = res["config"]
    lines = [f"`{command(RUNS['mfeat']['mfeat'])}` (defaults: {', '.join(cfg['methods'])}, "
             f"seeds {','.join(map(str, cfg['seeds']))}, {cfg['epochs']} epochs), "
             f"{_provenance(res)}:", "",
             f"| method | mean over {len(res['subsets'])} subsets | worst subset |",
             "|---|---|---|"]
    for m, s in res["summary"].items():
        lines.append(f"| {m} | {_pm(s['mean'], s['mean_std'])} | {_pm(s['worst'], s['worst_std'])}"
                     f" (`{_worst_name(res, m)}`) |")
    return "\n".join(lines) + "\n"


def render_preset(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The preset's summary: mean / worst per method and data, and the fraction of the
    baseline's gap to dedicated models that the preset closes where that gap is beyond noise."""
    lines = ["Test accuracy (rgbd-shapes: mIoU), mean over subsets / worst subset, mean over "
             "seeds, from:", ""]
    lines += [f"- `{command(RUNS['preset'][name])}` ({_provenance(res)})"
              for name, res in runs.items()]
    lines += ["", "| data (seeds) | baseline | tutored | dedicated (2^M − 1 models) | gap to "
              "dedicated closed by tutored |", "|---|---|---|---|---|"]
    for name, res in runs.items():
        cells = []
        for m in ("baseline", "tutored", "dedicated"):
            s = res["summary"].get(m)
            cells.append(f"{s['mean']:.4f} / {s['worst']:.4f}" if s else "not run")
        gap = res.get("gap_to_reference")
        closed = "—"
        if gap and gap["per_method"].get("tutored", {}).get("closed_behind") is not None:
            closed = (f"{100 * gap['per_method']['tutored']['closed_behind']:.0f} % "
                      f"({len(gap['behind'])} subsets where dedicated leads beyond noise)")
        seeds = len(res["config"]["seeds"])
        lines.append(f"| {name} ({seeds}) | " + " | ".join(cells) + f" | {closed} |")
    lines += ["", "tutored − baseline (95 % interval for seed and test-sample noise, README "
              "\"Report statistics\"; its lowest subset against the baseline):", ""]
    for name, res in runs.items():
        parts = []
        for c in res["comparisons"]:
            if {c["a"], c["b"]} == {"baseline", "tutored"}:
                sign = 1 if c["a"] == "tutored" else -1
                lo, hi = sorted(sign * v for v in c["ci95"])
                parts.append(f"{c['on']} {sign * c['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                             f"({c['verdict']})")
        base, pre = (res["summary"][m]["per_subset"] for m in ("baseline", "tutored"))
        sign = 1 if res["higher_is_better"] else -1
        low = min(base, key=lambda k: sign * (pre[k] - base[k]))
        parts.append(f"lowest `{low}` {sign * (pre[low] - base[low]):+.4f}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def render_script(name: str, output: str, made: Mapping[str, Any]) -> str:
    """A script's printed lines, with the command and where it ran."""
    call = "python " + " ".join(SCRIPTS[name])
    return (f"`{call}` ({_provenance({'made': made})}):\n\n```text\n{output.strip()}\n```\n")


RENDER: dict[str, Callable[[Mapping[str, Mapping[str, Any]]], str]] = {
    "mfeat": render_mfeat, "preset": render_preset}


def _provenance(results: Mapping[str, Any]) -> str:
    made = results.get("made") or {}
    parts = [f"dmrnet {made.get('version', '?')}"]
    if made.get("commit"):
        parts.append(f"commit {made['commit']}")
    if made.get("seconds") is not None:
        parts.append(f"{_duration(made['seconds'])} on {made.get('machine', 'this machine')}")
    return ", ".join(parts)


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with the body of each ``numbers`` block named in ``blocks`` replaced."""
    names = [m.group("name") for m in MARK.finditer(text)]
    missing = [n for n in blocks if n not in names]
    if missing:
        raise SystemExit(f"README has no '<!-- numbers: {missing[0]} -->' block")
    return MARK.sub(lambda m: m.group(1) + blocks.get(m.group("name"), m.group("body"))
                    + m.group(4), text)


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, text=True,
                           capture_output=True).stdout.strip()
    return (done.stdout.strip() + (" + changes" if dirty else "")) if done.returncode == 0 \
        else None


def run_or_read(folder: Path, args: list[str], fresh: bool) -> dict[str, Any]:
    """A run's results.json, with when and how it was made in ``made``: read when the folder
    holds a complete run, else (``fresh``) made now with ``dmrnet benchmark``."""
    results = folder / "results.json"
    made_file = folder / "readme_numbers.json"
    if not results.is_file():
        if not fresh:
            raise SystemExit(f"no results.json in {str(folder)!r}; run: {command(args)} "
                             f"--out {folder}")
        print(f"running: {command(args)} --out {folder}", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dmrnet.cli", "benchmark", *args, "--out",
                        str(folder), "--no-progress"], check=True)
        _record(made_file, time.perf_counter() - t0)
    out = json.loads(results.read_text())
    out["made"] = json.loads(made_file.read_text()) if made_file.is_file() else {}
    return out


def script_output(folder: Path, script: list[str], fresh: bool) -> tuple[str, dict[str, Any]]:
    """What ``script`` printed (``folder/output.txt``), run now unless ``folder`` has it."""
    out, made_file = folder / "output.txt", folder / "readme_numbers.json"
    if not out.is_file():
        if not fresh:
            raise SystemExit(f"no output.txt in {str(folder)!r}; run: python {' '.join(script)}")
        print(f"running: python {' '.join(script)}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, *script], cwd=ROOT, check=True, text=True,
                              capture_output=True)
        folder.mkdir(parents=True, exist_ok=True)
        out.write_text(done.stdout)
        _record(made_file, time.perf_counter() - t0)
    return out.read_text(), json.loads(made_file.read_text()) if made_file.is_file() else {}


def _record(path: Path, seconds: float) -> None:
    """Write how a block's source was made: dmrnet's version, the commit, the time taken."""
    path.write_text(json.dumps({"version": dmrnet.__version__, "commit": _commit(),
                                "seconds": seconds, "machine": f"{_cores()}-core CPU"}))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", choices=[*RUNS, *SCRIPTS],
                   help="only this block (repeat for several; default all)")
    p.add_argument("--runs", type=Path, help="read the runs from DIR/<block>/<run> instead of "
                   "running them")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    base = args.runs or ROOT / "runs" / "readme"
    blocks = {}
    for name in args.only or [*RUNS, *SCRIPTS]:
        if name in SCRIPTS:
            output, made = script_output(base / name, SCRIPTS[name], fresh=args.runs is None)
            blocks[name] = render_script(name, output, made)
            continue
        runs = {run: run_or_read(base / name / run, run_args, fresh=args.runs is None)
                for run, run_args in RUNS[name].items()}
        blocks[name] = RENDER[name](runs)
    args.readme.write_text(replace_blocks(args.readme.read_text(), blocks))
    print(f"wrote {', '.join(blocks)} into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
