from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from dmrnet.batch import BatchError
from dmrnet.errors import ConfigError
from dmrnet.methods import build_method
from dmrnet.methods.objectives import (
    HardCombinationRegularizer,
    KLRegularizer,
    MultimodalObjective,
    kl_divergence,
)
from dmrnet.models.late_fusion import ProbabilisticEmbedding
from dmrnet.subsets import SubsetSpace

from .conftest import random_batch

SHAPES = {"a": (5,), "b": (3,), "c": (4,)}


def make(method="dmrnet", **kw):
    return build_method(method, modalities=list(SHAPES), input_shapes=SHAPES, num_classes=4,
                        encoder_kwargs={"out_features": 8, "hidden": [16]}, embed_dim=6, **kw)


def test_kl_matches_torch_distributions_for_vectors_and_maps():
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    ref = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1).mean()
    assert torch.allclose(kl_divergence(mu, logvar), ref, atol=1e-6)
    mu, logvar = torch.randn(3, 4, 2, 5), torch.randn(3, 4, 2, 5)
    per = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    summed = per.sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(kl_divergence(mu, logvar, "sum"), summed, atol=1e-5)
    assert torch.allclose(
        kl_divergence(mu, logvar, "mean"), per.sum(dim=1).mean(dim=(1, 2)).mean(), atol=1e-6
    )
    assert float(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3))) == 0.0


def test_kl_regulariser_is_weighted_and_carries_gradient():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    reg = KLRegularizer(weight=1e-3)
    value = reg(mu, logvar)
    assert torch.allclose(value, 1e-3 * kl_divergence(mu, logvar))
    value.backward()
    assert mu.grad is not None and float(mu.grad.abs().sum()) > 0
    assert logvar.grad is not None and float(logvar.grad.abs().sum()) > 0


def test_embedding_samples_in_training_and_returns_mu_in_eval():
    emb = ProbabilisticEmbedding(10, 6)
    h = torch.randn(256, 10)
    emb.train()
    z1, mu1, lv1 = emb(h)
    z2, _, _ = emb(h)
    assert not torch.allclose(z1, mu1)  # a sample, not the mean
    assert not torch.allclose(z1, z2)  # a fresh sample each call
    # reparameterised: z = mu + eps * sigma, so (z - mu) / sigma is standard normal
    eps = ((z1 - mu1) / (0.5 * lv1).exp()).detach()
    assert abs(float(eps.mean())) < 0.1 and abs(float(eps.std()) - 1) < 0.1
    emb.eval()
    z, mu, logvar = emb(h)
    assert torch.equal(z, mu) and logvar is not None
    assert isinstance(emb.mu[1], torch.nn.BatchNorm1d)
    spatial = ProbabilisticEmbedding(10, 6, spatial=True).eval()
    z, mu, logvar = spatial(torch.randn(2, 10, 3, 3))
    assert z.shape == (2, 6, 3, 3) and torch.equal(z, mu)


def test_baseline_is_the_same_network_without_sampling_kl_or_hcr():
    model, objective = make("baseline")
    assert model.embedding.logvar is None and not model.embedding.sample
    assert objective.part("kl") is None and objective.part("hcr") is None
    x, avail = random_batch(SHAPES, 16)
    model.train()
    out = model(x, avail)
    assert out.logvar is None and torch.equal(out.z, out.mu)
    terms = objective(out, torch.randint(0, 4, (16,)), model.space.indices_of(avail))
    assert set(terms) == {"task", "loss"}
    dmr, dobj = make("dmrnet")
    # same architecture apart from the variance head
    base_keys = set(model.state_dict())
    extra = set(dmr.state_dict()) - base_keys
    assert extra and all(k.startswith("embedding.logvar") for k in extra)
    assert base_keys <= set(dmr.state_dict())
    out = dmr.train()(x, avail)
    terms = dobj(out, torch.randint(0, 4, (16,)), dmr.space.indices_of(avail))
    assert {"task", "kl", "hcr", "loss"} == set(terms)
    assert torch.allclose(terms["loss"], terms["task"] + terms["kl"] + terms["hcr"])


def test_missing_modalities_are_zeroed_at_feature_level():
    model, _ = make("baseline")
    model.eval()
    x, _ = random_batch(SHAPES, 4)
    avail = torch.tensor([[True, False, True]] * 4)
    ref = model(x, avail).logits
    x2 = dict(x)
    x2["b"] = torch.full_like(x["b"], float("nan"))  # junk in the absent modality
    assert torch.equal(model(x2, avail).logits, ref)
    x3 = dict(x)
    x3["b"] = torch.randn_like(x["b"]) * 100
    assert torch.equal(model(x3, avail).logits, ref)
    feats = model.encode(x)
    assert torch.equal(model.forward_head(feats, avail).logits, ref)


def test_input_level_missingness_option():
    model, _ = make("baseline", missing_at="input")
    model.eval()
    x, _ = random_batch(SHAPES, 4)
    avail = torch.tensor([[True, False, True]] * 4)
    zeroed = dict(x)
    zeroed["b"] = torch.zeros_like(x["b"])
    full = torch.ones(4, 3, dtype=torch.bool)
    # the encoder of b sees zeros: same as feeding zeros with b marked available
    assert torch.allclose(model(x, avail).logits, model(zeroed, full).logits, atol=1e-6)


def test_mean_fusion_option():
    model, _ = make("dmrnet", fusion="mean")
    model.eval()
    x, avail = random_batch(SHAPES, 6)
    assert model(x, avail).logits.shape == (6, 4)
    with pytest.raises(ConfigError, match="same feature size"):
        build_method("dmrnet", modalities=["a", "b"], input_shapes={"a": (3,), "b": (3,)},
                     num_classes=3, fusion="mean",
                     encoders={"a": {"out_features": 4}, "b": {"out_features": 5}})


def test_hcr_picks_highest_variance_subsets_after_warmup():
    space = SubsetSpace(["a", "b", "c"])
    hcr = HardCombinationRegularizer(space.names, beta=0.5, warmup_epochs=2, top_k=2,
                                     candidates="all")
    variance_of = {n: float(i + 1) for i, n in enumerate(space.names)}
    variance_of["b"] = 50.0
    variance_of["a+c"] = 40.0
    for epoch in range(2):
        idx = torch.arange(len(space)).repeat(3)
        var = torch.tensor([variance_of[space.name(int(i))] for i in idx])
        hcr.accumulate(idx, var + torch.randn(len(idx)) * 0.01)
        assert hcr.warming_up
        chosen = hcr.end_epoch(epoch)
        assert chosen == (epoch == 1)
    assert sorted(hcr.hard_names) == ["a+c", "b"]
    means = hcr.mean_variance()
    assert abs(means["b"] - 50.0) < 0.1
    # after warm-up: beta * (1/B) * sum of the hard samples' losses
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    idx = torch.tensor([space.index("b"), space.index("a"), space.index("a+c"), space.index("c")])
    assert torch.allclose(hcr(loss, idx), torch.tensor(0.5 * (1.0 + 3.0) / 4))
    before = hcr.variance_sum.clone()
    hcr.accumulate(idx, torch.ones(4))  # no more accumulation once active
    assert torch.equal(hcr.variance_sum, before)


def test_hcr_default_candidates_are_unimodal_and_loss_is_zero_in_warmup():
    space = SubsetSpace(["a", "b", "c"])
    hcr = HardCombinationRegularizer(space.names, beta=0.2, warmup_epochs=1)
    idx = torch.arange(len(space))
    var = torch.arange(1.0, len(space) + 1)  # the full subset has the largest variance
    assert float(hcr(torch.ones(7), idx)) == 0.0  # warming up
    hcr.accumulate(idx, var)
    hcr.end_epoch(0)
    assert hcr.hard_names == ["c"]  # the unimodal subset with the largest variance


def test_hcr_fixed_list_and_errors():
    names = SubsetSpace(["rgb", "depth", "ir"]).names
    hcr = HardCombinationRegularizer(names, hard_subsets=["rgb", "ir", "rgb+ir"], warmup_epochs=0)
    assert hcr.select() == ["rgb", "ir", "rgb+ir"]
    with pytest.raises(ConfigError, match="'ir\\+rgb' is not a subset name"):
        HardCombinationRegularizer(names, hard_subsets=["ir+rgb"])
    with pytest.raises(ConfigError, match="top_k must be in 1..3"):
        HardCombinationRegularizer(names, top_k=4)
    with pytest.raises(ConfigError, match="warm-up epoch"):
        HardCombinationRegularizer(names, warmup_epochs=0)


def test_hcr_state_survives_state_dict_roundtrip():
    names = SubsetSpace(["a", "b"]).names
    hcr = HardCombinationRegularizer(names, warmup_epochs=1)
    hcr.accumulate(torch.tensor([0, 1, 1]), torch.tensor([1.0, 5.0, 7.0]))
    hcr.end_epoch(0)
    other = HardCombinationRegularizer(names, warmup_epochs=1)
    other.load_state_dict(hcr.state_dict())
    assert other.hard_names == ["b"] and not other.warming_up


def test_objective_hcr_uses_per_sample_task_loss():
    kl = KLRegularizer(0.0)
    names = SubsetSpace(["a", "b"]).names
    hcr = HardCombinationRegularizer(names, beta=1.0, hard_subsets=["a"], warmup_epochs=0)
    hcr.select()
    obj = MultimodalObjective([kl, hcr])
    from dmrnet.models.protocol import ModelOutput

    logits = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 0])
    out = ModelOutput(logits=logits, mu=torch.zeros(4, 2), logvar=torch.zeros(4, 2))
    idx = torch.tensor([0, 0, 1, 2])
    terms = obj(out, target, idx)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(terms["hcr"], ce[:2].sum() / 4)
    assert torch.allclose(terms["loss"], ce.mean() + ce[:2].sum() / 4)  # KL weight 0: no term
    assert "kl" not in terms


def test_model_input_errors():
    model, _ = make()
    x, avail = random_batch(SHAPES, 4)
    with pytest.raises(BatchError, match="modality 'd' is not one of"):
        model({**x, "d": torch.zeros(4, 1)}, avail)
    with pytest.raises(BatchError, match="modality 'a' has shape \\(6,\\) per sample, expected"):
        model({**x, "a": torch.zeros(4, 6)}, avail)
    with pytest.raises(BatchError, match="modality 'b' is torch.float64 but the model"):
        model({**x, "b": x["b"].double()}, avail)
    with pytest.raises(BatchError, match="modality 'a' is torch.int64"):
        model({**x, "a": torch.zeros(4, 5, dtype=torch.long)}, avail)
    x["c"][0, 0] = math.inf
    with pytest.raises(BatchError, match="NaN or inf"):
        model(x, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="unknown method 'dmrnett'"):
        make("dmrnett")
    with pytest.raises(ConfigError, match="method 'baseline' has no option 'beta'"):
        make("baseline", method_kwargs={"beta": 0.2})
    with pytest.raises(ConfigError, match="encoder given for modality 'z'"):
        make(encoders={"z": {}})
