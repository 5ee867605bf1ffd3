"""Property-based hardening: every input either works or raises a DMRNetError that names the
problem; nothing fails with an internal error from deep inside torch, and nothing returns
garbage silently. The kinds of input tried are listed in docs/robustness.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
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


def outcome(fn, problems: list[str]):
    """Run fn. With no problem in the input it must work (the result is returned); with
    problems it must raise a DMRNetError whose message matches one of them (None returned).
    Either way a wrong outcome fails: a valid input refused, a bad input accepted, or an error
    that names something else."""
    import re

    try:
        result = fn()
    except DMRNetError as err:
        assert problems, f"a valid input was refused: {err}"
        assert any(re.search(p, str(err)) for p in problems), (str(err), problems)
        return None
    assert not problems, f"accepted an input with problems {problems}"
    return result


def _value_problems(m: str, v: np.ndarray, batched: bool | None) -> list[str]:
    """Problems of one modality's array given to predict: its shape, then its values."""
    shape = SHAPES[m]
    if batched is None:
        single = tuple(v.shape) == shape
        batched = v.ndim == len(shape) + 1 and tuple(v.shape[1:]) == shape
        if not (single or batched):
            return [f"modality '{m}' has shape"]
    elif tuple(v.shape) != shape:
        return [f"modality '{m}' has shape"]
    return [] if np.isfinite(v).all() else [f"modality '{m}' holds NaN or inf"]


def predict_problems(inputs) -> list[str]:
    """What is wrong with an input to Predictor.predict, as the messages that would say so."""
    if isinstance(inputs, dict):
        unknown = [k for k in inputs if k not in SHAPES]
        if unknown:
            return [f"modality '{k}' is not one of" for k in unknown]
        if not inputs:
            return ["no modality given"]
        found = [p for m, v in inputs.items() for p in _value_problems(m, v, None)]
        if any("has shape" in p for p in found):
            return [p for p in found if "has shape" in p]
        sizes = {None if tuple(v.shape) == SHAPES[m] else v.shape[0] for m, v in inputs.items()}
        if len(sizes) > 1:
            return ["disagree on the batch size"]
        if sizes == {0}:
            return ["empty batch"]
        return found
    if not inputs:
        return ["empty batch"]
    found = []
    for i, sample in enumerate(inputs):
        found += [f"modality '{k}' is not one of" for k in sample if k not in SHAPES]
        found += [p for m, v in sample.items() if m in SHAPES
                  for p in _value_problems(m, v, False)]
        if not sample:
            found.append(f"sample\\(s\\) \\[{i}")
    return found


@SETTINGS
@given(st.one_of(sample, st.lists(sample, max_size=3)))
def test_predict_on_arbitrary_inputs(inputs):
    pred = outcome(lambda: PREDICTOR.predict(inputs), predict_problems(inputs))
    if pred is not None:  # it worked: the answer is a real distribution
        assert torch.isfinite(pred.probs).all()
        assert torch.allclose(pred.probs.sum(1), torch.ones(len(pred.probs)), atol=1e-5)
        assert len(pred.subsets) == len(pred.probs)


@SETTINGS
@given(batch=st.integers(0, 3), a_shape=shapes, b_shape=shapes,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
       avail=st.lists(st.booleans(), min_size=0, max_size=8), extra=st.booleans(),
       nan=st.booleans())
# found by hypothesis: 'a' is checked in full (dtype included) before b's shape
@example(batch=1, a_shape=(3,), b_shape=(1,), dtype=torch.float64, avail=[True, True],
         extra=False, nan=False)
def test_model_forward_on_arbitrary_batches(batch, a_shape, b_shape, dtype, avail, extra, nan):
    x = {"a": torch.zeros(batch, *a_shape).to(dtype), "b": torch.zeros(batch, *b_shape).to(dtype)}
    has_nan = nan and x["a"].is_floating_point() and x["a"].numel() > 0
    if has_nan:
        x["a"].view(-1)[0] = float("nan")
    if extra:
        x["z"] = torch.zeros(batch, 1)
    mask = torch.tensor(avail, dtype=torch.bool)
    if mask.numel() == batch * 2:
        mask = mask.view(batch, 2)
    # the first problem in the order the model checks them
    if extra:
        problems = ["modality 'z' is not one of"]
    elif mask.dim() != 2:
        problems = ["availability must be a \\(B, 2\\)"]
    elif batch == 0:
        problems = ["empty batch"]
    elif not bool(mask.any(dim=1).all()):
        problems = ["have no available modality"]
    else:  # then modality by modality: its shape, its dtype, its values
        problems = []
        for m, shape in (("a", a_shape), ("b", b_shape)):
            if shape != SHAPES[m]:
                problems = [f"modality '{m}' has shape"]
            elif dtype != torch.float32:
                problems = [f"modality '{m}' is {dtype}"]
            elif m == "a" and has_nan and bool(mask[0, 0]):
                problems = ["modality 'a' holds NaN or inf"]
            if problems:
                break
    out = outcome(lambda: MODEL(x, mask), problems)
    if out is not None:
        assert torch.isfinite(out.logits).all() and out.logits.shape == (batch, 3)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"inputs": sample}, optional={
    "target": st.one_of(st.integers(-2, 5), st.none())}), max_size=4))
def test_collate_on_arbitrary_items(items):
    problems = [] if items else ["empty batch"]
    for i, it in enumerate(items):
        problems += [f"modality '{m}' of item {i} has shape" for m, v in it["inputs"].items()
                     if m in SHAPES and tuple(v.shape) != SHAPES[m]]
        problems += [f"item {i} has modality '{k}'" for k in it["inputs"] if k not in SHAPES]
    labelled = {it.get("target") is not None for it in items}
    if len(labelled) > 1:
        problems.append("some items have a target and some do not")
    batch = outcome(lambda: MultimodalCollate(["a", "b"], SHAPES)(items), problems)
    if batch is not None:
        assert batch.inputs["a"].shape == (len(items), 3)
        for i, it in enumerate(items):  # availability says exactly which modalities came
            assert batch.availability[i].tolist() == [m in it["inputs"] for m in SHAPES]


@SETTINGS
@given(num_classes=st.integers(-2, 4), method=st.sampled_from(["dmrnet", "baseline", "nope"]),
       top_k=st.integers(-1, 5), fusion=st.sampled_from(["concat", "mean", "sum"]),
       hard=st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "a+b", "b+a", "x"]),
                                          max_size=2)))
def test_configuration_values(num_classes, method, top_k, fusion, hard):
    problems = []
    if method == "nope":
        problems.append("unknown method 'nope'")
    if fusion == "sum":
        problems.append("fusion")
    if num_classes < 2:
        problems.append("num_classes must be at least 2")
    if method == "baseline":  # no HCR: its options are refused by name
        problems.append("method 'baseline' has no option 'hcr_")
    if method == "dmrnet":  # HCR is on: its settings are used
        if top_k < 1:
            problems.append("hcr_top_k must be a whole number >= 1")
        if top_k > 2:
            problems.append("top_k must be in 1..2")
        if hard is not None and (not hard or any(h not in ("a", "b", "a+b") for h in hard)):
            problems.append("hard_subsets is empty|is not a subset name")
    options = {"hcr_top_k": top_k, "hcr_subsets": hard}
    model = outcome(lambda: build_method(method, modalities=["a", "b"], input_shapes=SHAPES,
                                         num_classes=num_classes, fusion=fusion,
                                         method_kwargs=options)[0], problems)
    if model is not None:
        assert model.num_classes == num_classes and model.modalities == ["a", "b"]


@SETTINGS
@given(cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_damaged_model_folders(tmp_path_factory, cut, flip):
    from dmrnet.serving import load_model, save_model
    from dmrnet.training import MultimodalModule

    path = tmp_path_factory.mktemp("m")
    module = MultimodalModule(["a", "b"], {"a": [3], "b": [2]}, 3,
                              network={"encoder_kwargs": {"out_features": 4, "hidden": [8]},
                                       "embed_dim": 4})
    save_model(module, path, overwrite=True)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if flip < len(data):
        data[flip] ^= 0xFF
    weights.write_bytes(bytes(data[: max(cut, 1)] if cut < len(data) else data))
    try:
        loaded = load_model(path)
    except DMRNetError as err:
        assert "model.safetensors" in str(err)  # names the damaged file
        loaded = None
    if loaded is not None:  # a flip inside the tensor data gives a model that still runs
        assert loaded.predict({"a": np.zeros(3)}).probs.shape == (1, 3)


def test_unknown_keys_and_empty_subsets_have_named_errors():
    with pytest.raises(DMRNetError, match="modality 'c'"):
        PREDICTOR.predict({"c": np.zeros(3)})
    with pytest.raises(DMRNetError, match="no modality"):
        PREDICTOR.predict({})
