"""ResNets, the CASIA-SURF mid-level fusion model, recipe-shaped passes, spoofing metrics."""

from __future__ import annotations

import pytest
import torch

from dmrnet.errors import ConfigError
from dmrnet.methods import build_method
from dmrnet.metrics import SpoofingErrorRates
from dmrnet.nn.resnet import ResNet, load_torchvision_state_dict


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_architectures():
    assert count(ResNet(3, (2, 2, 2, 2))) == 11_176_512  # torchvision ResNet-18 without fc
    assert count(ResNet(3, (3, 4, 6, 3))) == 21_284_672  # ResNet-34 layout without fc
    assert count(ResNet(1, (2, 2, 2, 2))) == 11_176_512 - 2 * 64 * 49


def test_frame_axis_is_pooled_over_time():
    net = ResNet(3).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    per_frame = torch.stack([net(x[:, t]) for t in range(3)], dim=1).mean(dim=1)
    assert torch.allclose(net(x), per_frame, atol=1e-5)


def test_cremad_recipe_model_forward_backward_at_real_shapes():
    shapes = {"audio": (1, 257, 188), "visual": (3, 224, 224)}
    model, objective = build_method(
        "dmrnet", modalities=list(shapes), input_shapes=shapes, num_classes=6,
        encoder="resnet", encoder_kwargs={"layers": [3, 4, 6, 3]}, embed_dim=1024,
    )
    assert count(model.encoders["visual"]) == 21_284_672
    x = {m: torch.randn(2, *s) for m, s in shapes.items()}
    avail = torch.tensor([[True, True], [True, False]])
    out = model.train()(x, avail)
    assert out.logits.shape == (2, 6) and out.mu.shape == (2, 1024)
    loss = objective(out, torch.tensor([0, 5]), model.space.indices_of(avail))["loss"]
    loss.backward()
    assert model.encoders["audio"].conv1.weight.grad is not None
    assert model.embedding.logvar[0].weight.grad is not None  # KL reaches the variance head


def test_casia_mid_level_fusion_model_embeds_maps():
    shapes = {m: (3, 112, 112) for m in ("rgb", "depth", "ir")}
    model, objective = build_method(
        "dmrnet", modalities=list(shapes), input_shapes=shapes, num_classes=2,
        encoder="se_resnet_stem", trunk="resnet_trunk", embed_dim=512,
        method_kwargs={"hcr_subsets": ["rgb", "ir", "rgb+ir"], "hcr_warmup_epochs": 0,
                       "beta": 0.7},
    )
    assert isinstance(model.embedding.mu[0], torch.nn.Conv2d)
    assert isinstance(model.embedding.mu[1], torch.nn.BatchNorm2d)
    x = {m: torch.randn(2, *s) for m, s in shapes.items()}
    avail = torch.tensor([[True, False, True], [False, True, False]])
    out = model.train()(x, avail)
    assert out.mu.shape == (2, 512, 4, 4) and out.logits.shape == (2, 2)
    terms = objective(out, torch.tensor([1, 0]), model.space.indices_of(avail))
    terms["loss"].backward()
    assert set(terms) == {"task", "kl", "hcr", "loss"}
    # cached all-subset evaluation works on maps too
    from dmrnet.evaluation import naive_subset_outputs, subset_outputs

    model.eval()
    full = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        for (s, _, a), (_, _, b) in zip(subset_outputs(model, x, full),
                                        naive_subset_outputs(model, x, full), strict=True):
            assert torch.allclose(a.logits, b.logits, atol=1e-4), s


def test_mixing_vector_and_map_encoders_is_refused():
    with pytest.raises(ConfigError, match="same kind of features"):
        build_method("dmrnet", modalities=["a", "b"], input_shapes={"a": (3, 32, 32), "b": (4,)},
                     num_classes=2, encoders={"a": {"name": "se_resnet_stem"}, "b": {}})


def test_local_torchvision_weights(tmp_path):
    src = ResNet(3)
    state = {k: v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save(state, tmp_path / "r18.pth")
    mono = ResNet(1)
    assert load_torchvision_state_dict(mono, tmp_path / "r18.pth") == []
    assert torch.allclose(mono.conv1.weight, src.conv1.weight.mean(1, keepdim=True))
    assert torch.equal(mono.layer4[1].bn2.weight, src.layer4[1].bn2.weight)
    model, _ = build_method("baseline", modalities=["rgb"], input_shapes={"rgb": (3, 32, 32)},
                            num_classes=3, encoder="resnet18",
                            encoder_kwargs={"weights": str(tmp_path / "r18.pth")})
    assert torch.equal(model.encoders["rgb"].conv1.weight, src.conv1.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load weights"):
        load_torchvision_state_dict(ResNet(3), tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        load_torchvision_state_dict(ResNet(3), tmp_path / "none.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match="do not fit: conv1.weight"):
        load_torchvision_state_dict(ResNet(3), tmp_path / "odd.pth")


def test_apcer_bpcer_acer_against_hand_counts():
    # 4 attacks (label 0): 1 accepted as real; 6 real (label 1): 2 rejected as attack
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred_real = torch.tensor([1, 0, 0, 0, 1, 1, 0, 1, 0, 1])
    logits = torch.stack([1 - pred_real.float(), pred_real.float()], dim=1)
    m = SpoofingErrorRates()
    m.update(logits[:5], target[:5])
    m.update(logits[5:], target[5:])
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["apcer"] == pytest.approx(1 / 4)
    assert out["bpcer"] == pytest.approx(2 / 6)
    assert out["acer"] == pytest.approx((1 / 4 + 2 / 6) / 2)
    assert out["accuracy"] == pytest.approx(7 / 10)
    only_real = SpoofingErrorRates()
    only_real.update(logits[4:], target[4:])
    res = only_real.compute()
    assert torch.isnan(res["apcer"]) and float(res["bpcer"]) == pytest.approx(2 / 6)
