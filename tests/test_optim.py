"""OptimConfig: the optimisers and schedules it builds, and the settings it refuses."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from dmrnet.errors import ConfigError
from dmrnet.optim import OptimConfig, configure
from dmrnet.training import MultimodalDataModule, MultimodalModule


def never() -> int:
    raise AssertionError("only the one-cycle schedule needs the number of steps")


def lrs(cfg: OptimConfig, epochs: int) -> list[float]:
    """The learning rate of each epoch under ``cfg``."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    built = configure(cfg, params, epochs, never)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("name", "kind"), [("adamw", torch.optim.AdamW),
                                            ("adam", torch.optim.Adam),
                                            ("sgd", torch.optim.SGD)])
def test_optimizers_take_their_settings(name, kind):
    cfg = OptimConfig(optimizer=name, lr=0.05, weight_decay=0.01, momentum=0.5, nesterov=True,
                      scheduler="none")
    opt = configure(cfg, [torch.nn.Parameter(torch.zeros(1))], 3, never)
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.5 and group["nesterov"] is True


def test_cosine_after_linear_warmup():
    got = lrs(OptimConfig(lr=1.0, scheduler="cosine", warmup_epochs=2), 6)
    assert got[0] == pytest.approx(0.1) and got[1] == pytest.approx(0.55)  # from 0.1 x lr
    # then cosine over the 4 remaining epochs, starting at lr
    assert got[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])


def test_multistep_milestones_count_from_the_first_epoch():
    got = lrs(OptimConfig(lr=1.0, scheduler="multistep", milestones=[3, 5], gamma=0.1,
                          warmup_epochs=1), 6)
    assert got == pytest.approx([0.1, 1.0, 1.0, 0.1, 0.1, 0.01])


def test_onecycle_steps_per_batch_and_asks_for_the_step_count():
    built = configure(OptimConfig(lr=0.1, scheduler="onecycle"),
                      [torch.nn.Parameter(torch.zeros(1))], 2, lambda: 10)
    assert built["lr_scheduler"]["interval"] == "step"
    assert built["lr_scheduler"]["scheduler"].total_steps == 10


def test_onecycle_trains_through_lightning(tmp_path):
    data = MultimodalDataModule("synthetic", seed=0, batch_size=256)
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes,
                              method="baseline", optim={"scheduler": "onecycle", "lr": 0.01},
                              network={"embed_dim": 8,
                                       "encoder_kwargs": {"out_features": 8, "hidden": [8]}})
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == trainer.lr_scheduler_configs[0].scheduler.last_epoch


@pytest.mark.parametrize(("settings", "message"), [
    ({"optimizer": "lion"}, "unknown optimizer 'lion'; choose adamw, adam, sgd"),
    ({"scheduler": "step"}, "unknown scheduler 'step'"),
    ({"lr": 0.0}, "optim.lr must be a finite number > 0; got 0.0"),
    ({"lr": float("inf")}, "optim.lr must be a finite number > 0"),
    ({"weight_decay": -1}, "optim.weight_decay must be a finite number >= 0"),
    ({"momentum": 1.0}, "optim.momentum must be a number in \\[0, 1\\)"),
    ({"warmup_epochs": 1.5}, "optim.warmup_epochs must be a whole number >= 0"),
    ({"lr": True}, "optim.lr must be"),
    ({"scheduler": "multistep"}, "needs optim.milestones"),
    ({"lrr": 0.1}, "optim has no setting 'lrr'"),
])
def test_bad_settings_are_named_when_the_model_is_made(settings, message):
    with pytest.raises(ConfigError, match=message):
        MultimodalModule(["a"], {"a": [3]}, 2, method="baseline", optim=settings)


def test_module_stores_optim_as_a_plain_mapping():
    module = MultimodalModule(["a"], {"a": [3]}, 2, method="baseline", optim={"lr": 0.02})
    assert module.hparams["optim"] == {**OptimConfig().to_dict(), "lr": 0.02}
    assert type(module.hparams["optim"]) is dict  # checkpoints load with weights_only=True
