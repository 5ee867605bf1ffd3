"""Boosters of the DMRNet family (combine with any member): unimodal auxiliary heads, and
DGL-style gradient blocking from the fused head into the encoders."""

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

NET = {"encoder_kwargs": {"out_features": 8, "hidden": [16]}, "embed_dim": 8}


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
    options = {"unimodal_weight": 0.5, "unimodal_detach": method == "dmrnet"}
    if method in ("dmrnet", "dmrnet_no_kl"):
        options["hcr_warmup_epochs"] = 1
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method=method, method_kwargs=options,
                              **NET)
    flagged = cuda_nondeterministic(lambda: run_step(module, make_batch(VECTORS)))
    assert flagged == {}, flagged
    conv = MultimodalModule(list(IMAGES), IMAGES, 2, method=method, method_kwargs=options,
                            encoder="resnet", encoder_kwargs={"width": 8}, embed_dim=16)
    flagged = cuda_nondeterministic(lambda: run_step(conv, make_batch(IMAGES, classes=2)))
    assert flagged == {}, flagged  # feature maps are pooled for their heads


@pytest.mark.parametrize(("options", "kwargs", "message"), [
    ({"unimodal_detach": True}, {}, "unimodal_detach needs unimodal_weight > 0"),
    ({"unimodal_weight": -1}, {}, "unimodal_weight must be a finite number >= 0"),
    ({"unimodal_weight": 0.5}, {"architecture": "dense", "metric": "miou"},
     "unimodal_weight applies to classification"),
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
