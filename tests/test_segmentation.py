"""Dense DMRNet, NYUv2 loaders (prepared layout and .mat), rgbd-shapes, mIoU, the picture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmrnet.batch import BatchError
from dmrnet.cli import main
from dmrnet.data import DataError, nyuv2, rgbd_shapes
from dmrnet.evaluation import naive_subset_outputs, subset_outputs
from dmrnet.methods import build_method
from dmrnet.metrics import SegmentationIoU

from .fixtures import make_nyuv2_mat, make_nyuv2_prepared

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"rgb": (3, 64, 64), "depth": (1, 64, 64)}


def small_dense(method="dmrnet", **kw):
    return build_method(method, modalities=["rgb", "depth"], input_shapes=SHAPES, num_classes=5,
                        architecture="dense", encoder_kwargs={"width": 8}, embed_dim=16,
                        dense_kwargs={"decoder_channels": [16, 8, 8], **kw.pop("dense", {})},
                        **kw)


def test_recipe_shaped_model_forward_backward_on_one_480x640_pair():
    shapes = {"rgb": (3, 480, 640), "depth": (1, 480, 640)}
    model, objective = build_method(
        "dmrnet", modalities=["rgb", "depth"], input_shapes=shapes, num_classes=40,
        architecture="dense", encoder_kwargs={"layers": [3, 4, 6, 3]}, embed_dim=512,
        dense_kwargs={"deep_supervision": True, "aux_decoder": True},
        method_kwargs={"hcr_subsets": ["rgb", "depth"], "hcr_warmup_epochs": 0, "beta": 0.5},
    )
    objective.hcr.select()
    x = {m: torch.randn(1, *s) for m, s in shapes.items()}
    target = torch.randint(0, 40, (1, 480, 640))
    avail = torch.tensor([[True, False]])  # a unimodal (hard) sample: the aux decoder is used
    out = model.train()(x, avail)
    assert out.logits.shape == (1, 40, 480, 640) and out.mu.shape == (1, 512, 15, 20)
    terms = objective(out, target, model.space.indices_of(avail))
    assert set(terms) == {"task", "side", "kl", "hcr", "loss"}
    terms["loss"].backward()
    assert model.embedding.logvar[0].weight.grad.abs().sum() > 0
    assert model.aux.classifier.weight.grad.abs().sum() > 0


def test_dense_kl_is_per_pixel_mean_and_has_gradient():
    model, objective = small_dense()
    assert objective.kl.spatial == "mean"
    x = {m: torch.randn(2, *s) for m, s in SHAPES.items()}
    out = model.train()(x, torch.ones(2, 2, dtype=torch.bool))
    kl = objective.kl(out.mu, out.logvar)
    kl.backward()
    assert model.embedding.mu[0].weight.grad.abs().sum() > 0


def test_cached_evaluation_equals_naive_for_dense():
    model, _ = small_dense()
    model.train()
    for _ in range(2):
        model({m: torch.randn(4, *s) for m, s in SHAPES.items()}, torch.ones(4, 2, dtype=bool))
    model.eval()
    x = {m: torch.randn(3, *s) for m, s in SHAPES.items()}
    avail = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        cached = list(subset_outputs(model, x, avail))
        naive = list(naive_subset_outputs(model, x, avail))
    assert [c[0] for c in cached] == [n[0] for n in naive] == [0, 1, 2]
    for (_, _, a), (_, _, b) in zip(cached, naive, strict=True):
        assert torch.allclose(a.logits, b.logits, atol=1e-4)
        assert torch.allclose(a.logvar, b.logvar, atol=1e-4)


def test_missing_modality_is_zeroed_at_every_fusion_stage():
    model, _ = small_dense("baseline")
    model.eval()
    x = {m: torch.randn(2, *s) for m, s in SHAPES.items()}
    only_rgb = torch.tensor([[True, False]] * 2)
    ref = model(x, only_rgb).logits
    junk = dict(x, depth=torch.full_like(x["depth"], float("nan")))
    assert torch.equal(model(junk, only_rgb).logits, ref)


def test_dense_input_errors():
    model, _ = small_dense()
    with pytest.raises(BatchError, match="share H x W"):
        model({"rgb": torch.randn(1, 3, 64, 64), "depth": torch.randn(1, 1, 32, 64)},
              torch.ones(1, 2, dtype=bool))
    with pytest.raises(BatchError, match="modality 'depth' must be \\(B, 1, H, W\\)"):
        model({"rgb": torch.randn(1, 3, 64, 64), "depth": torch.randn(1, 3, 64, 64)},
              torch.ones(1, 2, dtype=bool))


def test_miou_ignores_void_and_matches_hand_counts():
    m = SegmentationIoU(3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float()  # (1, 3, 6)
    m.update(logits, target)
    out = {k: float(v) for k, v in m.compute().items()}
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    assert out["iou/0"] == pytest.approx(1 / 3) and out["iou/1"] == pytest.approx(2 / 3)
    assert out["iou/2"] == 0.0 and out["miou"] == pytest.approx(1 / 3)
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)


def test_objective_ignores_void_pixels():
    from dmrnet.methods.objectives import MultimodalObjective

    obj = MultimodalObjective()
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [255, 255]]])
    loss = obj.per_sample(logits, target)
    ref = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], target[:, 0, 0])
    assert torch.allclose(loss, ref.view(1))


def test_nyuv2_prepared_layout_and_errors(tmp_path):
    root = make_nyuv2_prepared(tmp_path / "nyu")
    data = nyuv2(root, size=[64, 64], class_weighting="median_frequency")
    assert data.input_shapes == {"rgb": (3, 64, 64), "depth": (1, 64, 64)}
    assert data.num_classes == 40 and data.info["sizes"] == {"train": 7, "val": 1, "test": 3}
    item = data.test[0]
    assert item["target"].shape == (64, 64)
    assert bool((item["target"][:2] == 255).all())  # void 0 -> ignored
    assert int(item["target"][item["target"] != 255].max()) <= 5
    assert len(data.info["class_weights"]) == 40
    assert data.info["preprocessing"]["depth"]["std"] > 0
    Image.fromarray(np.full((64, 64), 41, np.uint8)).save(root / "test/labels_40/test0001.png")
    with pytest.raises(DataError, match="test0001.png' has class 41, above the 40-class"):
        data.test[1]
    Image.fromarray(np.zeros((32, 64), np.uint16)).save(root / "test/depth/test0002.png")
    with pytest.raises(DataError, match="sample 'test/test0002': rgb \\(64, 64\\), depth "
                                        "\\(32, 64\\)"):
        data.test[2]
    with pytest.raises(DataError, match="expected \\(480, 640\\) \\(set size\\)"):
        nyuv2(root)
    (root / "train.txt").write_text("train0000\nghost\n")
    with pytest.raises(DataError, match="ghost'.png listed in train.txt does not exist"):
        nyuv2(root, size=[64, 64])
    with pytest.raises(DataError, match="13- and 40-class"):
        nyuv2(root, num_classes=20)


def test_nyuv2_mat_reader(tmp_path):
    root = make_nyuv2_mat(tmp_path / "mat")
    data = nyuv2(root, mat="nyu_depth_v2_labeled.mat", class_mapping="mapping.txt",
                 split_file="splits.json", size=[64, 64])
    assert data.info["sizes"] == {"train": 6, "val": 1, "test": 3}
    # the MATLAB-ordered arrays come back as the scene that was written (rows, columns, mm)
    from .fixtures import _scene_arrays

    n = data.test.load.indices[0]
    rgb, depth, lab = _scene_arrays(n, 64)
    raw = data.test.load(0)
    assert torch.equal(raw[0], torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.allclose(raw[1][0], torch.from_numpy(depth.astype(np.float32)), atol=0.5)
    expected = torch.from_numpy(lab.astype(np.int64))
    assert torch.equal(raw[2], torch.where(expected == 0, 255, expected - 1))
    with pytest.raises(DataError, match="needs class_mapping"):
        nyuv2(root, mat="nyu_depth_v2_labeled.mat")
    (root / "bad.json").write_text(json.dumps({"train": [1, 99], "test": [2]}))
    with pytest.raises(DataError, match="names image 99, but the .mat holds 10"):
        nyuv2(root, mat="nyu_depth_v2_labeled.mat", class_mapping="mapping.txt",
              split_file="bad.json", size=[64, 64])


def test_rgbd_shapes_is_deterministic_and_designed():
    a, b = rgbd_shapes(seed=3, train=4, val=2, test=2), rgbd_shapes(seed=3, train=4, val=2, test=2)
    assert torch.equal(a.test[1]["target"], b.test[1]["target"])
    assert torch.equal(a.test[1]["inputs"]["depth"], b.test[1]["inputs"]["depth"])
    assert a.class_names[0] == "background" and a.num_classes == 6
    with pytest.raises(DataError, match="reads no folder"):
        rgbd_shapes(root="/somewhere")


def fit_test(config: str, out: Path, extra: list[str]) -> dict[str, float]:
    common = ["--config", str(ROOT / "configs" / "smoke" / config),
              "--trainer.default_root_dir", str(out), *extra]
    assert main(["fit", *common]) == 0
    ckpt = sorted(out.glob("lightning_logs/version_0/checkpoints/best-*.ckpt"))[0]
    assert main(["test", *common, "--ckpt_path", str(ckpt)]) == 0
    with open(out / "lightning_logs/version_1/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for r in rows for k, v in r.items() if v not in ("", None)}


def test_nyuv2_cli_fit_and_test_prepared_and_mat(tmp_path):
    root = make_nyuv2_prepared(tmp_path / "nyu")
    m = fit_test("nyuv2.yaml", tmp_path / "run1", ["--data.root", str(root)])
    for subset in ("rgb", "depth", "rgb+depth"):
        assert 0.0 <= m[f"test/{subset}/miou"] <= 1.0
        assert f"test/{subset}/iou/0" in m
    mat = make_nyuv2_mat(tmp_path / "mat")
    m = fit_test("nyuv2.yaml", tmp_path / "run2", [
        "--data.root", str(mat), "--data.dataset_kwargs.mat", "nyu_depth_v2_labeled.mat",
        "--data.dataset_kwargs.class_mapping", "mapping.txt",
        "--data.dataset_kwargs.split_file", "splits.json"])
    assert "test/rgb+depth/miou" in m


def test_rgbd_shapes_benchmark_and_prediction_picture(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["benchmark", "--dataset", "rgbd-shapes", "--seeds", "0", "--epochs", "1",
                 "--methods", "dmrnet", "--out", str(out), "--no-progress",
                 "--set", "encoder_kwargs={width: 8}", "--option", "hcr_warmup_epochs=1"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "miou" and set(res["runs"][0]["per_subset"]) == {
        "rgb", "depth", "rgb+depth"}
    assert "iou/5" in res["runs"][0]["per_subset_all"]["rgb"]
    from dmrnet.data.rgbd import render_scene

    rgb, depth, label = render_scene(7, 64)
    Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(tmp_path / "rgb.png")
    Image.fromarray(depth[0].numpy().astype(np.uint16)).save(tmp_path / "depth.png")
    Image.fromarray((label.numpy() + 1).astype(np.uint8)).save(tmp_path / "label.png")
    ckpt = out / "checkpoints" / "dmrnet-seed0" / "best.ckpt"
    pic = tmp_path / "pred.png"
    args = ["predict", "--checkpoint", str(ckpt), "--input", f"rgb={tmp_path / 'rgb.png'}",
            "--input", f"depth={tmp_path / 'depth.png'}", "--label", str(tmp_path / "label.png"),
            "--out", str(pic)]
    assert main(args) == 0
    assert pic.stat().st_size > 5000
    # .npy inputs, as the predict help says (issue 26: it opened them as images)
    np.save(tmp_path / "rgb.npy", rgb.numpy().astype(np.float32))
    np.save(tmp_path / "depth.npy", depth.numpy().astype(np.float32))
    assert main(["predict", "--checkpoint", str(ckpt), "--input", f"rgb={tmp_path / 'rgb.npy'}",
                 "--input", f"depth={tmp_path / 'depth.npy'}", "--out",
                 str(tmp_path / "npy.png")]) == 0, capsys.readouterr().err
    assert (tmp_path / "npy.png").stat().st_size > 5000
    big = tmp_path / "rgb80.png"  # any size; the absent depth takes the given picture's
    Image.fromarray(render_scene(8, 80)[0].permute(1, 2, 0).numpy()).save(big)
    assert main(["predict", "--checkpoint", str(ckpt), "--input", f"rgb={big}", "--out",
                 str(tmp_path / "pred80.png")]) == 0
    assert main(args) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--input",
                 f"ir={tmp_path / 'rgb.png'}", "--out", str(tmp_path / "x.png")]) == 2
    assert "modality 'ir' is not one of" in capsys.readouterr().err
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    assert main(["predict", "--checkpoint", str(tmp_path / "bad.ckpt"), "--input",
                 f"rgb={tmp_path / 'rgb.png'}"]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
