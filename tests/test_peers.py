"""ShaSpec, MMANet, the analysis numbers and the paired comparisons."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmrnet.analysis import direction_alignment, spearman
from dmrnet.benchmark import paired_comparisons
from dmrnet.cli import main
from dmrnet.methods import build_method
from dmrnet.models.protocol import ModelOutput

SHAPES = {"a": (6,), "b": (4,), "c": (5,)}


def shaspec(**kw):
    return build_method("shaspec", modalities=list(SHAPES), input_shapes=SHAPES, num_classes=3,
                        encoder_kwargs={"out_features": 8, "hidden": [16]}, embed_dim=8, **kw)


def test_shaspec_fills_missing_shared_features_from_available_ones_only():
    model, _ = shaspec()
    model.eval()
    x = {m: torch.randn(4, *s) for m, s in SHAPES.items()}
    avail = torch.tensor([[True, False, True]] * 4)
    ref = model(x, avail).logits
    junk = dict(x, b=torch.randn(4, 4) * 50)  # the absent modality's values never matter
    assert torch.allclose(model(junk, avail).logits, ref)
    feats = model.encode(x)
    shared_mean = (feats[0][1] + feats[2][1]) / 2  # mean of the available shared features
    manual = [[f[0], f[1]] for f in feats]
    manual[1] = [torch.zeros_like(feats[1][0]), shared_mean]
    out = model.forward_head(manual, torch.ones(4, 3, dtype=torch.bool))
    assert torch.allclose(out.logits, ref, atol=1e-6)


def test_shaspec_auxiliary_losses_in_training_only():
    model, objective = shaspec(method_kwargs={"dao_weight": 0.5, "dco_weight": 0.1})
    x = {m: torch.randn(8, *s) for m, s in SHAPES.items()}
    avail = torch.ones(8, 3, dtype=torch.bool)
    out = model.train()(x, avail)
    terms = objective(out, torch.randint(0, 3, (8,)), model.space.indices_of(avail))
    assert {"task", "dao", "dco", "loss"} == set(terms)
    terms["loss"].backward()
    assert model.domain.weight.grad is not None
    assert model.eval()(x, avail).extra_losses is None


def test_mmanet_objective_distils_with_margin_weights_and_mines_weak_subsets():
    from dmrnet.methods.mmanet import MarginAwareDistillation, ModalityAwareRegularization
    from dmrnet.methods.objectives import MultimodalObjective

    obj = MultimodalObjective([MarginAwareDistillation(temperature=1.0, feature_weight=0.0),
                               ModalityAwareRegularization(["a", "b", "a+b"], weight=1.0,
                                                           momentum=0.0)])
    target = torch.tensor([0, 1])
    student = ModelOutput(logits=torch.tensor([[2.0, 0.0], [0.0, 0.0]]), mu=torch.zeros(2, 2),
                          z=torch.zeros(2, 2))
    teacher = ModelOutput(logits=torch.tensor([[2.0, 0.0], [0.0, 5.0]]), mu=torch.zeros(2, 2),
                          z=torch.zeros(2, 2))
    terms = obj(student, target, torch.tensor([0, 1]), teacher=teacher)
    p = teacher.logits.softmax(1)
    margin = torch.stack([p[0, 0] - p[0, 1], p[1, 1] - p[1, 0]])
    w = 1 - margin.abs()
    w = w / w.mean()
    kd = (p * (p.log() - student.logits.log_softmax(1))).sum(1)
    assert torch.allclose(terms["mad"], (w * kd).mean(), atol=1e-6)
    # subset "b" has the larger loss: its sample gets the extra MAR weight, "a"'s gets none
    ce = torch.nn.functional.cross_entropy(student.logits, target, reduction="none")
    extra = (ce / ce.mean() - 1).clamp_min(0)
    assert torch.allclose(terms["mar"], (extra * ce).mean().float(), atol=1e-6)
    assert list(terms) == ["task", "mad", "mar", "loss"]


def test_mmanet_objective_loads_the_moving_averages_kept_on_it_by_0_2():
    """dmrnet 0.2 kept MAR's averages on the objective itself (``objective.subset_loss``);
    they load into the MAR part now."""
    def build():
        network, objective = build_method("mmanet", modalities=["a", "b"],
                                          input_shapes={"a": (4,), "b": (3,)}, num_classes=3,
                                          embed_dim=8)
        return torch.nn.ModuleDict({"model": network, "objective": objective})

    state = build().state_dict()
    state["objective.mar.subset_loss"] = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64)
    state["objective.mar.subset_seen"] = torch.tensor([True, True, False])
    old = {k.replace("objective.mar.", "objective."): v for k, v in state.items()}
    assert "objective.subset_loss" in old and "objective.mar.subset_loss" not in old
    fresh = build()
    fresh.load_state_dict(old)  # strict: no key left over or missing
    assert torch.equal(fresh["objective"].mar.subset_loss, state["objective.mar.subset_loss"])
    assert torch.equal(fresh["objective"].mar.subset_seen, state["objective.mar.subset_seen"])


def test_every_peer_trains_and_evaluates_all_subsets_through_the_cli(tmp_path):
    out = tmp_path / "b"
    code = main(["benchmark", "--dataset", "synthetic", "--methods",
                 "baseline,shaspec,mmanet,dmrnet,dmrnet_no_hcr,dmrnet_no_kl,full_only",
                 "--seeds", "0", "--epochs", "2", "--out", str(out), "--no-progress",
                 "--option", "hcr_warmup_epochs=1"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == [
        "baseline", "shaspec", "mmanet", "dmrnet", "dmrnet_no_hcr", "dmrnet_no_kl", "full_only"]
    for run in res["runs"]:
        assert len(run["per_subset"]) == 7 and run["mean"] > 0.2  # chance is 1/8
    # MMANet's teacher is a full_only model: trained on complete inputs only
    from dmrnet.predict import load_module

    teacher = load_module(out / "checkpoints" / "mmanet-teacher-seed0" / "best.ckpt")
    assert teacher.hparams["method"] == "full_only"
    drawn = teacher.sampler.sample(torch.ones(500, 3, dtype=torch.bool))
    assert bool(drawn.all())
    student = load_module(out / "checkpoints" / "mmanet-seed0" / "best.ckpt")
    assert not any(k.startswith("_teacher") for k in student.state_dict())
    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis["summary"]) >= {"baseline", "dmrnet"}
    # DMRNet's own part: its chosen subsets against the same seed's run without HCR
    runs = {r["method"]: r for r in res["runs"]}
    rows = analysis["methods"]["dmrnet"]["rows"]
    assert [r["subset"] for r in rows] == runs["dmrnet"]["objective_state"]["hard_subsets"]
    for r in rows:
        assert r["accuracy_no_hcr"] == runs["dmrnet_no_hcr"]["per_subset"][r["subset"]]
        assert r["change"] == pytest.approx(r["accuracy"] - r["accuracy_no_hcr"])
    assert "baseline" not in analysis["methods"]  # nothing chosen, nothing to add
    assert "the hard subsets HCR chose, against dmrnet_no_hcr" in (out / "analysis.md").read_text()
    assert (out / "analysis_alignment.png").is_file()
    assert "Analysis" in (out / "report.md").read_text()


def test_spearman_and_alignment_on_hand_made_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2], [1, 2]))
    # two subsets, two samples, D = 2; classifier weights for 2 classes
    mus = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],     # subset 0
                        [[1.0, 1.0], [0.0, -1.0]]])   # subset 1
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = direction_alignment(mus, torch.tensor([0, 1]), weights)
    # sample 0: cos((1,0),(1,1)) = 1/sqrt2; sample 1: cos((0,1),(0,-1)) = -1
    assert out["between_subsets"] == pytest.approx((2 ** -0.5 - 1) / 2)
    # to the true class: s0: 1, 1; s1: 1/sqrt2, -1
    assert out["to_class_weight"] == pytest.approx((1 + 1 + 2 ** -0.5 - 1) / 4)


def test_paired_comparison_names_a_winner_only_beyond_seed_noise():
    def runs(method, means):
        return [{"method": method, "seed": s, "mean": m, "worst": 0.5}
                for s, m in enumerate(means)]

    clear = paired_comparisons(runs("a", [0.9, 0.91, 0.92]) + runs("b", [0.8, 0.81, 0.83]),
                               True)
    on_mean = next(c for c in clear if c["on"] == "mean")
    assert on_mean["verdict"] == "a better" and on_mean["ci95"][0] > 0
    noisy = paired_comparisons(runs("a", [0.9, 0.8, 0.85]) + runs("b", [0.85, 0.85, 0.85]),
                               True)
    assert next(c for c in noisy if c["on"] == "mean")["verdict"] == "no clear difference"
    lower = paired_comparisons(runs("a", [0.1, 0.1, 0.1]) + runs("b", [0.2, 0.21, 0.2]), False)
    assert next(c for c in lower if c["on"] == "mean")["verdict"] == "a better"
    one = paired_comparisons(runs("a", [0.9]) + runs("b", [0.1]), True)
    assert one[0]["verdict"] == "too few seeds (< 2)"
    # three differences of one sign: a bootstrap over seeds called it, Student's t does not
    same_sign = paired_comparisons(runs("a", [0.851, 0.86, 0.9]) + runs("b", [0.85] * 3), True)
    on_mean = next(c for c in same_sign if c["on"] == "mean")
    assert on_mean["verdict"] == "no clear difference" and on_mean["ci95"][0] < 0
