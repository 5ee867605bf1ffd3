"""CUDA-only checks (skipped without a GPU; `bash scripts/gpu_check.sh` runs them on one):
every shipped model family trains under torch.use_deterministic_algorithms(True) on CUDA,
reruns are bit-identical, cached = naive evaluation, and the device-side data transforms give
what they give on CPU."""

from __future__ import annotations

import pytest
import torch

from dmrnet.batch import Batch
from dmrnet.benchmark import BenchmarkConfig, run_benchmark
from dmrnet.evaluation import naive_subset_outputs, subset_outputs
from dmrnet.training import MultimodalModule

from .test_determinism import TINY_DATA, make_batch, run_step, shipped_models, short_warmup

pytestmark = pytest.mark.cuda


def to_device(batch: Batch, device: str) -> Batch:
    return Batch({m: x.to(device) for m, x in batch.inputs.items()},
                 batch.availability.to(device),
                 None if batch.target is None else batch.target.to(device))


@pytest.fixture
def deterministic(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("name", "dataset", "model"), shipped_models(),
                         ids=[m[0] for m in shipped_models()])
def test_every_shipped_model_trains_deterministically_on_cuda(name, dataset, model,
                                                              deterministic):
    shapes, classes = TINY_DATA[dataset]
    model = {**model, "method_kwargs": short_warmup(model["method"], model.get("method_kwargs"))}
    dense = classes if (model.get("network") or {}).get("architecture") == "dense" else None
    batch = make_batch(shapes, n=4, dense_classes=dense, classes=classes)
    states = []
    for _ in range(2):  # twice from the same seed: bit-identical weights
        torch.manual_seed(0)
        module = MultimodalModule(list(shapes), shapes, classes, **model).to("cuda")
        torch.manual_seed(1)
        run_step(module, to_device(batch, "cuda"))  # raises on a non-deterministic kernel
        states.append({k: v.detach().cpu() for k, v in module.state_dict().items()})
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), f"{name}: {key} differs between reruns"


@pytest.mark.parametrize("dense", [False, True])
def test_cached_equals_naive_evaluation_on_cuda(dense):
    shapes, classes = TINY_DATA["nyuv2" if dense else "casia_surf"]
    kwargs = ({"network": {"architecture": "dense", "encoder_kwargs": {"width": 8},
                           "embed_dim": 16, "dense_kwargs": {"decoder_channels": [16, 8, 8]}},
               "training": {"metric": "miou"}} if dense
              else {"network": {"encoder": "resnet", "encoder_kwargs": {"width": 8},
                                "embed_dim": 16}})
    module = MultimodalModule(list(shapes), shapes, classes, **kwargs).to("cuda").eval()
    batch = to_device(make_batch(shapes, n=6, classes=classes,
                                 dense_classes=classes if dense else None), "cuda")
    with torch.no_grad():
        cached = list(subset_outputs(module.model, batch.inputs, batch.availability))
        naive = list(naive_subset_outputs(module.model, batch.inputs, batch.availability))
    assert [s for s, _, _ in cached] == [s for s, _, _ in naive]
    for (_, _, a), (_, _, b) in zip(cached, naive, strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)


def test_benchmark_reruns_are_bit_identical_on_cuda(tmp_path):
    results = [run_benchmark(BenchmarkConfig(
        out=str(tmp_path / f"run{k}"), dataset="synthetic", methods=["baseline", "dmrnet"],
        seeds=[0], epochs=2, accelerator="gpu", progress=False), echo=lambda _: None)
        for k in range(2)]
    for a, b in zip(results[0]["runs"], results[1]["runs"], strict=True):
        assert a["per_subset"] == b["per_subset"]


@pytest.mark.parametrize("waveform", [False, True])
def test_device_transforms_on_cuda_equal_cpu(tmp_path, waveform):
    from dmrnet.batch import MultimodalCollate
    from dmrnet.data import cremad

    from .fixtures import make_cremad, write_cremad_splits

    root = make_cremad(tmp_path / "crema")
    write_cremad_splits(root, {"1001", "1002", "1003", "1004"}, {"1005"})
    data = cremad(root, train_csv="train.csv", test_csv="test.csv", image_size=32,
                  audio={"waveform": waveform, "sample_rate": 16000} if waveform else None)
    collate = MultimodalCollate(data.modalities, data.item_shapes, dtypes=data.item_dtypes)
    batch = collate([data.test[i] for i in range(4)])
    on_cpu = data.finish_batch(batch)
    on_gpu = data.finish_batch(to_device(batch, "cuda"))
    for m in data.modalities:
        torch.testing.assert_close(on_gpu.inputs[m].cpu(), on_cpu.inputs[m], rtol=1e-4,
                                   atol=1e-4)
