"""Boosters of the DMRNet family (combine with any member): unimodal auxiliary heads,
DGL-style gradient blocking from the fused head into the encoders, difficulty-aware subset
sampling; with gradient modulation (tests/test_modulation.py) on every member's CUDA op guard."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dmrnet.cli import main
from dmrnet.determinism import cuda_nondeterministic
from dmrnet.errors import ConfigError
from dmrnet.methods import build_method
from dmrnet.training import MultimodalModule

from .test_determinism import IMAGES, VECTORS, make_batch, run_step

NET = {"network": {"encoder_kwargs": {"out_features": 8, "hidden": [16]}, "embed_dim": 8}}


def build(method="baseline", shapes=VECTORS, **options):
    return build_method(method, modalities=list(shapes), input_shapes=shapes, num_classes=3,
                        method_kwargs=options, **({} if shapes is IMAGES else NET))


def batch(n=6):
    torch.manual_seed(0)
    x = {m: torch.randn(n, *s) for m, s in VECTORS.items()}
    avail = torch.tensor([[True, False, True], [False, True, False], [True, True, True]] * 2)
    return x, avail, torch.tensor([0, 1, 2, 0, 1, 2])


def test_unimodal_term_is_each_available_modalitys_own_loss():
    net, objective = build(unimodal_weight=0.5)
    x, avail, y = batch()
    out = net.train()(x, avail)
    assert out.modality_logits.shape == (6, 3, 3) and torch.equal(out.modality_mask, avail)
    ce = F.cross_entropy(out.modality_logits.reshape(18, 3), y.repeat_interleave(3),
                         reduction="none").view(6, 3)
    expected = 0.5 * (ce * avail).sum() / avail.sum()
    terms = objective(out, y, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(terms["unimodal"], expected)
    assert torch.allclose(terms["loss"], terms["task"] + terms["unimodal"])


def test_heads_serve_training_only():
    net, _ = build(unimodal_weight=0.5)
    plain, _ = build()
    x, avail, _ = batch()
    out = net.eval()(x, avail)
    assert out.modality_logits is None
    feats = net.encode(x, avail)
    assert torch.equal(out.logits, net.forward_head(feats, avail).logits)
    assert len(list(net.parameters())) == len(list(plain.parameters())) + 6  # 3 heads


def test_ensemble_adds_each_available_heads_log_probabilities_in_eval_only():
    net, _ = build(unimodal_weight=0.5, unimodal_ensemble=0.25)
    x, avail, _ = batch()
    feats = net.encode(x, avail)
    net.eval()
    voted = net.forward_head(feats, avail).logits
    net.ensemble_weight = 0.0
    fused = net.forward_head(feats, avail).logits
    uni = torch.stack([torch.log_softmax(net.unimodal[m](f), -1)
                       for m, f in zip(net.modalities, feats, strict=True)], 1)  # (B, M, K)
    expected = torch.log_softmax(fused, -1) + 0.25 * (uni * avail[..., None]).sum(1)
    assert torch.allclose(voted, expected, atol=1e-6)
    assert not torch.allclose(voted, torch.log_softmax(fused, -1))  # the heads did vote
    net.ensemble_weight = 0.25
    # an absent modality's head has no say: changing it leaves those rows as they were
    with torch.no_grad():
        net.unimodal["b"].bias.copy_(torch.tensor([3.0, -3.0, 0.0]))
    after = net.forward_head(feats, avail).logits
    without_b = ~avail[:, 1]
    assert torch.equal(after[without_b], voted[without_b])
    assert not torch.allclose(after[~without_b], voted[~without_b])
    # training outputs are the fused head's alone
    net.train()
    plain = net.forward_head(feats, avail).logits
    net.ensemble_weight = 0.0
    assert torch.equal(plain, net.forward_head(feats, avail).logits)


def test_detach_blocks_the_fused_gradient_from_the_encoders():
    x, avail, y = batch()
    for detach in (False, True):
        net, objective = build(unimodal_weight=1.0, unimodal_detach=detach)
        terms = objective(net.train()(x, avail), y, torch.zeros(6, dtype=torch.long))
        enc = [p for p in net.encoders.parameters()]
        task = torch.autograd.grad(terms["task"], enc, allow_unused=True, retain_graph=True)
        uni = torch.autograd.grad(terms["unimodal"], enc, allow_unused=True)
        reaches = any(g is not None and bool(g.abs().sum() > 0) for g in task)
        assert reaches is not detach  # the fused head trains the encoders unless detached
        assert any(g is not None and bool(g.abs().sum() > 0) for g in uni)


@pytest.mark.parametrize("method", ["baseline", "dmrnet", "dmrnet_no_hcr", "dmrnet_no_kl"])
def test_boosters_combine_with_every_member_and_keep_cuda_ops_deterministic(method):
    # the baseline's heads are OGM-GE's probes; the others' are trained unimodal heads
    options = {"unimodal_weight": 0.0 if method == "baseline" else 0.5,
               "unimodal_detach": method == "dmrnet", "ogm_alpha": 0.5,
               "unimodal_ensemble": 0.0 if method == "baseline" else 0.5}
    if method in ("dmrnet", "dmrnet_no_kl"):
        options["hcr_warmup_epochs"] = 1
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method=method, method_kwargs=options,
                              **NET)
    flagged = cuda_nondeterministic(lambda: run_step(module, make_batch(VECTORS)))
    assert flagged == {}, flagged
    conv = MultimodalModule(list(IMAGES), IMAGES, 2, method=method, method_kwargs=options,
                            network={"encoder": "resnet", "encoder_kwargs": {"width": 8},
                                     "embed_dim": 16})
    flagged = cuda_nondeterministic(lambda: run_step(conv, make_batch(IMAGES, classes=2)))
    assert flagged == {}, flagged  # feature maps are pooled for their heads


@pytest.mark.parametrize(("options", "kwargs", "message"), [
    ({"unimodal_detach": True}, {}, "unimodal_detach needs unimodal_weight > 0"),
    ({"unimodal_weight": -1}, {}, "unimodal_weight must be a finite number >= 0"),
    ({"unimodal_weight": 0.5},
     {"network": {"architecture": "dense"}, "training": {"metric": "miou"}},
     "unimodal_weight applies to classification"),
    ({"unimodal_ensemble": 0.5}, {}, "unimodal_ensemble needs unimodal_weight > 0"),
    ({"unimodal_ensemble": -1, "unimodal_weight": 1}, {},
     "unimodal_ensemble must be a finite number >= 0"),
])
def test_bad_booster_settings_are_named(options, kwargs, message):
    shapes = {"rgb": [3, 32, 32], "depth": [1, 32, 32]}
    with pytest.raises(ConfigError, match=message):
        MultimodalModule(list(shapes), shapes, 3, method="baseline", method_kwargs=options,
                         **kwargs)


def test_benchmark_trains_a_boosted_baseline(tmp_path):
    out = tmp_path / "b"
    assert main(["benchmark", "--methods", "baseline,dmrnet", "--option",
                 "baseline.unimodal_weight=1", "--modalities", "pix,mor", "--seeds", "0",
                 "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    logs = {p.parent.name: p.read_text() for p in (out / "logs").rglob("metrics.csv")}
    assert "train/unimodal" in logs["baseline-seed0"]
    assert "train/unimodal" not in logs["dmrnet-seed0"]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["options"] == {"baseline.unimodal_weight": 1}


def test_difficulty_sampling_weights_follow_validation_error():
    from dmrnet.methods.sampling import DifficultySampling
    names = ["a", "b", "a+b"]
    sampling = DifficultySampling(names, gamma=2.0, warmup=2)
    sampling.observe_errors({"a": 0.6, "b": 0.3})
    assert sampling.end_epoch(5) == {}  # not every subset measured yet
    sampling.observe_errors({"a": 0.6, "b": 0.3, "a+b": 0.3})
    assert sampling.end_epoch(0) == {}  # warm-up
    w = sampling.end_epoch(1)
    raw = torch.tensor([0.6, 0.3, 0.3]) / 0.4
    expected = raw.pow(2) / raw.pow(2).mean()
    assert torch.allclose(torch.tensor([w[n] for n in names]), expected.double().float())
    assert abs(sum(w.values()) / 3 - 1) < 1e-9 and w["a"] > w["b"] == w["a+b"]


def test_module_draws_with_the_new_weights_times_its_own_and_keeps_them_on_resume():
    kwargs = dict(method="baseline", training={"subset_weights": {"a": 0, "*": 1}},
                  method_kwargs={"difficulty_sampling": 1.0}, **NET)
    module = MultimodalModule(list(VECTORS), VECTORS, 3, **kwargs)
    names = module.space.names
    assert module.objective.observes_validation
    errors = {n: 0.1 + 0.1 * i for i, n in enumerate(names)}
    module.objective.end_validation(errors, lambda t: t)
    module._record(module.objective.end_train_epoch(0, lambda t: t))
    e = torch.tensor([errors[n] for n in names], dtype=torch.float64)
    factor = (e / e.mean()) / (e / e.mean()).mean()
    base = torch.tensor([0.0 if n == "a" else 1.0 for n in names], dtype=torch.float64)
    assert torch.allclose(module.sampler.weights.double(), (base * factor).float().double())
    assert module.selections[-1]["sampling"] and "rule" not in module.selections[-1]
    assert module.objective_state == {}  # a sampling choice leaves HCR's standing choice
    drawn = module.sampler.sample(torch.ones(4000, 3, dtype=torch.bool))
    counts = torch.bincount(module.space.indices_of(drawn), minlength=len(names)).double()
    assert counts[names.index("a")] == 0  # the run's own zero weight stays zero
    share = counts / counts.sum()
    assert torch.allclose(share, base * factor / (base * factor).sum(), atol=0.03)
    resumed = MultimodalModule(list(VECTORS), VECTORS, 3, **kwargs)
    resumed.objective.load_state_dict(module.objective.state_dict())
    resumed._record(resumed.objective.start())
    assert torch.equal(resumed.sampler.weights, module.sampler.weights)


@pytest.mark.parametrize(("options", "message"), [
    ({"difficulty_sampling": -1}, "difficulty_sampling must be a finite number >= 0"),
    ({"difficulty_sampling": 1, "difficulty_warmup": 0}, "difficulty_warmup must be a whole"),
])
def test_bad_sampling_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        MultimodalModule(list(VECTORS), VECTORS, 3, method="baseline", method_kwargs=options,
                         **NET)


def test_benchmark_records_difficulty_sampling(tmp_path):
    out = tmp_path / "d"
    assert main(["benchmark", "--methods", "baseline", "--option", "difficulty_sampling=2",
                 "--modalities", "pix,mor", "--seeds", "0", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert [s["epoch"] for s in run["selections"]] == [0, 1]
    assert set(run["selections"][0]["sampling"]) == {"pix", "mor", "pix+mor"}
    log = next((out / "logs" / "baseline-seed0").rglob("metrics.csv")).read_text()
    assert "subset_sampling/pix" in log


def test_options_are_composed_from_groups_and_boosters_and_read_by_type():
    """A member's options are its groups' and its boosters' (``compose_options``): each group
    checks its own values, a member without a group reads None for it, and a misspelt name
    is an error, never a silent 0."""
    from dmrnet.methods import compose_options, get_method
    from dmrnet.methods.dmrnet import HCROptions, KLOptions
    from dmrnet.methods.heads import HeadsOptions

    opts = get_method("dmrnet").options({"alpha": 0.01, "unimodal_weight": 2.0,
                                         "hcr_subsets": "a,b"})
    assert opts.group(KLOptions).alpha == 0.01 and opts.group(HeadsOptions).unimodal_weight == 2
    assert opts.hcr_subsets == ["a", "b"] and opts.group(HCROptions).hcr_subsets == ["a", "b"]
    assert get_method("baseline").options({}).group(KLOptions) is None
    assert get_method("full_only").option_names() == []
    with pytest.raises(AttributeError):
        opts.group(HeadsOptions).unimodal_weigth  # noqa: B018
    with pytest.raises(ConfigError, match="method 'baseline' has no option 'alpha'"):
        get_method("baseline").options({"alpha": 0.1})
    with pytest.raises(ConfigError, match="unimodal_ensemble needs unimodal_weight > 0"):
        get_method("dmrnet").options({"unimodal_ensemble": 0.5})  # the heads group's check
    with pytest.raises(ConfigError, match="option 'alpha' of KLOptions is also an option of"):
        compose_options("Twice", [KLOptions, KLOptions])
    with pytest.raises(ConfigError, match="no option 'alhpa' to give a default"):
        compose_options("Typo", [KLOptions], {"alhpa": 1.0})
    assert get_method("dmrnet_authors").options({}).hcr_reduction == "authors"  # a preset


def test_a_member_with_a_plain_options_dataclass_reads_its_groups_and_boosters_off():
    """A family member may give its own ``Options`` dataclass instead of composed ones: the
    family and the boosters read a group from it where it is one, their defaults otherwise."""
    from dmrnet.methods import ModelConfig
    from dmrnet.methods.dmrnet import DMRNetFamily, KLOptions

    class Plain(DMRNetFamily):  # not registered: built directly
        name = "plain_member"
        Options = KLOptions

    config = ModelConfig(method="plain_member", modalities=["a", "b"],
                         input_shapes={"a": (4,), "b": (3,)}, num_classes=3,
                         method_kwargs={"alpha": 0.5})
    network, objective = Plain().build(config)
    assert objective.kl.weight == 0.5 and objective.part_names == ["kl"]
    assert network.unimodal is None  # the heads booster reads its defaults: off
