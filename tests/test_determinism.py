"""The CPU-side guard for `deterministic: true` on CUDA: one training step (warm-up step, HCR
selection, a step with every loss term on, then every-subset evaluation) of each model family
runs under an aten-op recorder, and no op without a deterministic CUDA kernel may appear.
CI has no GPU; PyTorch only raises for such ops on CUDA, so without this test a CUDA-only crash
(`_bincount_cuda does not have a deterministic implementation`) goes unnoticed."""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F

from dmrnet.batch import MultimodalCollate
from dmrnet.determinism import cuda_nondeterministic, record_ops
from dmrnet.methods import METHODS, get_method
from dmrnet.nn.resize import adaptive_avg_pool, resize_bilinear
from dmrnet.training import MultimodalModule

ROOT = Path(__file__).resolve().parents[1]
VECTORS = {"a": [12], "b": [8], "c": [6]}
IMAGES = {"rgb": [3, 32, 32], "ir": [3, 32, 32]}
DENSE = {"rgb": [3, 64, 64], "depth": [1, 64, 64]}


def make_batch(shapes: dict[str, list[int]], n: int = 8, dense_classes: int | None = None,
               classes: int = 3):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        present = [m for j, m in enumerate(shapes) if (i + j) % 3 != 0] or [next(iter(shapes))]
        inputs = {m: torch.randn(*shapes[m], generator=g) for m in present}
        if dense_classes is None:
            target = torch.tensor(i % classes)
        else:
            target = torch.randint(0, dense_classes, tuple(shapes["rgb"][1:]), generator=g)
            target[:4, :4] = 255  # void pixels
        items.append({"inputs": inputs, "target": target})
    return MultimodalCollate(list(shapes), shapes)(items)


def run_step(module: MultimodalModule, batch) -> None:
    """Two optimiser steps (HCR warm-up, then HCR active) and one all-subset evaluation."""
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no trainer here
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    for step in range(2):
        loss = module.training_step(batch, step)
        loss.backward()
        module.on_before_optimizer_step(opt)  # gradient modulation, where on
        opt.step()
        opt.zero_grad()
        hcr = getattr(module.objective, "hcr", None)
        if hcr is not None and hcr.warming_up:
            hcr.select()
    module.eval()
    with torch.no_grad():
        module._eval_step(batch, module.val_metric)
        module._eval_end("val", module.val_metric)


def teacher_checkpoint(tmp_path, **kwargs) -> str:
    teacher = MultimodalModule(list(VECTORS), VECTORS, 3, method="full_only", **kwargs)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return str(path)


def short_warmup(method, options=None):
    """``options`` with HCR's warm-up at most one epoch, for a method that has HCR."""
    options = dict(options or {})
    if "hcr_warmup_epochs" in get_method(method).option_names():
        options["hcr_warmup_epochs"] = min(int(options.get("hcr_warmup_epochs", 5)), 1)
    return options


LATE_FUSION = sorted(METHODS)


@pytest.mark.parametrize("method", LATE_FUSION)
def test_late_fusion_training_step_has_only_deterministic_cuda_ops(method, tmp_path):
    net = {"network": {"encoder_kwargs": {"hidden": [16], "out_features": 8}, "embed_dim": 8}}
    options = {"teacher_checkpoint": teacher_checkpoint(tmp_path, **net)} \
        if method == "mmanet" else {}
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method=method, **net,
                              method_kwargs=short_warmup(method, options))
    flagged = cuda_nondeterministic(lambda: run_step(module, make_batch(VECTORS)))
    assert flagged == {}, f"{method}: ops that break deterministic CUDA training: {flagged}"


@pytest.mark.parametrize("family", ["mid-level trunk", "resnet", "input-level + mean fusion"])
def test_conv_families_training_step_has_only_deterministic_cuda_ops(family):
    kwargs = {
        "mid-level trunk": dict(network={"encoder": "se_resnet_stem", "trunk": "resnet_trunk",
                                         "embed_dim": 16},
                                method_kwargs={"hcr_subsets": ["rgb", "rgb+ir"],
                                               "hcr_warmup_epochs": 0, "beta": 0.7}),
        "resnet": dict(network={"encoder": "resnet", "encoder_kwargs": {"width": 8},
                                "embed_dim": 16},
                       method_kwargs={"hcr_warmup_epochs": 1}),
        "input-level + mean fusion": dict(network={"encoder": "resnet",
                                                   "encoder_kwargs": {"width": 8},
                                                   "embed_dim": 16, "missing_at": "input",
                                                   "fusion": "mean"},
                                          method_kwargs={"hcr_warmup_epochs": 1}),
    }[family]
    module = MultimodalModule(list(IMAGES), IMAGES, 2, method="dmrnet", **kwargs)
    flagged = cuda_nondeterministic(lambda: run_step(module, make_batch(IMAGES, classes=2)))
    assert flagged == {}, f"{family}: ops that break deterministic CUDA training: {flagged}"


@pytest.mark.parametrize("method", ["dmrnet", "baseline"])
def test_dense_training_step_has_only_deterministic_cuda_ops(method):
    hcr = {"method_kwargs": {"beta": 0.5, "hcr_subsets": ["rgb", "depth"],
                             "hcr_warmup_epochs": 0}} if method == "dmrnet" else {}
    module = MultimodalModule(list(DENSE), DENSE, 5, method=method,
                              class_weights=[1.0, 2.0, 1.0, 0.5, 1.0], **hcr,
                              network={"architecture": "dense", "encoder_kwargs": {"width": 8},
                                       "embed_dim": 16,
                                       "dense_kwargs": {"decoder_channels": [16, 8, 8],
                                                        "deep_supervision": True,
                                                        "aux_decoder": method == "dmrnet"}},
                              training={"metric": "miou"})
    batch = make_batch(DENSE, n=4, dense_classes=5)
    with record_ops() as ops:
        run_step(module, batch)
    assert ops.flagged == {}, f"dense {method}: {ops.flagged}"
    # the step really ran the convolutions' backward and the per-pixel loss
    assert {"convolution_backward", "nll_loss2d_forward"} <= set(ops.counts)


def test_guard_flags_the_ops_cuda_refuses():
    """What would be wrong if this failed: the guard above could pass with offenders present."""
    x = torch.randn(2, 3, 7, 9, requires_grad=True)

    def offenders() -> None:
        F.interpolate(F.adaptive_avg_pool2d(x, 3), size=(7, 9), mode="bilinear",
                      align_corners=False).sum().backward()
        torch.bincount(torch.tensor([0, 1, 1]), weights=torch.ones(3))
        torch.zeros(3).index_add_(0, torch.tensor([0, 0]), torch.ones(2))
        torch.randn(5).cumsum(0)
        F.cross_entropy(torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3)))

    flagged = cuda_nondeterministic(offenders)
    assert set(flagged) == {"upsample_bilinear2d_backward", "_adaptive_avg_pool2d_backward",
                            "bincount", "index_add_", "cumsum", "nll_loss2d_forward"}
    # the allowed forms of the same ops pass
    assert cuda_nondeterministic(lambda: (
        torch.bincount(torch.tensor([0, 1, 1])),
        torch.arange(5).cumsum(0),
        F.cross_entropy(torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3)),
                        reduction="none"))) == {}


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 3), (3, 7), (2, 6), (6, 1), (15, 20), (5, 5),
                                             (1, 4), (13, 6)])
def test_matrix_resize_and_pool_equal_the_builtin_ops(n_in, n_out):
    x = torch.randn(2, 3, n_in, n_in + 2, dtype=torch.float64, requires_grad=True)
    size = (n_out, n_out + 1)
    for ours, theirs in (
        (resize_bilinear, lambda t, s: F.interpolate(t, size=s, mode="bilinear",
                                                     align_corners=False)),
        (adaptive_avg_pool, F.adaptive_avg_pool2d),
    ):
        a, b = ours(x, size), theirs(x, size)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        g = torch.randn_like(a)
        (ga,) = torch.autograd.grad(a, x, g)
        (gb,) = torch.autograd.grad(b, x, g)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


# Data-side metadata of each dataset at a tiny size (the recipes' own shapes are GPU-sized).
TINY_DATA = {
    "mfeat": ({"fou": [76], "fac": [216], "kar": [64], "pix": [240], "zer": [47], "mor": [6]},
              10),
    "synthetic": ({"strong": [16], "medium": [16], "weak": [16]}, 8),
    "cremad": ({"audio": [1, 33, 24], "visual": [3, 32, 32]}, 6),
    "kinetics_sounds": ({"audio": [1, 33, 24], "visual": [3, 32, 32]}, 31),
    "casia_surf": ({"rgb": [3, 32, 32], "depth": [3, 32, 32], "ir": [3, 32, 32]}, 2),
    "nyuv2": ({"rgb": [3, 64, 64], "depth": [1, 64, 64]}, 40),
    "rgbd-shapes": ({"rgb": [3, 64, 64], "depth": [1, 64, 64]}, 6),
    "manifest": ({"img": [3, 32, 32], "snd": [1, 33, 24]}, 3),
}


def shipped_models():
    """(name, dataset, model settings) of every config file and every benchmark dataset."""
    import yaml

    from dmrnet.benchmark import BenchmarkConfig, apply_dataset_defaults, method_settings
    from dmrnet.settings import nest_settings

    out = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        # every recipe promises reproducible training; the op check below makes it hold on CUDA
        assert cfg["trainer"]["deterministic"] is True, path
        out.append((str(path.relative_to(ROOT)), cfg["data"]["dataset"], cfg["model"]))
    for dataset in ("mfeat", "synthetic", "rgbd-shapes"):
        for method in ("baseline", "dmrnet"):
            cfg = apply_dataset_defaults(BenchmarkConfig(out="-", dataset=dataset,
                                                         methods=[method]))
            # the benchmark names each concern's fields alone; the module takes them nested
            model = nest_settings({**method_settings(cfg, method), "method": method})
            out.append((f"benchmark {dataset} {method}", dataset, model))
    return out


@pytest.mark.parametrize(("name", "dataset", "model"), shipped_models(),
                         ids=[m[0] for m in shipped_models()])
def test_every_shipped_config_trains_with_deterministic_cuda_ops(name, dataset, model):
    shapes, classes = TINY_DATA[dataset]
    # reach HCR's active term in the second step
    model = {**model, "method_kwargs": short_warmup(model["method"], model.get("method_kwargs"))}
    module = MultimodalModule(list(shapes), shapes, classes, **model)
    dense = classes if (model.get("network") or {}).get("architecture") == "dense" else None
    batch = make_batch(shapes, n=4, dense_classes=dense, classes=classes)
    flagged = cuda_nondeterministic(lambda: run_step(module, batch))
    assert flagged == {}, f"{name}: ops that break deterministic CUDA training: {flagged}"


def test_device_side_data_transforms_use_only_deterministic_cuda_ops(tmp_path):
    """The batched resampling, STFT and frame normalisation run on the training device."""
    from dmrnet.data import cremad

    from .fixtures import make_cremad, write_cremad_splits

    root = make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
    write_cremad_splits(root, {"1001", "1002"}, {"1003"})
    data = cremad(root, train_csv="train.csv", test_csv="test.csv", image_size=32)
    collate = MultimodalCollate(data.modalities, data.item_shapes, dtypes=data.item_dtypes)
    batch = collate([data.train[i] for i in range(4)])
    with record_ops() as ops:
        data.finish_batch(batch)
    assert ops.flagged == {}
    assert {"_fft_r2c", "_fft_c2r"} <= set(ops.counts)  # the device really resampled
