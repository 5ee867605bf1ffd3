"""The benchmark's pictures (issue 13): the per-subset plot shows small differences (error on
a log scale, difference to the baseline), the robustness profile has a point per subset size
and method, and no legend covers a plot."""

from __future__ import annotations

import numpy as np
import pytest

from dmrnet.analysis import analysis_figures
from dmrnet.benchmark import gap_to_reference, summarize_runs
from dmrnet.report import (
    log_ticks,
    per_subset_figure,
    profile_figure,
    reference_method,
    robustness_profile,
    save_figure,
)

SUBSETS = ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]


def fake_results(methods=("baseline", "dmrnet", "dedicated"), seeds=(0, 1, 2)) -> dict:
    """Accuracies near 0.97-0.99, where a linear axis from 0.7 hides the differences."""
    rng = np.random.default_rng(0)
    runs = []
    for i, m in enumerate(methods):
        for s in seeds:
            per = {sub: float(0.97 + 0.005 * i + 0.003 * sub.count("+") + rng.normal(0, 0.001))
                   for sub in SUBSETS}
            runs.append({"method": m, "seed": s, "per_subset": per,
                         "mean": float(np.mean(list(per.values()))),
                         "worst": min(per.values()), "train_seconds": 1.0})
    roles = {"baseline": "baseline", "reference": "dedicated"}
    results = {"dataset": "toy", "modalities": ["a", "b", "c"], "subsets": SUBSETS,
               "metric": "accuracy", "higher_is_better": True, "runs": runs, "roles": roles,
               "summary": summarize_runs(runs, True),
               "gap_to_reference": gap_to_reference(runs, True, roles)}
    return results


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def legends_cover_nothing(fig) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "the figure has no legend"
    return all(not _overlaps(leg.get_window_extent(renderer), ax.get_window_extent(renderer))
               for leg in legends for ax in fig.axes)


def test_per_subset_plot_shows_small_differences_and_its_legend_covers_nothing(tmp_path):
    results = fake_results()
    fig = per_subset_figure(results)
    left, right = fig.axes
    assert left.get_xscale() == "log"  # errors 0.01 and 0.03: a factor of 3 apart
    lo, hi = left.get_xlim()
    assert 0.005 < lo < 0.014 and hi < 0.1  # scaled to the errors (0.014-0.03), not [0, 1]
    assert "baseline" in right.get_xlabel() and "points" in right.get_xlabel()
    # the right panel's markers are the per-subset differences to the baseline, in points
    diffs = [x for line in right.lines for x in line.get_xdata() if len(line.get_xdata()) == 7]
    assert max(abs(d) for d in diffs) == pytest.approx(1.0, abs=0.5)  # dedicated: +1 point
    assert legends_cover_nothing(fig)
    save_figure(fig, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_robustness_profile_numbers_and_picture(tmp_path):
    results = fake_results()
    profile = robustness_profile(results)
    assert list(profile) == ["baseline", "dmrnet", "dedicated"]
    assert list(profile["baseline"]) == ["1", "2", "3"]
    runs = [r for r in results["runs"] if r["method"] == "dmrnet"]
    singles = [np.mean([r["per_subset"][s] for s in ("a", "b", "c")]) for r in runs]
    assert profile["dmrnet"]["1"]["mean"] == pytest.approx(np.mean(singles))
    assert profile["dmrnet"]["1"]["mean_std"] == pytest.approx(np.std(singles))
    worst = [min(r["per_subset"][s] for s in ("a+b", "a+c", "b+c")) for r in runs]
    assert profile["dmrnet"]["2"]["worst"] == pytest.approx(np.mean(worst))
    fig = profile_figure(results)
    ax = fig.axes[0]
    assert len(ax.lines) == 6  # mean and worst per method
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]
    assert legends_cover_nothing(fig)
    save_figure(fig, tmp_path / "profile.png")


def test_one_method_gets_the_error_panel_alone():
    results = fake_results(methods=("baseline",))
    results["gap_to_reference"] = None
    fig = per_subset_figure(results)
    assert len(fig.axes) == 1 and legends_cover_nothing(fig)


def test_reference_is_the_baseline_role_else_the_first_method():
    results = fake_results(methods=("dmrnet", "baseline"))
    assert reference_method(results) == "baseline"
    results["roles"] = {}
    assert reference_method(results) == "dmrnet"


def test_analysis_legends_cover_nothing():
    analysis = {
        "per_method": {"dmrnet": [{"variance": {"a": 0.1, "b": 0.2}, "error": {"a": 0.3,
                                                                               "b": 0.1}}]},
        "summary": {"dmrnet": {"variance_error_spearman": -1.0, "cos_between_subsets": 0.9,
                               "cos_to_class_weight": 0.95},
                    "baseline": {"cos_between_subsets": 0.92, "cos_to_class_weight": 0.97}},
    }
    figures = analysis_figures(analysis, ["a", "b"])
    for fig in figures.values():
        assert legends_cover_nothing(fig)
    # issue 26: the alignment bars have a y label and are not drawn in the method colours
    ax = figures["analysis_alignment.png"].axes[0]
    assert ax.get_ylabel()
    from matplotlib.colors import to_rgba

    methods = {to_rgba(f"C{i}") for i in range(10)}
    assert not {p.get_facecolor() for p in ax.patches} & methods


def test_an_undefined_correlation_is_named_not_printed_as_nan():
    """A run with no error on any subset has no Spearman correlation: its legend says why
    (it printed '+nan'), and the markdown shows a dash."""
    from dmrnet.analysis import analysis_markdown

    analysis = {"per_method": {"dmrnet": [{"variance": {"a": 0.1, "b": 0.2, "a+b": 0.05},
                                           "error": {"a": 0.0, "b": 0.0, "a+b": 0.0}}]},
                "summary": {"dmrnet": {"variance_error_spearman": float("nan")}}}
    fig = analysis_figures(analysis, ["a", "b", "a+b"])["analysis_variance_error.png"]
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert labels == ["dmrnet (Spearman undefined: every subset has the same error or "
                      "variance)"]
    assert "nan" not in analysis_markdown(analysis).lower()


def test_a_zero_error_is_marked_where_the_log_axis_draws_it():
    """Issue 26: a perfect subset was drawn at an arbitrary floor with nothing to say so; now
    a hollow marker on a dotted line whose legend entry names the floor."""
    results = fake_results(methods=("baseline",))
    for r in results["runs"]:
        r["per_subset"]["a+b+c"] = 1.0  # no error on the full set
    results["summary"] = summarize_runs(results["runs"], True)
    results["gap_to_reference"] = None
    ax = per_subset_figure(results).axes[0]
    floor = [line for line in ax.lines if "error 0" in line.get_label()]
    assert len(floor) == 1 and floor[0].get_linestyle() == ":"
    at = floor[0].get_xdata()[0]
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
    assert hollow and all(x == at for line in hollow for x in line.get_xdata())
    assert f"drawn at {at:.2g}" in floor[0].get_label()
    plain = per_subset_figure(fake_results(methods=("baseline",)) | {"gap_to_reference": None})
    assert not [line for line in plain.axes[0].lines if "error 0" in line.get_label()]


def _tick_labels(ax) -> list:
    """The drawn, non-empty x tick labels inside the axis (major and minor)."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    return [(t.get_text(), t.get_window_extent(renderer))
            for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
            if t.get_visible() and t.get_text().strip() and lo <= t.get_position()[0] <= hi]


@pytest.mark.parametrize("errors", [(0.4, 0.55), (0.01, 0.03), (0.001, 0.5), (0.05, 0.12)])
def test_the_log_axis_labels_do_not_run_into_each_other(errors):
    """Issue 26: on a short run's narrow range of errors matplotlib labelled the minor ticks
    in scientific notation (5.2x10^-1 beside 5.4x10^-1), and the labels overlapped."""
    results = fake_results(methods=("baseline", "dmrnet"))
    rng = np.random.default_rng(1)
    for r in results["runs"]:
        r["per_subset"] = {s: 1 - float(rng.uniform(*errors)) for s in r["per_subset"]}
    results["summary"] = summarize_runs(results["runs"], True)
    labels = _tick_labels(per_subset_figure(results).axes[0])
    assert len(labels) >= 3, labels
    assert not [(a[0], b[0]) for i, a in enumerate(labels) for b in labels[i + 1:]
                if _overlaps(a[1], b[1])]
    assert all(float(text) > 0 for text, _ in labels)  # plain decimals, read as they are


def test_log_ticks_are_round_and_few():
    assert log_ticks(0.001, 0.5) == [0.001, 0.01, 0.1]
    assert log_ticks(0.4, 0.55) == [0.4, 0.45, 0.5, 0.55]
    assert log_ticks(0.011, 0.029) == [0.015, 0.02, 0.025]
    assert len(log_ticks(1e-9, 1.0)) <= 6
