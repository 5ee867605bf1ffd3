"""Property-based hardening: every input either works or raises a DMRNetError that names the
problem; nothing fails with an internal error from deep inside torch, and nothing returns
garbage silently. The kinds of input tried are listed in docs/robustness.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmrnet.batch import MultimodalCollate
from dmrnet.errors import DMRNetError
from dmrnet.methods import build_method
from dmrnet.serving import Predictor

SHAPES = {"a": (3,), "b": (2,)}
MODEL, _ = build_method("dmrnet", modalities=list(SHAPES), input_shapes=SHAPES, num_classes=3,
                        encoder_kwargs={"out_features": 4, "hidden": [8]}, embed_dim=4)
MODEL.eval()
PREDICTOR = Predictor(MODEL, {"model": {"modalities": ["a", "b"],
                                        "input_shapes": {"a": [3], "b": [2]},
                                        "num_classes": 3}})
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.integers(-5, 5).map(float))
keys = st.sampled_from(["a", "b", "c", ""])
dims = st.integers(0, 4)


def arrays(draw_shape):
    return draw_shape.flatmap(
        lambda shape: st.lists(values, min_size=int(np.prod(shape)),
                               max_size=int(np.prod(shape))).map(
            lambda v, shape=shape: np.array(v, dtype=np.float32).reshape(shape)))


shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)
sample = st.dictionaries(keys, arrays(shapes), max_size=3)


def outcome_ok(fn):
    """Run fn: it must either return, or raise a DMRNetError (a clear, named error)."""
    try:
        return fn()
    except DMRNetError as err:
        assert str(err), "an error must say what is wrong"
        return None


@SETTINGS
@given(st.one_of(sample, st.lists(sample, max_size=3)))
def test_predict_on_arbitrary_inputs(inputs):
    pred = outcome_ok(lambda: PREDICTOR.predict(inputs))
    if pred is not None:  # it worked: the answer is a real distribution
        assert torch.isfinite(pred.probs).all()
        assert torch.allclose(pred.probs.sum(1), torch.ones(len(pred.probs)), atol=1e-5)
        assert len(pred.subsets) == len(pred.probs)


@SETTINGS
@given(batch=st.integers(0, 3), a_shape=shapes, b_shape=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
       avail=st.lists(st.booleans(), min_size=0, max_size=8), extra=st.booleans(),
       nan=st.booleans())
def test_model_forward_on_arbitrary_batches(batch, a_shape, b_shape, dtype, avail, extra, nan):
    x = {"a": torch.zeros(batch, *a_shape).to(dtype), "b": torch.zeros(batch, *b_shape).to(dtype)}
    if nan and x["a"].is_floating_point() and x["a"].numel():
        x["a"].view(-1)[0] = float("nan")
    if extra:
        x["z"] = torch.zeros(batch, 1)
    mask = torch.tensor(avail, dtype=torch.bool)
    if mask.numel() == batch * 2:
        mask = mask.view(batch, 2)
    out = outcome_ok(lambda: MODEL(x, mask))
    if out is not None:
        assert torch.isfinite(out.logits).all()


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"inputs": sample}, optional={
    "target": st.one_of(st.integers(-2, 5), st.none())}), max_size=4))
def test_collate_on_arbitrary_items(items):
    batch = outcome_ok(lambda: MultimodalCollate(["a", "b"], SHAPES)(items))
    if batch is not None:
        assert batch.inputs["a"].shape == (len(items), 3)


@SETTINGS
@given(num_classes=st.integers(-2, 4), method=st.sampled_from(["dmrnet", "baseline", "nope"]),
       top_k=st.integers(-1, 5), fusion=st.sampled_from(["concat", "mean", "sum"]),
       hard=st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "a+b", "b+a", "x"]),
                                          max_size=2)))
def test_configuration_values(num_classes, method, top_k, fusion, hard):
    outcome_ok(lambda: build_method(method, modalities=["a", "b"], input_shapes=SHAPES,
                                    num_classes=num_classes, hcr_top_k=top_k, fusion=fusion,
                                    hcr_subsets=hard))


@SETTINGS
@given(cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_damaged_model_folders(tmp_path_factory, cut, flip):
    from dmrnet.serving import load_model, save_model
    from dmrnet.training import DMRNetModule

    path = tmp_path_factory.mktemp("m")
    module = DMRNetModule(["a", "b"], {"a": [3], "b": [2]}, 3,
                          encoder_kwargs={"out_features": 4, "hidden": [8]}, embed_dim=4)
    save_model(module, path, overwrite=True)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if flip < len(data):
        data[flip] ^= 0xFF
    weights.write_bytes(bytes(data[: max(cut, 1)] if cut < len(data) else data))
    loaded = outcome_ok(lambda: load_model(path))
    if loaded is not None:  # a flip inside the tensor data gives a model that still runs
        assert loaded.predict({"a": np.zeros(3)}).probs.shape == (1, 3)


def test_unknown_keys_and_empty_subsets_have_named_errors():
    with pytest.raises(DMRNetError, match="modality 'c'"):
        PREDICTOR.predict({"c": np.zeros(3)})
    with pytest.raises(DMRNetError, match="no modality"):
        PREDICTOR.predict({})
