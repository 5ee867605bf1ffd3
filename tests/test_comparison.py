"""Verdicts that account for seed and test-sample noise (:mod:`dmrnet.comparison`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmrnet.benchmark import BenchmarkConfig, load_samples, run_benchmark
from dmrnet.comparison import difference, reducer, shared_test_noise, t975
from dmrnet.metrics import TASK_METRICS


def test_student_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(31) == pytest.approx(2.0395, abs=1e-3)
    assert t975(100) == pytest.approx(1.9840, abs=1e-3)


@pytest.mark.parametrize("name", sorted(TASK_METRICS))
def test_per_sample_rows_add_up_to_the_metric(name):
    """Summing every test sample's rows gives what the torchmetrics metric computes, so a
    bootstrap resample's value is the metric of that resample."""
    metric = TASK_METRICS[name]
    k = 2 if name == "acer" else 4
    g = torch.Generator().manual_seed(0)
    shape = (12, k, 5, 6) if name == "miou" else (12, k)
    logits = torch.randn(*shape, generator=g)
    target = torch.randint(0, k, (12, 5, 6) if name == "miou" else (12,), generator=g)
    tm = metric.factory(k)
    tm.update(logits, target)
    expected = tm.compute()
    expected = float(expected[name] if isinstance(expected, dict) else expected)
    rows = metric.rows(logits, target, k).double().numpy()
    assert rows.shape[0] == 12
    got = float(metric.value(rows.sum(axis=0), np.array(12.0)))
    assert got == pytest.approx(expected, abs=1e-6)
    # half the samples, twice each: a resample's value is the metric of those samples
    tm.reset()
    tm.update(logits[:6], target[:6])
    half = tm.compute()
    half = float(half[name] if isinstance(half, dict) else half)
    weights = np.r_[np.full(6, 2.0), np.zeros(6)]
    assert float(metric.value(weights @ rows, np.array(12.0))) == pytest.approx(half, abs=1e-6)


def _null(rng: np.random.Generator, seeds: int, n_test: int, shared_test: bool):
    """Two identical methods: per seed a model's accuracy on its test samples is Bernoulli
    noise around the same 0.7, with a seed effect; returns values and per-sample rows."""
    test_effect = rng.normal(0, 0.05, n_test)
    values, samples = {"a": [], "b": []}, {"a": [], "b": []}
    for _ in range(seeds):
        if not shared_test:
            test_effect = rng.normal(0, 0.05, n_test)
        for m in ("a", "b"):
            p = np.clip(0.7 + rng.normal(0, 0.02) + test_effect, 0, 1)
            correct = (rng.random(n_test) < p).astype(float)[:, None]
            samples[m].append({"x": {"ids": np.arange(n_test), "rows": correct}})
            values[m].append(float(correct.mean()))
    return values, samples


@pytest.mark.parametrize("shared_test", [False, True])
def test_identical_methods_are_called_different_at_most_5_percent_of_the_time(shared_test):
    """The A/A property on simulated runs (``benchmarks/aa_check.py`` measures it on trained
    ones): 400 repetitions with 3 seeds; the former bootstrap over seeds called about a
    quarter of them."""
    rng = np.random.default_rng(1)
    value = TASK_METRICS["accuracy"].value
    new = old = 0
    reps = 400
    for rep in range(reps):
        values, samples = _null(rng, 3, 60, shared_test)
        shared = shared_test_noise(list(zip(samples["a"], samples["b"], strict=True)), value,
                                   reducer("mean", True), resamples=300, seed=rep)
        new += difference(values["a"], values["b"], shared).clear
        d = np.subtract(values["a"], values["b"])
        boot = d[rng.integers(0, 3, (1000, 3))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        old += bool(lo > 0 or hi < 0)
    assert new / reps <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps)
    assert old / reps > 0.15  # what the former procedure did on the same runs


def test_a_real_difference_is_found_and_shared_test_noise_widens_the_interval():
    seeds_only = difference([0.80, 0.81, 0.82], [0.70, 0.72, 0.71])
    assert seeds_only.clear and seeds_only.lo > 0 and seeds_only.test_sd is None
    both = difference([0.80, 0.81, 0.82], [0.70, 0.72, 0.71], 0.03**2)
    assert both.test_sd == pytest.approx(0.03)
    assert (both.hi - both.lo) > (seeds_only.hi - seeds_only.lo)
    assert not difference([0.9], [0.1]).clear  # one seed: no verdict


def _fixed(rng: np.random.Generator, n_test: int, p_a: float, p_b: float):
    """Deterministic models on one fixed test set: every seed gives the same predictions."""
    a = (rng.random(n_test) < p_a).astype(float)[:, None]
    b = (rng.random(n_test) < p_b).astype(float)[:, None]
    return {"x": {"ids": np.arange(n_test), "rows": a}}, {"x": {"ids": np.arange(n_test),
                                                               "rows": b}}


def test_one_fixed_test_set_counts_its_sampling_noise_once():
    """Identical per-seed differences (no seed spread) on one shared test set: the test
    samples' noise is all there is, and the shared part is each seed's whole variance; on
    independent test sets of the same size it is about 0 (the seed spread holds it)."""
    rng = np.random.default_rng(0)
    value, mean = TASK_METRICS["accuracy"].value, reducer("mean", True)
    a, b = _fixed(rng, 200, 0.72, 0.70)
    shared = shared_test_noise([(a, b)] * 3, value, mean, resamples=1000)
    single = shared_test_noise([(a, b), _fixed(rng, 200, 0.72, 0.70)], value, mean,
                               resamples=1000)
    rows = a["x"]["rows"][:, 0] - b["x"]["rows"][:, 0]
    assert shared == pytest.approx(rows.var() / 200, rel=0.15)  # the paired difference's
    assert single < 0.3 * shared
    acc_a, acc_b = float(a["x"]["rows"].mean()), float(b["x"]["rows"].mean())
    assert not difference([acc_a] * 3, [acc_b] * 3, shared).clear  # 2 points on 200 samples
    assert difference([acc_a] * 3, [acc_b] * 3).clear  # what seeds alone would have said


def test_benchmark_records_test_samples_and_uses_them(tmp_path):
    results = run_benchmark(BenchmarkConfig(
        out=str(tmp_path / "r"), dataset="synthetic", methods=["baseline", "dmrnet"],
        seeds=[0, 1], epochs=1, progress=False), echo=lambda _: None)
    samples = load_samples(tmp_path / "r", results["runs"])
    assert set(samples) == {(m, s) for m in ("baseline", "dmrnet") for s in (0, 1)}
    value = TASK_METRICS["accuracy"].value
    for run in results["runs"]:
        got = samples[(run["method"], run["seed"])]
        assert set(got) == set(results["subsets"])
        for subset, s in got.items():  # every test sample once: the reported accuracy
            ones = np.ones(len(s["ids"]))
            assert float(value(ones @ s["rows"], ones.sum())) == pytest.approx(
                run["per_subset"][subset], abs=1e-6)
    comparison = results["comparisons"][0]
    # each seed draws its own synthetic test set: the seed spread holds the test-sample noise
    assert comparison["noise"] == "seeds and test samples" and comparison["test_se"] is not None
    assert comparison["resolution"] == pytest.approx(
        (comparison["ci95"][1] - comparison["ci95"][0]) / 2)


def test_compare_runs_across_folders_gives_the_benchmarks_own_verdicts(tmp_path, capsys):
    """``scripts/compare_runs.py A:baseline B:full_only``, with full_only trained in a folder
    of its own, prints the row the benchmark gives when both train in one (CPU runs of a seed
    are the same in either folder)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import compare_runs
    finally:
        sys.path.pop(0)
    quick = dict(dataset="mfeat", modalities=["fac", "mor"], seeds=[0, 1], epochs=1,
                 progress=False)
    both = run_benchmark(BenchmarkConfig(out=str(tmp_path / "both"),
                                         methods=["baseline", "full_only"], **quick),
                         echo=lambda _: None)
    run_benchmark(BenchmarkConfig(out=str(tmp_path / "one"), methods=["full_only"], **quick),
                  echo=lambda _: None)
    capsys.readouterr()
    assert compare_runs.main([f"{tmp_path / 'both'}:baseline",
                              f"{tmp_path / 'one'}:full_only"]) == 0
    printed = capsys.readouterr().out
    for row in both["comparisons"]:
        lo, hi = -row["ci95"][1], -row["ci95"][0]
        assert f"| {row['on']} | 2 | {-row['diff']:+.4f} | [{lo:+.4f}, {hi:+.4f}] |" in printed
    assert json.loads((tmp_path / "one" / "results.json").read_text())["runs"]
    run_benchmark(BenchmarkConfig(out=str(tmp_path / "two"), methods=["full_only"], threads=2,
                                  **quick), echo=lambda _: None)
    capsys.readouterr()
    compare_runs.main([f"{tmp_path / 'both'}:baseline", f"{tmp_path / 'two'}:full_only"])
    assert "trained seeds [0, 1] with other CPU thread counts" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no runs of 'dmrnet'"):
        compare_runs.main([f"{tmp_path / 'both'}:baseline", f"{tmp_path / 'one'}:dmrnet"])
