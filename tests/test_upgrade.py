"""Files written by dmrnet 0.1 (method options and optimisation settings as top-level module
settings) and 0.2 (network and training settings as top-level module settings) still load,
with the same numbers; their settings are read in today's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.errors import ConfigError
from dmrnet.methods import checkpoint_network, upgrade_record, upgrade_settings
from dmrnet.predict import load_module
from dmrnet.serving import load_model, save_model
from dmrnet.training import MultimodalModule

SHAPES = {"a": [6], "b": [4]}
NET = {"network": {"encoder_kwargs": {"out_features": 8, "hidden": [16]}, "embed_dim": 8}}


def trained(method: str, **kwargs) -> MultimodalModule:
    torch.manual_seed(0)
    module = MultimodalModule(list(SHAPES), SHAPES, 3, method=method, **NET, **kwargs)
    module.model.train()
    for _ in range(2):  # non-trivial BatchNorm statistics
        module.model({k: torch.randn(8, *s) for k, s in SHAPES.items()},
                     torch.ones(8, 2, dtype=torch.bool))
    return module.eval()


def as_version_01(hparams: dict, **extra: object) -> dict:
    """The module settings as dmrnet 0.1 wrote them: options, optimisation, network and
    training flat."""
    old = {k: v for k, v in hparams.items()
           if k not in ("method_kwargs", "optim", "network", "training")}
    old.update(hparams.get("method_kwargs") or {})
    old.update(hparams["optim"])
    old.update(hparams.get("network") or {})
    old.update(hparams.get("training") or {})
    old.update(extra)
    return old


def old_checkpoint(module: MultimodalModule, path, **extra: object):
    torch.save({"hyper_parameters": as_version_01(dict(module.hparams), **extra),
                "state_dict": module.state_dict(),
                "dmrnet": {"hard_subsets": ["b"], "subset_variance": {"a": 0.5}}}, path)
    return path


def outputs(network: torch.nn.Module) -> torch.Tensor:
    x = {k: torch.randn(4, *s, generator=torch.Generator().manual_seed(1))
         for k, s in SHAPES.items()}
    return network.eval()(x, torch.tensor([[True, False], [True, True]] * 2)).logits


def test_old_layout_moves_options_and_optimisation():
    old = {"method": "dmrnet", "alpha": 0.01, "beta": 0.5, "hcr_top_k": 1, "hcr_subsets": None,
           "lr": 0.1, "optimizer": "sgd", "embed_dim": 8}
    assert upgrade_settings(old) == {"method": "dmrnet", "network": {"embed_dim": 8},
                                     "method_kwargs": {"alpha": 0.01, "beta": 0.5,
                                                       "hcr_top_k": 1},
                                     "optim": {"lr": 0.1, "optimizer": "sgd"}}
    # a method without those options drops the unset values 0.1 stored for every method
    assert upgrade_settings({"method": "baseline", "alpha": None, "beta": None}) == {
        "method": "baseline", "method_kwargs": None}
    new = {"method": "dmrnet", "method_kwargs": {"beta": 0.3}, "optim": {"lr": 0.1},
           "network": {"embed_dim": 8}, "training": {"metric": "acer"}}
    assert upgrade_settings(new) == new
    # 0.2: the network's and the training's settings at the top level
    flat = {"method": "dmrnet", "encoder": "mlp", "embed_dim": 8, "metric": "acer",
            "subset_weights": None, "optim": {"lr": 0.1}}
    assert upgrade_settings(flat) == {"method": "dmrnet", "optim": {"lr": 0.1},
                                      "network": {"encoder": "mlp", "embed_dim": 8},
                                      "training": {"metric": "acer", "subset_weights": None}}
    with pytest.raises(ConfigError, match="'embed_dim' is given twice"):
        upgrade_settings({"embed_dim": 8, "network": {"embed_dim": 16}})


def test_old_checkpoint_loads_with_its_options_and_weights(tmp_path):
    module = trained("dmrnet", method_kwargs={"beta": 0.5, "hcr_warmup_epochs": 2},
                     optim={"lr": 0.01, "optimizer": "sgd"})
    loaded = load_module(old_checkpoint(module, tmp_path / "old.ckpt"))
    assert loaded.hparams["method_kwargs"]["beta"] == 0.5
    assert loaded.objective.hcr.beta == 0.5 and loaded.objective.hcr.warmup_epochs == 2
    assert loaded.optim.lr == 0.01 and loaded.optim.optimizer == "sgd"
    assert loaded.objective_state["hard_subsets"] == ["b"]  # 0.2's record, upgraded
    assert loaded.objective_state["subset_variance"] == {"a": 0.5}
    assert torch.equal(outputs(loaded.model), outputs(module.model))
    assert torch.equal(outputs(checkpoint_network(str(tmp_path / "old.ckpt"))),
                       outputs(module.model))


def test_old_mmanet_checkpoint_with_top_level_teacher_loads(tmp_path):
    module = trained("mmanet", method_kwargs={"teacher_checkpoint": "gone/best.ckpt"})
    path = old_checkpoint(module, tmp_path / "old.ckpt")
    assert torch.load(path)["hyper_parameters"]["teacher_checkpoint"] == "gone/best.ckpt"
    loaded = load_module(path)
    assert loaded.hparams["method_kwargs"] == {"teacher_checkpoint": "gone/best.ckpt"}
    assert torch.equal(outputs(loaded.model), outputs(module.model))


def test_old_baseline_checkpoint_with_unset_dmrnet_options_loads(tmp_path):
    module = trained("baseline")
    path = old_checkpoint(module, tmp_path / "old.ckpt", alpha=None, beta=None,
                          hcr_warmup_epochs=5, hcr_top_k=1, hcr_candidates="unimodal",
                          hcr_subsets=None)
    assert torch.equal(outputs(load_module(path).model), outputs(module.model))


def test_old_model_folder_loads(tmp_path):
    module = trained("dmrnet", method_kwargs={"beta": 0.5})
    path = save_model(module, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["model"] = as_version_01({**config["model"], "optim": {}})
    assert config["model"]["beta"] == 0.5  # the old layout
    (path / "config.json").write_text(json.dumps(config))
    x = {"a": np.ones((2, 6), np.float32)}
    np.testing.assert_allclose(load_model(path).predict(x).probs,
                               module.model.eval()({"a": torch.ones(2, 6),
                                                    "b": torch.zeros(2, 4)},
                                                   torch.tensor([[True, False]] * 2))
                               .logits.softmax(1).detach().numpy(), atol=1e-6)


def test_checkpoint_with_settings_from_a_newer_dmrnet_is_refused_in_one_line(tmp_path):
    module = trained("baseline")
    hparams = {**module.hparams, "future_setting": 1}
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict()},
               tmp_path / "new.ckpt")
    with pytest.raises(ConfigError, match="settings this dmrnet does not know.*upgrade dmrnet"):
        load_module(tmp_path / "new.ckpt")


def test_old_checkpoint_without_hcr_weights_loads_its_hard_mask(tmp_path):
    module = trained("dmrnet", method_kwargs={"hcr_subsets": ["b"], "hcr_warmup_epochs": 0})
    module.objective.hcr.select()
    state = {k: v for k, v in module.state_dict().items() if k != "objective.hcr.weight"}
    torch.save({"hyper_parameters": as_version_01(dict(module.hparams)), "state_dict": state},
               tmp_path / "old.ckpt")
    hcr = load_module(tmp_path / "old.ckpt").objective.hcr
    assert hcr.weights() == {"b": 1.0} and not hcr.warming_up


V020 = Path(__file__).parent / "data" / "v0_2_0"
"""A checkpoint and a model folder written by dmrnet 0.2.0 (commit d8aa71d: ``dmrnet benchmark
--dataset synthetic --methods dmrnet --seeds 0 --epochs 2 --embed-dim 8 --option
hcr_warmup_epochs=1 --set 'encoder_kwargs={hidden: [16]}'`` and ``dmrnet export``), with the
logits 0.2.0 gave on fixed inputs with one CPU thread (``reference.npz``)."""


@pytest.fixture
def one_thread():
    """One CPU thread, as the reference was computed (float sums depend on the count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_files_written_by_0_2_0_load_with_the_same_outputs_and_record(one_thread):
    ref = np.load(V020 / "reference.npz")
    x = {m: torch.from_numpy(ref[f"x_{m}"]) for m in ("strong", "medium", "weak")}
    avail = torch.from_numpy(ref["avail"])
    module = load_module(V020 / "dmrnet.ckpt")
    with torch.no_grad():
        assert np.array_equal(module.model.eval()(x, avail).logits.numpy(),
                              ref["checkpoint_logits"])
        assert np.array_equal(load_model(V020 / "model").model(x, avail).logits.numpy(),
                              ref["folder_logits"])
    # 0.2.0 kept HCR's choice as top-level keys of the checkpoint's record: it is the
    # objective's standing choice now, and the list of choices is as it was
    assert module.objective_state["hard_subsets"] == ["strong"]
    assert module.objective_state["subset_variance"]["strong"] == pytest.approx(1.5693627)
    assert [s["hard_subsets"] for s in module.selections] == [["strong"]]


def test_a_0_2_0_run_record_is_read_in_todays_layout():
    """``--resume`` keeps a finished benchmark's runs: one written by 0.2.0 (HCR's choice as
    top-level keys) gets the objective's standing choice that reports print."""
    run = {"method": "dmrnet", "seed": 0, "hard_subsets": ["strong"],
           "subset_variance": {"strong": 1.5, "weak": 1.3}, "selections": []}
    up = upgrade_record(run)
    assert up["objective_state"] == {"summary": "hard subsets strong", "hard_subsets": ["strong"],
                                     "subset_variance": {"strong": 1.5, "weak": 1.3}}
    assert "hard_subsets" not in up and up["method"] == "dmrnet"
    assert upgrade_record(up) == up  # today's layout passes unchanged
    nothing = upgrade_record({"method": "baseline", "hard_subsets": [], "subset_variance": {}})
    assert nothing["objective_state"] == {}


def test_dmrnet_test_reads_a_0_2_checkpoints_flat_settings(tmp_path, capsys):
    """``dmrnet test --ckpt_path`` builds the model from the checkpoint's own settings, as
    Lightning's CLI does; 0.2 saved them flat (``embed_dim: 8``), read in today's layout.
    Without the upgrade the parser refuses ``model.embed_dim``, or the network would be built
    with the default embedding and the weights would not fit."""
    from dmrnet.cli import main

    code = main(["test", "--data.dataset", "synthetic", "--ckpt_path",
                 str(V020 / "dmrnet.ckpt"), "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "test split" in out.out and "worst subset" in out.out
