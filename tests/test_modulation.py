"""OGM-GE, the gradient-modulation booster: its coefficients (the paper's Eq. 10 for two
modalities), the confidences it measures, what it does to the encoders' gradients (and to
nothing else), its noise, and its place in training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.methods.modulation import GradientModulation
from dmrnet.training import MultimodalModule

from .test_boosters import NET, batch, build
from .test_determinism import VECTORS


def test_two_modalities_follow_the_papers_equation_10():
    ogm = GradientModulation(["audio", "video"], alpha=0.5)
    seen = torch.tensor([True, True])
    k = ogm.coefficients(torch.tensor([0.8, 0.4], dtype=torch.float64), seen)
    assert k[0] == pytest.approx(1 - math.tanh(0.5 * 2.0)) and k[1] == 1  # rho_a = 2
    k = ogm.coefficients(torch.tensor([0.3, 0.6], dtype=torch.float64), seen)
    assert k[0] == 1 and k[1] == pytest.approx(1 - math.tanh(0.5 * 2.0))
    k = ogm.coefficients(torch.tensor([0.5, 0.5], dtype=torch.float64), seen)
    assert k.tolist() == [1.0, 1.0]  # balanced: nothing is slowed


def test_many_modalities_slow_only_the_most_dominant_against_the_others_mean():
    ogm = GradientModulation(["a", "b", "c"], alpha=1.0)
    k = ogm.coefficients(torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64),
                         torch.tensor([True, True, True]))
    rho_a = 0.9 / ((0.6 + 0.3) / 2)  # 2.0; b's rho is 0.6 / 0.6 = 1: not above 1
    assert k.tolist() == pytest.approx([1 - math.tanh(rho_a), 1.0, 1.0])
    # a modality no sample had is not compared; with one seen, nothing is slowed
    k = ogm.coefficients(torch.tensor([0.9, 0.0, 0.3], dtype=torch.float64),
                         torch.tensor([True, False, True]))
    assert k.tolist() == pytest.approx([1 - math.tanh(3.0), 1.0, 1.0])
    k = ogm.coefficients(torch.tensor([0.9, 0.0, 0.0], dtype=torch.float64),
                         torch.tensor([True, False, False]))
    assert k.tolist() == [1.0, 1.0, 1.0]


def test_confidence_is_the_true_class_probability_over_samples_that_have_the_modality():
    ogm = GradientModulation(["a", "b"], alpha=1.0)
    logits = torch.randn(4, 2, 3)
    mask = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    y = torch.tensor([0, 2, 1, 1])
    ogm.observe_heads(logits, mask, y)
    p = logits.softmax(-1)[torch.arange(4), :, y]  # (B, M)
    assert torch.allclose(ogm.score_sum, (p * mask).sum(0).double())
    assert ogm.score_count.tolist() == [3.0, 3.0]


def gradients(net, objective, x, avail, y):
    net.zero_grad()
    objective(net.train()(x, avail), y, torch.zeros(len(y), dtype=torch.long))["loss"].backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_the_dominant_encoder_is_slowed_by_k_and_nothing_else_changes():
    torch.manual_seed(0)
    net, objective = build(ogm_alpha=0.8, ogm_noise=False)
    x, avail, y = batch()
    before = gradients(net, objective, x, avail, y)
    ogm = objective.modulation
    total, count = ogm.score_sum.clone(), ogm.score_count.clone()
    reduced = []
    logged = objective.adjust_gradients(net, 0, lambda t: reduced.append(t) or t)
    assert len(reduced) == 2  # confidences summed over processes before k is computed
    k = ogm.coefficients(total / count, count > 0)
    assert logged == {f"ogm_coefficient/{m}": pytest.approx(float(v))
                      for m, v in zip(net.modalities, k, strict=True)}
    assert sorted(k.tolist())[:2] == [pytest.approx(min(k.tolist())), 1.0]
    assert min(k.tolist()) < 1  # one modality dominates these untrained heads' confidences
    for name, p in net.named_parameters():
        if name not in before:
            continue
        factor = 1.0
        if name.startswith("encoders."):
            factor = float(k[net.modalities.index(name.split(".")[1])])
        assert torch.allclose(p.grad, before[name] * factor), name
    assert ogm.score_count.sum() == 0  # a new step measures afresh


def test_noise_matches_each_weights_gradient_spread_and_is_the_same_on_every_process():
    nets = [build(ogm_alpha=0.8) for _ in range(2)]
    nets[1][0].load_state_dict(nets[0][0].state_dict())
    nets[1][1].load_state_dict(nets[0][1].state_dict())  # the noise seed: one per run
    x, avail, y = batch()
    results = []
    for net, objective in nets:
        before = gradients(net, objective, x, avail, y)
        k = objective.adjust_gradients(net, 0, lambda t: t)
        results.append({n: p.grad.clone() for n, p in net.named_parameters() if n in before})
        for name, grad in results[-1].items():
            if not name.startswith("encoders."):
                assert torch.equal(grad, before[name]), name  # heads, fusion: untouched
            elif before[name].dim() < 2:  # biases and norms: scaled, no noise
                factor = k[f"ogm_coefficient/{name.split('.')[1]}"]
                assert torch.allclose(grad, before[name] * factor), name
            else:
                assert not torch.allclose(grad, before[name]), name
    w = next(n for n in results[0] if n.startswith("encoders.a") and results[0][n].dim() == 2)
    assert torch.equal(results[0][w], results[1][w])  # same seed and step: same noise
    assert nets[0][1].modulation.steps == 1
    # the next step draws new noise
    before = gradients(nets[0][0], nets[0][1], x, avail, y)
    nets[0][1].adjust_gradients(nets[0][0], 0, lambda t: t)
    assert not torch.equal(nets[0][0].get_parameter(w).grad, results[0][w])


def test_noise_is_as_large_as_the_gradient_spread():
    ogm = GradientModulation(["a"], alpha=1.0)
    enc = torch.nn.ModuleDict({"a": torch.nn.Linear(200, 200)})
    holder = torch.nn.Module()
    holder.encoders = enc
    enc["a"].weight.grad = torch.randn(200, 200) * 3.0
    enc["a"].bias.grad = torch.ones(200)
    original = enc["a"].weight.grad.clone()
    ogm.modulate(holder, 0, lambda t: t)
    noise = enc["a"].weight.grad - original  # one modality: k = 1
    assert noise.std().item() == pytest.approx(original.std().item(), rel=0.02)
    assert torch.equal(enc["a"].bias.grad, torch.ones(200))


def test_modulation_stops_after_its_epochs_and_restarts_where_it_was_on_resume():
    net, objective = build(ogm_alpha=0.8, ogm_epochs=2)
    x, avail, y = batch()
    before = gradients(net, objective, x, avail, y)
    assert objective.adjust_gradients(net, 2, lambda t: t) == {}
    assert all(torch.equal(p.grad, before[n]) for n, p in net.named_parameters()
               if n in before)
    state = objective.state_dict()
    assert {"modulation.seed", "modulation.steps"} <= set(state)  # saved with checkpoints
    assert "modulation.score_sum" not in state


def test_probes_measure_the_encoders_without_training_them():
    x, avail, y = batch()
    net, objective = build(ogm_alpha=0.8)
    terms = objective(net.train()(x, avail), y, torch.zeros(6, dtype=torch.long))
    assert "probe" in terms and "unimodal" not in terms
    grads = torch.autograd.grad(terms["probe"], list(net.encoders.parameters()),
                                allow_unused=True)
    assert all(g is None or bool(g.abs().sum() == 0) for g in grads)
    # with the unimodal-heads booster on, its heads give the confidences and train encoders
    net, objective = build(ogm_alpha=0.8, unimodal_weight=0.5)
    terms = objective(net.train()(x, avail), y, torch.zeros(6, dtype=torch.long))
    assert "unimodal" in terms and "probe" not in terms
    assert objective.modulation.score_count.sum() == avail.sum()


@pytest.mark.parametrize(("options", "kwargs", "message"), [
    ({"ogm_alpha": -1}, {}, "ogm_alpha must be a finite number >= 0"),
    ({"ogm_alpha": 1, "ogm_epochs": -2}, {}, "ogm_epochs must be a whole"),
    ({"ogm_alpha": 1, "ogm_noise": "yes"}, {}, "ogm_noise must be true or false"),
    ({"ogm_alpha": 0.5}, {"network": {"architecture": "dense"}, "training": {"metric": "miou"}},
     "ogm_alpha applies to classification"),
])
def test_bad_modulation_settings_are_named(options, kwargs, message):
    shapes = {"rgb": [3, 32, 32], "depth": [1, 32, 32]} if kwargs else VECTORS
    with pytest.raises(ConfigError, match=message):
        MultimodalModule(list(shapes), shapes, 3, method="baseline", method_kwargs=options,
                         **({} if kwargs else NET), **kwargs)


def test_training_modulates_between_backward_and_the_optimiser_step(tmp_path):
    out = tmp_path / "o"
    assert main(["benchmark", "--methods", "baseline", "--option", "ogm_alpha=0.8",
                 "--modalities", "pix,mor", "--seeds", "0", "--epochs", "2", "--out",
                 str(out), "--no-progress"]) == 0
    log = next((out / "logs" / "baseline-seed0").rglob("metrics.csv")).read_text()
    header, *rows = [line.split(",") for line in log.strip().splitlines()]
    ks = [float(r[header.index(f"train/ogm_coefficient/{m}")]) for r in rows
          for m in ("pix", "mor") if r[header.index(f"train/ogm_coefficient/{m}")]]
    assert len(ks) == 4 and min(ks) < 1 and all(0 < k <= 1 for k in ks)  # some encoder slowed
    assert "train/probe" in header
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["mean"] > 0.5


def test_module_methods_still_walk_a_modulated_model():
    # nn.Module.apply(fn) visits every submodule: a booster must not shadow it
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method="baseline",
                              method_kwargs={"ogm_alpha": 0.5}, **NET)
    seen = []
    module.apply(lambda m: seen.append(type(m).__name__))
    assert "GradientModulation" in seen
