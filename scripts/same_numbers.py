"""Check that a change left a benchmark's numbers bit for bit as they were.

Run the same benchmark command on two commits (same data, seeds and ``--threads``, or the same
thread count chosen: float sums depend on it), then

    python scripts/same_numbers.py BEFORE_FOLDER AFTER_FOLDER

compares the two ``results.json`` run by run: the same (method, seed) runs, and for each its
per-subset test metric, every metric of every subset where recorded (``per_subset_all``) and
every epoch's mean loss terms, compared with ``==``. Prints one line per folder pair and
each difference; exits 1 when anything differs, 0 when nothing does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMPARED = ("per_subset", "per_subset_all", "loss_terms", "best_epoch")


def differences(before: dict, after: dict) -> list[str]:
    """What differs between two results dicts' runs (empty: bit for bit the same)."""
    a = {(r["method"], r["seed"]): r for r in before["runs"]}
    b = {(r["method"], r["seed"]): r for r in after["runs"]}
    out = [f"run {m} seed {s} is only in {where}" for where, one, other in
           (("BEFORE", a, b), ("AFTER", b, a)) for m, s in sorted(set(one) - set(other))]
    for key in sorted(set(a) & set(b)):
        for field in COMPARED:
            if a[key].get(field) != b[key].get(field):
                out.append(f"run {key[0]} seed {key[1]}: {field} differs")
        threads = (a[key].get("cpu_threads"), b[key].get("cpu_threads"))
        if threads[0] != threads[1]:
            out.append(f"run {key[0]} seed {key[1]}: trained with {threads[0]} and "
                       f"{threads[1]} CPU threads (rerun with --threads N)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    loaded = []
    for folder in (args.before, args.after):
        try:
            loaded.append(json.loads((folder / "results.json").read_text()))
        except (OSError, ValueError) as err:
            raise SystemExit(f"same_numbers: error: {str(folder)!r} holds no readable "
                             f"results.json ({err})") from None
    found = differences(*loaded)
    runs = len(loaded[0]["runs"])
    if found:
        print(f"{args.before} vs {args.after}: {len(found)} difference(s) over {runs} runs")
        print("\n".join(f"  {line}" for line in found))
        return 1
    print(f"{args.before} vs {args.after}: {runs} runs, every number the same bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
