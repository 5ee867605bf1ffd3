"""Sweeps: the benchmark once per value of one setting, and a table and plot of the mean and
worst subset against the value (seed bands).

``dmrnet benchmark --sweep KEY=v1,v2,...`` runs a full benchmark (methods x seeds) per value
into ``<out>/<KEY>=<value>/`` and writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` in
``<out>``. KEY is a method option (``beta``, or ``dmrnet.beta`` for one method) or a shared
model setting (``embed_dim``, ``optim.lr``). Every value is checked before any training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dmrnet.benchmark import (
    BenchmarkConfig,
    BenchmarkError,
    output_folder,
    prepare,
    quiet_lightning,
    run_benchmark,
    set_dotted,
)
from dmrnet.errors import RunInterruptedError
from dmrnet.report import to_json
from dmrnet.settings import SHARED_SETTINGS
from dmrnet.signals import exit_code, stop_word


def is_model_setting(key: str) -> bool:
    """Whether ``key`` (maybe dotted, e.g. "optim.lr") names a shared model setting rather
    than a method option."""
    return key.split(".", 1)[0] in SHARED_SETTINGS


def with_value(cfg: BenchmarkConfig, key: str, value: Any) -> BenchmarkConfig:
    """``cfg`` with the swept setting set to ``value``."""
    if is_model_setting(key):
        model = dict(cfg.model)
        set_dotted(model, key, value)  # copies the mappings along the path
        return replace(cfg, model=model)
    return replace(cfg, options={**cfg.options, key: value})


def run_sweep(cfg: BenchmarkConfig, key: str, values: Sequence[Any],
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark ``cfg`` once per value of ``key``; write and return the sweep's summary."""
    if len(values) < 2:
        raise BenchmarkError(f"--sweep {key} needs at least two values, e.g. "
                             f"--sweep {key}=0.1,0.2")
    if len({repr(v) for v in values}) != len(values):
        raise BenchmarkError(f"--sweep {key} lists a value twice: {list(values)}")
    quiet_lightning()
    output_folder(cfg)  # --out checked before the data are read
    configs, first = [], None
    for value in values:  # every value's settings checked before any training
        one, first = prepare(with_value(cfg, key, value), first)
        configs.append(one)
    folder = output_folder(cfg, first)  # and against the data's folders
    runs = []
    try:
        with folder as work:
            for value, one in zip(values, configs, strict=True):
                name = f"{key}={value}"
                echo(f"== {name}")
                results = run_benchmark(replace(one, out=str(work / name), overwrite=False),
                                        echo=lambda line: echo(line.replace(  # where it ends up
                                            str(work), str(folder.path))))
                runs.append({"value": value, "folder": name, "summary": results["summary"]})
            sweep = {"key": key, "values": list(values), "dataset": cfg.dataset,
                     "metric": results["metric"], "higher_is_better": results["higher_is_better"],
                     "runs": runs}
            (work / "sweep.json").write_text(to_json(sweep))
            (work / "sweep.md").write_text(sweep_markdown(sweep))
            plot_sweep(sweep, work / "sweep.png")
    except (KeyboardInterrupt, RunInterruptedError):  # inside a value's run, or between two
        raise RunInterruptedError(f"{stop_word()}: {cfg.out!r} is as it was and nothing was "
                                  "left beside it", exit_code()) from None
    echo(sweep_markdown(sweep))
    echo(f"wrote {str(folder.path)!r}")
    return sweep


def _cell(s: dict[str, Any], what: str) -> str:
    return f"{s[what]:.4f} ± {s[what + '_std']:.4f}"


def sweep_markdown(sweep: dict[str, Any]) -> str:
    methods = list(sweep["runs"][0]["summary"])
    lines = [f"# Sweep of {sweep['key']} on {sweep['dataset']}", "",
             f"Test {sweep['metric']}, mean ± std over seeds: mean over subsets / worst subset. "
             "Each value's full benchmark is in its folder.", "", "![sweep](sweep.png)", "",
             f"| {sweep['key']} | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for run in sweep["runs"]:
        cells = [f"{_cell(run['summary'][m], 'mean')} / {_cell(run['summary'][m], 'worst')}"
                 for m in methods]
        lines.append(f"| {run['value']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> None:
    """Mean over subsets and worst subset against the value, per method, with ±std bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sweep["values"]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    xs = [float(v) for v in values] if numeric else list(range(len(values)))
    methods = list(sweep["runs"][0]["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, what, title in ((axes[0], "mean", "mean over subsets"),
                            (axes[1], "worst", "worst subset")):
        for m in methods:
            ys = [r["summary"][m][what] for r in sweep["runs"]]
            sd = [r["summary"][m][what + "_std"] for r in sweep["runs"]]
            ax.plot(xs, ys, marker="o", label=m)
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                            [y + s for y, s in zip(ys, sd, strict=True)], alpha=0.2)
        ax.set_title(f"{title} (± std over seeds)")
        ax.set_xlabel(sweep["key"])
        ax.set_ylabel(f"test {sweep['metric']}")
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values])
        elif min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        ax.grid(color="0.92")
        if any(math.isfinite(v) for v in xs):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
