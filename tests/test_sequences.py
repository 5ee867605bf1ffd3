"""Variable-length sequence modalities: the batch contract (padding + lengths), the sequence
encoders, and every model path that must never read the padding."""

from __future__ import annotations

import pytest
import torch

from dmrnet.batch import BatchError, MultimodalCollate
from dmrnet.determinism import cuda_nondeterministic
from dmrnet.errors import ConfigError
from dmrnet.evaluation import naive_subset_outputs, subset_outputs
from dmrnet.nn import create_encoder
from dmrnet.training import MultimodalModule

SHAPES = {"audio": [12, 5], "text": [9, 4], "face": [6]}
SEQUENCES = ["audio", "text"]
NETWORK = {"encoder": "auto", "embed_dim": 16, "encoder_kwargs": {"vector": {"hidden": [8]}},
           "encoders": {"text": {"name": "transformer", "width": 8, "heads": 2, "layers": 1}}}


def items(n: int = 12, seed: int = 0) -> list[dict]:
    """Samples with sequences of many lengths; some lack one or two modalities."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        inputs = {"audio": torch.randn(1 + (5 * i) % 12, 5, generator=g),
                  "text": torch.randn(1 + (2 * i) % 9, 4, generator=g),
                  "face": torch.randn(6, generator=g)}
        if i % 3 == 0:
            del inputs["audio"]
        if i % 4 == 1:
            del inputs["text"]
        out.append({"inputs": inputs, "target": i % 3})
    return out


def batch(n: int = 12, seed: int = 0):
    return MultimodalCollate(list(SHAPES), SHAPES, sequences=SEQUENCES)(items(n, seed))


def module(method: str = "dmrnet", **network) -> MultimodalModule:
    torch.manual_seed(0)
    return MultimodalModule(list(SHAPES), SHAPES, 3, method=method, sequences=SEQUENCES,
                            network={**NETWORK, **network})


def repadded(b, value: float = 37.0):
    """The same batch with every padded step (and every absent row) set to ``value``."""
    inputs = dict(b.inputs)
    for m, lengths in b.lengths.items():
        x = inputs[m].clone()
        for i, n in enumerate(lengths.tolist()):
            x[i, n:] = value + i
        inputs[m] = x
    return inputs


def test_collate_pads_each_sequence_and_records_its_length():
    data = items()
    b = batch()
    assert b.lengths["audio"].tolist() == [0 if i % 3 == 0 else 1 + (5 * i) % 12
                                           for i in range(12)]
    assert "face" not in b.lengths
    i = 1  # audio of 6 steps, text absent
    n = len(data[i]["inputs"]["audio"])
    assert torch.equal(b.inputs["audio"][i, :n], data[i]["inputs"]["audio"])
    assert bool((b.inputs["audio"][i, n:] == 0).all())
    assert b.lengths["text"][i] == 0 and not bool(b.availability[i, 1])


@pytest.mark.parametrize("bad", [torch.zeros(13, 5), torch.zeros(0, 5), torch.zeros(4, 6)])
def test_collate_refuses_a_sequence_that_does_not_fit_in_one_line(bad):
    data = items(3)
    data[1]["inputs"]["audio"] = bad
    with pytest.raises(BatchError, match=r"modality 'audio' of item 1 .*1 <= T <= 12"):
        MultimodalCollate(list(SHAPES), SHAPES, sequences=SEQUENCES)(data)


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_sequence_encoders_never_read_the_padding(name):
    encoder = create_encoder(name, (12, 5)).eval()
    x = torch.randn(4, 12, 5)
    lengths = torch.tensor([12, 3, 1, 7])
    noisy = x.clone()
    noisy[1, 3:] = 1e4
    noisy[2, 1:] = float("nan")  # not even NaN in the padding reaches the features
    noisy[3, 7:] = -3.0
    assert torch.equal(encoder(x, lengths), encoder(noisy, lengths))
    # the lengths matter: the same rows read in full give other features
    assert not torch.allclose(encoder(x, lengths)[1], encoder(x)[1])


@pytest.mark.parametrize("method", ["dmrnet", "baseline"])
def test_padding_values_never_change_any_subsets_prediction(method):
    """Done-when of issue 25: change the padding, get identical outputs for every subset."""
    mod = module(method).eval()
    b = batch()
    with torch.no_grad():
        before = {s: o.logits for s, _, o in subset_outputs(
            mod.model, b.inputs, b.availability, lengths=b.lengths)}
        after = {s: o.logits for s, _, o in subset_outputs(
            mod.model, repadded(b), b.availability, lengths=b.lengths)}
        whole = mod(repadded(b, -5.0), b.availability, b.lengths).logits
        plain = mod(b.inputs, b.availability, b.lengths).logits
    assert len(before) == 7 and before.keys() == after.keys()
    for s in before:
        assert torch.equal(before[s], after[s]), mod.space.name(s)
    assert torch.equal(whole, plain)


def test_padding_never_changes_training_or_input_level_missingness():
    """Training outputs and gradients, and input-level missingness (absent sequences seen as
    zeros of full length), are the same whatever the padding holds."""
    for network in ({}, {"missing_at": "input"}):
        b = batch()
        outs, grads = [], []
        for inputs in (b.inputs, repadded(b)):
            mod = module(**network).train()
            torch.manual_seed(1)
            out = mod(inputs, b.availability, b.lengths)
            out.logits.sum().backward()
            outs.append(out.logits.detach())
            grads.append(torch.cat([p.grad.flatten() for p in mod.parameters()
                                    if p.grad is not None]))
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1]), network


@pytest.mark.parametrize("network", [{}, {"missing_at": "input"}])
def test_every_subset_evaluation_equals_one_forward_per_subset(network):
    mod = module(**network).eval()
    b = batch()
    with torch.no_grad():
        fast = {s: (r, o.logits) for s, r, o in subset_outputs(
            mod.model, b.inputs, b.availability, lengths=b.lengths)}
        slow = {s: (r, o.logits) for s, r, o in naive_subset_outputs(
            mod.model, b.inputs, b.availability, lengths=b.lengths)}
    assert fast.keys() == slow.keys() and len(fast) == 7
    for s in fast:
        torch.testing.assert_close(fast[s][1], slow[s][1], rtol=1e-5, atol=1e-5)


def test_encoders_that_read_fixed_size_inputs_are_refused_for_sequences():
    with pytest.raises(ConfigError, match="encoder 'mlp' reads fixed-size inputs, but modality "
                       "'audio' holds variable-length sequences"):
        module(encoder="mlp", encoder_kwargs={})
    # and a fixed-size model handed lengths at run time says so instead of reading padding
    plain = MultimodalModule(list(SHAPES), SHAPES, 3, network={"embed_dim": 8})
    b = batch()
    with pytest.raises(BatchError, match="reads fixed-size inputs and would see the padding"):
        plain(b.inputs, b.availability, b.lengths)


def test_lengths_outside_one_to_t_are_one_line():
    mod = module().eval()
    b = batch()
    wrong = dict(b.lengths, audio=b.lengths["audio"].clone())
    wrong["audio"][1] = 13
    with pytest.raises(BatchError, match=r"modality 'audio' has a sample of length 13; "
                       r"lengths must be 1..12"):
        mod(b.inputs, b.availability, wrong)
    with pytest.raises(BatchError, match="lengths are given for 'face2'"):
        mod(b.inputs, b.availability, {**b.lengths, "face2": b.lengths["audio"]})


@pytest.mark.parametrize("method", ["dmrnet", "baseline"])
def test_sequence_encoders_have_only_deterministic_cuda_ops(method):
    """The op guard covers the sequence encoders (GRU both ways, masked Transformer): a
    packed GRU's sort would put an accumulating index_add in the backward pass."""
    from tests.test_determinism import run_step

    mod = module(method)
    flagged = cuda_nondeterministic(lambda: run_step(mod, batch()))
    assert flagged == {}, f"{method}: ops that break deterministic CUDA training: {flagged}"


def test_staged_and_teacher_methods_run_on_sequences_and_shaspec_says_it_cannot(tmp_path,
                                                                                 capsys):
    """tutored (unimodal teachers trained first, their encoders copied and distilled) and
    mmanet (a full_only teacher's outputs) pass the lengths to their teachers too."""
    from dmrnet.cli import main
    from tests.test_features import write_sequences

    folder = write_sequences(tmp_path / "seq")
    assert main(["benchmark", "--dataset", "features", "--root", str(folder), "--modalities",
                 "words,face", "--methods", "tutored,mmanet", "--set",
                 "method_kwargs={teacher_distill: 1.0}", "--epochs", "1", "--seeds", "0",
                 "--jobs", "1", "--out", str(tmp_path / "b"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    with pytest.raises(ConfigError, match="shaspec reads fixed-size inputs .* 'audio' holds "
                       "variable-length sequences"):
        MultimodalModule(list(SHAPES), SHAPES, 3, method="shaspec", sequences=SEQUENCES,
                         network=NETWORK)


def test_token_sequences_are_embedded_and_never_read_past_their_length():
    """A (T,) sequence modality holds token ids (text): ``auto`` embeds them before a GRU;
    the padding's ids, the op guard and a wrong id are checked as for feature sequences."""
    shapes = {"text": [9], "face": [6]}
    mod = MultimodalModule(list(shapes), shapes, 3, sequences=["text"],
                           network={"encoder": "auto", "embed_dim": 8})
    assert type(mod.model.encoders["text"]).__name__ == "TokenEncoder"
    g = torch.Generator().manual_seed(0)
    data = [{"inputs": {"text": torch.randint(2, 50, (1 + i % 9,), generator=g).float(),
                        "face": torch.randn(6, generator=g)}, "target": i % 3}
            for i in range(10)]
    del data[3]["inputs"]["text"]
    b = MultimodalCollate(list(shapes), shapes, sequences=["text"])(data)
    mod.eval()
    with torch.no_grad():
        before = mod(b.inputs, b.availability, b.lengths).logits
        after = mod(repadded(b, 17.0), b.availability, b.lengths).logits
    assert torch.equal(before, after)
    flagged = cuda_nondeterministic(lambda: run_step_of(mod, b))
    assert flagged == {}, f"ops that break deterministic CUDA training: {flagged}"
    wrong = dict(b.inputs, text=b.inputs["text"].clone())
    wrong["text"][0, 0] = 2.5
    with pytest.raises(BatchError, match="token ids must be whole numbers 0..19999; got 2.5"):
        mod(wrong, b.availability, b.lengths)


def run_step_of(mod, b) -> None:
    from tests.test_determinism import run_step

    run_step(mod, b)
