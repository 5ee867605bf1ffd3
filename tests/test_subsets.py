from __future__ import annotations

from itertools import combinations

import pytest
import torch

from dmrnet.subsets import SubsetError, SubsetSampler, SubsetSpace


@pytest.mark.parametrize("m", range(2, 9))
def test_enumeration_names_masks_roundtrip(m):
    mods = [f"m{i}" for i in range(m)]
    space = SubsetSpace(mods)
    assert len(space) == 2**m - 1
    expected = [
        "+".join(mods[i] for i in c) for k in range(1, m + 1) for c in combinations(range(m), k)
    ]
    assert space.names == expected
    assert len(set(space.names)) == len(space)
    masks = space.masks()
    assert masks.shape == (2**m - 1, m)
    assert bool(masks.any(dim=1).all())
    assert len({tuple(r.tolist()) for r in masks}) == len(space)  # all distinct
    assert space.names[-1] == "+".join(mods)
    for i, name in enumerate(space.names):
        assert space.index(name) == i
        assert torch.equal(space.mask(name), masks[i])
        assert space.index(masks[i]) == i
        assert list(space.parse(name)) == [x for x in mods if x in name.split("+")]
    assert torch.equal(space.indices_of(masks), torch.arange(len(space)))


def test_names_follow_modality_order():
    space = SubsetSpace(["fou", "fac", "kar", "pix", "zer", "mor"])
    assert space.index("fac+pix") == space.index(["fac", "pix"])
    assert space.name(space.index("fac+pix")) == "fac+pix"
    # a name written out of order is read as the same subset, and printed in modality order
    assert space.name(space.index("pix+fac")) == "fac+pix"


def test_unknown_and_empty_names_are_errors():
    space = SubsetSpace(["rgb", "depth"])
    with pytest.raises(SubsetError, match="modality 'ir' in subset 'rgb\\+ir' is not one of"):
        space.parse("rgb+ir")
    with pytest.raises(SubsetError, match="empty subset"):
        space.parse("")
    with pytest.raises(SubsetError, match="empty subset"):
        space.mask([False, False])
    with pytest.raises(SubsetError, match="twice"):
        space.parse("rgb+rgb")
    with pytest.raises(SubsetError, match="no available modality"):
        space.indices_of(torch.tensor([[True, False], [False, False]]))
    with pytest.raises(SubsetError, match="unique"):
        SubsetSpace(["a", "a"])
    with pytest.raises(SubsetError, match="not usable"):
        SubsetSpace(["a+b"])


def test_sampler_uniform_over_nonempty_subsets():
    space = SubsetSpace(["a", "b", "c"])
    sampler = SubsetSampler(space)
    avail = torch.ones(70000, 3, dtype=torch.bool)
    drawn = space.indices_of(sampler.sample(avail, torch.Generator().manual_seed(0)))
    freq = torch.bincount(drawn, minlength=7).float() / len(drawn)
    assert torch.allclose(freq, torch.full((7,), 1 / 7), atol=0.01)


def test_sampler_weights_and_availability():
    space = SubsetSpace(["a", "b", "c"])
    sampler = SubsetSampler(space, {"a": 1.0, "a+b": 3.0})
    avail = torch.tensor([[True, True, True]] * 4000 + [[True, False, True]] * 4000)
    out = sampler.sample(avail, torch.Generator().manual_seed(1))
    assert not bool((out & ~avail).any())  # never a modality the sample lacks
    idx = space.indices_of(out)
    first = idx[:4000]
    assert set(first.tolist()) <= {space.index("a"), space.index("a+b")}
    assert abs(float((first == space.index("a+b")).float().mean()) - 0.75) < 0.03
    # rows without b: only "a" has weight among the allowed subsets
    assert bool((idx[4000:] == space.index("a")).all())


def test_sampler_falls_back_to_own_availability():
    space = SubsetSpace(["a", "b"])
    full_only = SubsetSampler(space, {"a+b": 1.0})
    avail = torch.tensor([[True, True], [False, True]])
    out = full_only.sample(avail)
    assert out.tolist() == [[True, True], [False, True]]


def test_sampler_rejects_bad_weights_and_rows():
    space = SubsetSpace(["a", "b"])
    with pytest.raises(SubsetError, match="one value per subset"):
        SubsetSampler(space, [1.0, 2.0])
    with pytest.raises(SubsetError, match="not all zero"):
        SubsetSampler(space, {"a": 0.0})
    with pytest.raises(SubsetError, match="not one of"):
        SubsetSampler(space, {"x": 1.0})
    with pytest.raises(SubsetError, match="no available modality"):
        SubsetSampler(space).sample(torch.tensor([[False, False]]))
