from __future__ import annotations

import pytest
import torch

from dmrnet.evaluation import naive_subset_outputs, predict_all_subsets, subset_outputs
from dmrnet.methods import build_method

from .conftest import random_batch


def shapes_for(m: int) -> dict[str, tuple[int, ...]]:
    return {f"m{i}": (3 + i,) for i in range(m)}


@pytest.mark.parametrize("m", [2, 3, 6])
@pytest.mark.parametrize(
    "options",
    [
        {"method": "dmrnet"},
        {"method": "baseline"},
        {"method": "dmrnet", "missing_at": "input"},
        {"method": "dmrnet", "fusion": "mean"},
        # the unimodal heads' vote: the summed-parts head needs the features too
        {"method": "dmrnet", "method_kwargs": {"unimodal_weight": 1.0,
                                               "unimodal_ensemble": 0.5}},
    ],
)
def test_cached_evaluation_equals_naive_forward_for_every_subset(m, options):
    shapes = shapes_for(m)
    options = dict(options)
    model, _ = build_method(
        options.pop("method"), modalities=list(shapes), input_shapes=shapes, num_classes=5,
        encoder_kwargs={"out_features": 8, "hidden": [16]}, embed_dim=6, **options,
    )
    # give BatchNorm non-trivial running statistics, then evaluate
    model.train()
    for seed in range(3):
        x, _ = random_batch(shapes, 32, seed=seed)
        model(x, torch.ones(32, m, dtype=torch.bool))
    model.eval()
    # the concat heads take the summed-parts path (each modality's product once per batch)
    assert (model.head_parts(model.encode(random_batch(shapes, 2)[0])) is None) == (
        options.get("fusion") == "mean")
    x, avail = random_batch(shapes, 12, seed=7)
    avail[:4] = True  # some complete samples, the rest with partial availability
    with torch.no_grad():
        cached = list(subset_outputs(model, x, avail))
        naive = list(naive_subset_outputs(model, x, avail))
    assert [s for s, _, _ in cached] == [s for s, _, _ in naive]
    assert len({s for s, _, _ in cached}) == len(cached)
    assert cached[-1][0] == 2**m - 2  # the full subset is evaluated (complete rows exist)
    for (s, rows_c, out_c), (_, rows_n, out_n) in zip(cached, naive, strict=True):
        assert (rows_c is None) == (rows_n is None)
        if rows_c is not None:
            assert torch.equal(rows_c, rows_n)
        assert torch.allclose(out_c.logits, out_n.logits, atol=1e-5), model.space.name(s)
        top2 = out_n.logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # predictions are equal unless a near-tie
        assert torch.equal(out_c.logits.argmax(1)[clear], out_n.logits.argmax(1)[clear])
        assert torch.allclose(out_c.mu, out_n.mu, atol=1e-5)
        if out_c.logvar is not None:
            assert torch.allclose(out_c.logvar, out_n.logvar, atol=1e-5)


def eval_model(method: str, m: int):
    shapes = shapes_for(m)
    model, _ = build_method(method, modalities=list(shapes), input_shapes=shapes, num_classes=3)
    return model.eval(), shapes


def test_stacked_heads_match_one_subset_at_a_time():
    model, shapes = eval_model("dmrnet", 4)
    x, avail = random_batch(shapes, 10)
    with torch.no_grad():
        together = list(subset_outputs(model, x, avail))
        one_by_one = list(subset_outputs(model, x, avail, max_rows=1))
    assert len(together) == len(one_by_one)
    for (s1, r1, o1), (s2, r2, o2) in zip(together, one_by_one, strict=True):
        assert s1 == s2 and (r1 is None) == (r2 is None)
        assert torch.allclose(o1.logits, o2.logits, atol=1e-5)
        assert torch.allclose(o1.logvar, o2.logvar, atol=1e-5)


def test_samples_enter_only_subsets_they_can_serve():
    model, shapes = eval_model("baseline", 2)
    x, _ = random_batch(shapes, 3)
    avail = torch.tensor([[True, False], [True, True], [False, True]])
    seen = {model.space.name(s): rows for s, rows, _ in subset_outputs(model, x, avail)}
    assert seen["m0"].tolist() == [True, True, False]
    assert seen["m1"].tolist() == [False, True, True]
    assert seen["m0+m1"].tolist() == [False, True, False]


def test_predict_all_subsets_gives_probabilities_and_keeps_mode():
    shapes = shapes_for(3)
    model, _ = build_method("dmrnet", modalities=list(shapes), input_shapes=shapes,
                            num_classes=4)
    model.train()
    x, _ = random_batch(shapes, 5)
    probs = predict_all_subsets(model, x, torch.ones(5, 3, dtype=torch.bool))
    assert list(probs) == model.space.names
    for p in probs.values():
        assert p.shape == (5, 4) and torch.allclose(p.sum(1), torch.ones(5))
    assert model.training


def test_predict_all_subsets_keeps_each_sample_in_its_row():
    """Issue 26: a subset's probabilities had one row per sample having it, with no index;
    now row b is sample b in every subset, NaN where the sample lacks the subset."""
    shapes = shapes_for(2)
    model, _ = build_method("dmrnet", modalities=list(shapes), input_shapes=shapes,
                            num_classes=3)
    x, _ = random_batch(shapes, 6)
    avail = torch.tensor([[True, True], [True, False], [False, True]] * 2)
    probs = predict_all_subsets(model, x, avail)
    names = model.space.names
    assert all(p.shape == (6, 3) for p in probs.values())
    both = probs[names[-1]]
    assert both[[0, 3]].isfinite().all() and both[[1, 2, 4, 5]].isnan().all()
    model.eval()
    with torch.no_grad():
        alone = model({m: v[[1]] for m, v in x.items()}, torch.tensor([[True, False]]))
    first = model.space.names.index(next(n for n in names if "+" not in n))
    torch.testing.assert_close(probs[names[first]][1], alone.logits.softmax(1)[0])
