"""The paper's claims, measured (``dmrnet analyze``):

- DMRNet's premise: subsets with larger mean embedding variance have larger error (per subset,
  with the Spearman rank correlation);
- the intra-class direction constraint: for the same samples, how aligned mu is across subsets
  (mean cosine between subsets) and with the classifier weight of the true class (the paper:
  lower under DMRNet than under the common-subspace baseline);
- each method's own part (:meth:`~dmrnet.methods.Method.analysis`; DMRNet's: the subsets its
  regulariser chose and their accuracy change against the method without it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmrnet.data.base import DataError
from dmrnet.data.io import read_text
from dmrnet.errors import first_line
from dmrnet.evaluation import subset_outputs
from dmrnet.methods import METHODS
from dmrnet.predict import load_module
from dmrnet.report import legend_below, pyplot, save_figure, to_json
from dmrnet.training import MultimodalDataModule


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points."""
    a, b = np.asarray(list(x), float), np.asarray(list(y), float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return math.nan

    def rank(v: np.ndarray) -> np.ndarray:
        order = v.argsort(kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # ties share their mean rank
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def direction_alignment(mus: Tensor, targets: Tensor, class_weights: Tensor) -> dict[str, float]:
    """mus (S, N, D): mu of the same N samples under S subsets; class_weights (K, D).

    Returns the mean cosine between mu of different subsets (over sample and subset pairs) and
    the mean cosine between mu and the true class's classifier weight (over subsets, samples).
    """
    u = F.normalize(mus.double(), dim=-1)
    s = u.shape[0]
    if s > 1:
        gram = torch.einsum("snd,tnd->nst", u, u)  # (N, S, S)
        off = (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / (s * (s - 1))
        between = float(off.mean())
    else:
        between = math.nan
    w = F.normalize(class_weights.double(), dim=-1)[targets]  # (N, D)
    to_class = float(torch.einsum("snd,nd->sn", u, w).mean())
    return {"between_subsets": between, "to_class_weight": to_class}


@torch.no_grad()
def model_statistics(module: Any, loader: Iterable[Any], max_samples: int = 2000
                     ) -> dict[str, Any]:
    """Per subset: error rate and mean sigma^2 (if the method has it); and direction alignment
    on the complete samples. Classification models only."""
    model = module.model.eval()
    names = model.space.names
    errors = {n: [0, 0] for n in names}
    var_sum = {n: [0.0, 0] for n in names}
    mus: list[list[Tensor]] = [[] for _ in names]
    targets: list[Tensor] = []
    seen = 0
    for batch in loader:
        if seen >= max_samples:
            break
        complete = batch.availability.all(dim=1)
        for s, rows, out in subset_outputs(model, batch.inputs, batch.availability,
                                          lengths=batch.lengths_or_none):
            if out.logits.dim() != 2:
                raise DataError("analysis covers classification models (logits (B, K))")
            target = batch.target if rows is None else batch.target[rows]
            wrong = (out.logits.argmax(1) != target).sum().item()
            errors[names[s]][0] += int(wrong)
            errors[names[s]][1] += len(target)
            if out.logvar is not None:
                var_sum[names[s]][0] += float(out.variance.sum())
                var_sum[names[s]][1] += len(target)
            mu = out.mu.flatten(2).mean(2) if out.mu.dim() > 2 else out.mu
            sel = complete if rows is None else complete[rows]
            mus[s].append(mu[sel])
        targets.append(batch.target[complete])
        seen += len(batch)
    error = {n: e / t if t else math.nan for n, (e, t) in errors.items()}
    variance = {n: v / c for n, (v, c) in var_sum.items() if c}
    result: dict[str, Any] = {"error": error, "variance": variance}
    if variance:
        result["variance_error_spearman"] = spearman([variance[n] for n in names],
                                                     [error[n] for n in names])
    y = torch.cat(targets)
    # directions need a linear classifier on the embedding (every built-in network has one)
    classifier = getattr(getattr(model, "classifier", None), "weight", None)
    if classifier is not None and len(y) and len({sum(len(t) for t in m) for m in mus}) == 1:
        stacked = torch.stack([torch.cat(m) for m in mus])  # (S, N, D)
        result["alignment"] = direction_alignment(stacked, y, classifier)
    return result


def analyze_run(run_dir: str | Path, echo: Any = print,
                results: dict[str, Any] | None = None,
                statistics: dict[tuple[str, int], dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Analyse a benchmark run; write analysis.json / .md / plots.

    ``results`` and ``statistics`` ((method, seed) -> :func:`model_statistics`) come in memory
    from the benchmark, which computes them while its models are loaded; ``dmrnet analyze``
    reads ``run_dir/results.json`` and the kept checkpoints instead. :func:`analysis_markdown`
    renders the returned dict."""
    run = Path(run_dir)
    res_path = run / "results.json"
    if results is None:
        if not res_path.is_file():
            raise DataError(f"{str(run)!r} holds no results.json; give a folder written by "
                            "dmrnet benchmark")
        try:
            results = json.loads(read_text(res_path, "results file"))
        except DataError:
            raise
        except ValueError as err:  # not JSON (a damaged or hand-edited file)
            raise DataError(f"{str(res_path)!r} is not valid JSON ({first_line(err)}); run the "
                            "benchmark again to rewrite it") from None
    cfg = results.get("config", {})
    if results.get("metric") != "accuracy":
        raise DataError("analysis covers classification runs scored by accuracy")
    per_method: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        # in memory where the benchmark has them; else from the run's kept checkpoint (runs
        # added by --resume next to earlier ones have only the new runs' in memory)
        known = (statistics or {}).get((r["method"], r["seed"]))
        if known is not None:
            stats = dict(known)
        else:
            ckpt = run / "checkpoints" / f"{r['method']}-seed{r['seed']}" / "best.ckpt"
            if not ckpt.is_file():  # not kept, or a method of many models (one per stage)
                continue
            module = load_module(ckpt)
            data = MultimodalDataModule(cfg.get("dataset", results["dataset"]),
                                        root=cfg.get("root"), modalities=cfg.get("modalities"),
                                        seed=r["seed"],
                                        dataset_kwargs=cfg.get("dataset_kwargs") or {})
            stats = model_statistics(module, map(data.on_after_batch_transfer,
                                                 data.test_dataloader()))
        stats["seed"] = r["seed"]
        per_method.setdefault(r["method"], []).append(stats)
    if statistics is None:
        _check_nothing_is_lost(run, per_method)
    summary: dict[str, Any] = {}
    for method, stats in per_method.items():
        entry: dict[str, Any] = {}
        rho = [s["variance_error_spearman"] for s in stats if "variance_error_spearman" in s]
        if rho:  # NaN where no seed has one (every subset with the same error, e.g. none)
            finite = [r for r in rho if not math.isnan(r)]
            entry["variance_error_spearman"] = float(np.mean(finite)) if finite else math.nan
        al = [s["alignment"] for s in stats if "alignment" in s]
        if al:
            entry["cos_between_subsets"] = float(np.mean([a["between_subsets"] for a in al]))
            entry["cos_to_class_weight"] = float(np.mean([a["to_class_weight"] for a in al]))
        summary[method] = entry
    analysis = {"per_method": per_method, "summary": summary,
                "methods": _contributions(results)}
    (run / "analysis.json").write_text(to_json(analysis))
    (run / "analysis.md").write_text(analysis_markdown(analysis))
    _plots(analysis, results["subsets"], run)
    echo(analysis_markdown(analysis))
    return analysis


def _check_nothing_is_lost(run: Path, per_method: dict[str, list[dict[str, Any]]]) -> None:
    """A :class:`DataError`, before anything is written, when the kept checkpoints cannot
    give an analysis (none left), or give less than the one already in ``run``."""
    where = f"{str(run / 'checkpoints')!r}"
    if not per_method:
        raise DataError(f"{where} holds no checkpoint of a run (deleted, or never kept), and the "
                        "analysis needs the trained models; the files in the run were left as "
                        "they are")
    try:
        before = json.loads((run / "analysis.json").read_text()).get("per_method", {})
    except (OSError, ValueError, AttributeError):
        return
    lost = sorted(set(before) - set(per_method))
    if lost:
        raise DataError(f"the checkpoints of {lost} are gone from {where}, so a new analysis "
                        "would lose what analysis.json holds of them; it was left as it is")


def _contributions(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each registered method's own part of the analysis (:meth:`Method.analysis`), by name."""
    out = {}
    for name in dict.fromkeys(r["method"] for r in results["runs"]):
        part = METHODS.get(name).analysis(results["runs"]) if name in METHODS else None
        if part is not None:
            out[name] = {"rows": part.rows, "markdown": part.markdown}
    return out


def _rho_words(rho: float) -> str:
    """A Spearman correlation for a legend; an undefined one (NaN) says why."""
    if math.isnan(rho):
        return "Spearman undefined: every subset has the same error or variance"
    return f"Spearman {rho:+.2f}"


def analysis_markdown(analysis: dict[str, Any]) -> str:
    """The analysis as a markdown section (also written to analysis.md)."""
    lines = ["## Analysis", "", "| method | Spearman(variance, error) over subsets | "
             "cos(mu, mu) between subsets | cos(mu, w_true class) |", "|---|---|---|---|"]
    for method, s in analysis["summary"].items():
        def f(key: str, s: dict = s) -> str:
            v = s.get(key)
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.3f}"

        lines.append(f"| {method} | {f('variance_error_spearman')} | "
                     f"{f('cos_between_subsets')} | {f('cos_to_class_weight')} |")
    for part in analysis.get("methods", {}).values():
        lines += ["", *part["markdown"]]
    lines += ["", "![variance vs error](analysis_variance_error.png)",
              "![alignment](analysis_alignment.png)"]
    return "\n".join(lines) + "\n"


def _plots(analysis: dict[str, Any], subsets: list[str], out: Path) -> None:
    for name, fig in analysis_figures(analysis, subsets).items():
        save_figure(fig, out / name)


def analysis_figures(analysis: dict[str, Any], subsets: list[str]) -> dict[str, Any]:
    """File name -> figure: variance against error per subset, and the direction alignment
    (legends under the plots, where they cover no data)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, stats in analysis["per_method"].items():
        xs, ys = [], []
        for s in stats:
            for n in subsets:
                if n in s["variance"]:
                    xs.append(s["variance"][n])
                    ys.append(s["error"][n])
        if xs:
            rho = analysis["summary"][method].get("variance_error_spearman", math.nan)
            ax.scatter(xs, ys, s=12, alpha=0.7, label=f"{method} ({_rho_words(rho)})")
    ax.set_xlabel("mean embedding variance of the subset")
    ax.set_ylabel("test error rate of the subset")
    ax.set_title("Premise: do high-variance subsets err more?")
    fig.tight_layout()
    legend_below(fig, ax, 2)
    figures = {"analysis_variance_error.png": fig}

    methods = [m for m, s in analysis["summary"].items() if "cos_between_subsets" in s]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(methods))
    # greys: the colours C0, C1, ... name methods in every other figure, not metrics
    ax.bar(x - 0.2, [analysis["summary"][m]["cos_between_subsets"] for m in methods], 0.4,
           color="0.35", label="cos(mu, mu) between subsets")
    ax.bar(x + 0.2, [analysis["summary"][m]["cos_to_class_weight"] for m in methods], 0.4,
           color="0.75", edgecolor="0.35", hatch="//", label="cos(mu, true-class weight)")
    ax.set_xticks(x, methods)
    ax.set_ylabel("mean cosine similarity")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_title("Intra-class direction alignment (same test samples)")
    fig.tight_layout()
    legend_below(fig, ax, 2)
    figures["analysis_alignment.png"] = fig
    return figures
