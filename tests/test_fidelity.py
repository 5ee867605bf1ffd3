"""DMRNet as written (the paper, SPEC) and as the authors' code runs it (``dmrnet_authors``),
checked against formulas on small tensors, not against a copy of either implementation.

The authors' CREMA-D script (``main.py`` of their public code) computes its HCR term as
``sum(ce * ((1 - p[:, 0]) * p[:, 1])) / B`` where ``p`` has shape (B, 2, 1, 1, 1): the
indicator is (B, 1, 1, 1) and broadcasts with the (B,) losses to (B, 1, 1, B), so the term is
n_hard x the batch mean loss. Their variance statistic is a mean per batch, summed over an
epoch, divided by (batches - 1) and summed over epochs 0-5; they choose after epoch 5.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmrnet.errors import ConfigError
from dmrnet.methods import build_method
from dmrnet.methods.dmrnet import AuthorsOptions, DMRNetOptions
from dmrnet.methods.objectives import HardCombinationRegularizer

NAMES = ["a", "b", "a+b"]


def _active(reduction: str, hard: list[str] | None = None, **kw) -> HardCombinationRegularizer:
    hcr = HardCombinationRegularizer(NAMES, beta=0.2, warmup_epochs=0,
                                     hard_subsets=hard or ["b"], reduction=reduction, **kw)
    hcr.select()
    return hcr


def test_paper_reduction_is_beta_times_the_hard_samples_loss_over_b():
    loss = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 0.25])
    subset = torch.tensor([0, 1, 2, 1, 0, 2])  # two samples of "b"
    expected = 0.2 * (1.0 + 4.0) / 6
    assert float(_active("paper")(loss, subset)) == pytest.approx(expected)


def test_authors_reduction_is_n_hard_times_the_batch_mean_loss():
    loss = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 0.25])
    subset = torch.tensor([0, 1, 2, 1, 0, 2])
    expected = 0.2 * 2 * loss.mean().item()  # n_hard = 2 samples of "b"
    assert float(_active("authors")(loss, subset)) == pytest.approx(expected)
    # the two differ on this batch, so either test fails if the broadcast moves
    assert expected != pytest.approx(0.2 * (1.0 + 4.0) / 6)
    # no hard sample in the batch: zero in both
    assert float(_active("authors")(loss, torch.zeros(6, dtype=torch.long))) == 0.0


def test_authors_reduction_scales_every_samples_gradient_alike():
    """(1 + beta n_hard) x the mean loss: a hard sample gets no more weight than another."""
    logits = torch.randn(6, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    subset = torch.tensor([1, 1, 0, 2, 0, 2])
    ce = nn.functional.cross_entropy(logits, target, reduction="none")
    total = ce.mean() + _active("authors")(ce, subset)
    (grad,) = torch.autograd.grad(total, logits, retain_graph=True)
    (plain,) = torch.autograd.grad(ce.mean(), logits)
    assert torch.allclose(grad, plain * (1 + 0.2 * 2), atol=1e-6)


def _warm(statistic: str, epochs: list[list[tuple[list[int], list[float]]]]
          ) -> HardCombinationRegularizer:
    """An HCR whose warm-up saw ``epochs``: lists of batches (subset indices, variances)."""
    hcr = HardCombinationRegularizer(NAMES, beta=0.2, warmup_epochs=len(epochs),
                                     statistic=statistic)
    for e, batches in enumerate(epochs):
        for subsets, variances in batches:
            hcr.accumulate(torch.tensor(subsets), torch.tensor(variances, dtype=torch.float64))
        hcr.end_warmup_epoch(lambda t: t)
        assert hcr.due(e) == (e == len(epochs) - 1)
        if hcr.due(e):
            hcr.select()
    return hcr


def test_authors_statistic_is_the_sum_of_batch_means_over_batches_minus_one():
    # epoch 0: batch means a = 1 and 3, b = 2 and 2; epoch 1: a = 5, 1, 3; b = 1, 1, 1
    epochs = [[([0, 0, 1], [0.5, 1.5, 2.0]), ([0, 1, 1], [3.0, 1.0, 3.0])],
              [([0, 1], [5.0, 1.0]), ([0, 1], [1.0, 1.0]), ([0, 1], [3.0, 1.0])]]
    hcr = _warm("authors", epochs)
    stat = hcr.mean_variance()
    assert stat["a"] == pytest.approx((1 + 3) / 1 + (5 + 1 + 3) / 2)
    assert stat["b"] == pytest.approx((2 + 2) / 1 + (1 + 1 + 1) / 2)
    assert hcr.hard_names == ["a"]
    # the pooled statistic of the same samples: a 2.33, b 1.5; the same choice here
    assert _warm("pooled", epochs).hard_names == ["a"]


def test_the_two_statistics_choose_differently_on_constructed_batches():
    """Many small-variance samples of "a" in one batch and one large one in another: the
    pooled mean is low, the mean of batch means is high."""
    epochs = [[([0, 0, 0, 0, 0, 1], [0.1] * 5 + [1.0]), ([0, 1], [3.0, 1.0])]]
    assert _warm("pooled", epochs).hard_names == ["b"]  # a: 0.583, b: 1.0
    assert _warm("authors", epochs).hard_names == ["a"]  # a: 0.1 + 3.0, b: 1.0 + 1.0


def test_a_batch_without_a_subset_makes_it_nan_and_a_comparison_with_nan_is_false():
    no_a = [[([0, 1], [9.0, 1.0]), ([1, 2], [1.0, 1.0])]]  # batch 2 has no "a"
    hcr = _warm("authors", no_a)
    assert math.isnan(hcr.mean_variance()["a"])
    assert hcr.hard_names == ["b"]  # "a > b" is false: the second modality
    no_b = [[([0, 1], [1.0, 9.0]), ([0, 2], [1.0, 1.0])]]  # b's variance is larger, but NaN
    assert _warm("authors", no_b).hard_names == ["b"]  # "a > NaN" is false too
    assert _warm("pooled", no_b).hard_names == ["b"]  # pooled: b 9.0 > a 1.0


def test_selection_after_epoch_5_and_the_term_from_epoch_6():
    """The default warm-up of both fidelities (6 epochs: 0-5), as the authors' ``epoch <= 5``
    accumulates and ``epoch == 5`` chooses."""
    for options in (DMRNetOptions(), AuthorsOptions()):
        assert options.hcr_warmup_epochs == 6
    hcr = HardCombinationRegularizer(NAMES, beta=0.2, warmup_epochs=6)
    loss, subset = torch.ones(4), torch.tensor([0, 1, 2, 1])
    for epoch in range(8):
        hcr.accumulate(subset, torch.tensor([1.0, 2.0, 1.0, 2.0]))
        assert float(hcr(loss, subset)) == (0.0 if epoch <= 5 else pytest.approx(0.1))
        assert hcr.end_epoch(epoch) == (epoch == 5)


def test_the_authors_preset_and_its_options():
    opts = AuthorsOptions()
    assert (opts.hcr_reduction, opts.hcr_statistic, opts.init) == ("authors", "authors",
                                                                   "authors")
    paper = DMRNetOptions()
    assert (paper.hcr_reduction, paper.hcr_statistic, paper.init) == ("paper", "pooled",
                                                                      "default")
    with pytest.raises(ConfigError, match="hcr_reduction must be one of paper, authors"):
        DMRNetOptions(hcr_reduction="broadcast")
    with pytest.raises(ConfigError, match="needs hcr_rule 'variance'"):
        HardCombinationRegularizer(NAMES, statistic="authors", rule="val_loss")


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.numel() > 5000]


def test_authors_init_is_xavier_normal_with_zero_biases():
    shapes = {"a": (64,), "b": (32,)}
    kwargs = dict(modalities=list(shapes), input_shapes=shapes, num_classes=4, embed_dim=128)
    torch.manual_seed(0)
    theirs, _ = build_method("dmrnet_authors", **kwargs)
    torch.manual_seed(0)
    ours, _ = build_method("dmrnet", method_kwargs={"init": "default"}, **kwargs)
    for normal, model in ((True, theirs), (False, ours)):
        for layer in _linears(model):
            weight = layer.weight.detach()
            fan_out, fan_in = weight.shape
            std = math.sqrt(2.0 / (fan_in + fan_out))  # Xavier's, normal or uniform
            assert float(weight.std()) == pytest.approx(std, rel=0.1)
            # a normal draw exceeds the uniform's bound, sqrt(3) std, in a big layer
            assert (float(weight.abs().max()) > math.sqrt(3) * std * 1.001) == normal
            assert layer.bias is None or not layer.bias.any()


def test_cremad_network_parameter_count():
    """The CREMA-D recipe's network (``configs/cremad_dmrnet.yaml``: two BasicBlock ResNets
    [3, 4, 6, 3], concatenated 1024-d features, the probabilistic embedding, the classifier);
    the authors' also carries an unused 6 x 1024 head."""
    shapes = {"audio": (1, 257, 188), "visual": (3, 224, 224)}
    model, _ = build_method("dmrnet", modalities=list(shapes), input_shapes=shapes,
                            num_classes=6, encoder="resnet",
                            encoder_kwargs={"layers": [3, 4, 6, 3]}, embed_dim=1024)
    assert sum(p.numel() for p in model.parameters()) == 44_672_518


@pytest.mark.parametrize("method", ["dmrnet_authors", "loss_rescale"])
def test_the_authors_fidelity_and_its_control_train_dense_models(method):
    """Segmentation too (the rgbd-shapes comparison in docs/results.md): per-image losses, the
    authors' reduction, after a one-epoch warm-up."""
    shapes = {"rgb": (3, 32, 32), "depth": (1, 32, 32)}
    model, objective = build_method(
        method, modalities=list(shapes), input_shapes=shapes, num_classes=4,
        architecture="dense", encoder_kwargs={"width": 8}, embed_dim=16,
        dense_kwargs={"decoder_channels": [16, 8, 8]}, method_kwargs={"hcr_warmup_epochs": 1})
    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(4, *s, generator=g) for m, s in shapes.items()}
    target = torch.randint(0, 4, (4, 32, 32), generator=g)
    avail = torch.tensor([[True, False], [True, False], [False, True], [True, True]])
    subset = model.space.indices_of(avail)
    out = model.train()(x, avail)
    assert objective(out, target, subset)["hcr"].detach().item() == 0.0  # warming up
    objective.end_train_epoch(0, lambda t: t)
    out = model(x, avail)
    terms = objective(out, target, subset)
    per_image = objective.per_sample(out.logits, target)
    hard = [objective.hcr.subset_names.index(n) for n in objective.hcr.hard_names]
    n_hard = sum(int(s) in hard for s in subset)
    assert n_hard > 0
    expected = 0.2 * n_hard * per_image.detach().mean().item()
    assert terms["hcr"].detach().item() == pytest.approx(expected, rel=1e-5)
    terms["loss"].backward()
