"""HCR's selection rules beside the authors' variance rule: validation loss and error per
subset (never test), re-selection every N epochs, soft weights; logged per epoch."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from dmrnet.errors import ConfigError
from dmrnet.methods import build_method
from dmrnet.methods.objectives import HardCombinationRegularizer
from dmrnet.subsets import SubsetSpace
from dmrnet.training import MultimodalDataModule, MultimodalModule

NAMES = SubsetSpace(["a", "b", "c"]).names  # a, b, c, a+b, a+c, b+c, a+b+c


def test_val_error_rule_ranks_validation_errors_and_waits_for_them():
    hcr = HardCombinationRegularizer(NAMES, beta=1.0, warmup_epochs=1, rule="val_error")
    assert hcr.uses_validation
    assert hcr.select() == [] and hcr.warming_up  # no validation seen yet: no choice
    hcr.observe_validation({"a": 0.1, "b": 0.4, "c": 0.3, "a+b": 0.9, "a+b+c": 0.0})
    assert hcr.end_epoch(0) and hcr.hard_names == ["b"]  # a+b is not a unimodal candidate
    hcr_all = HardCombinationRegularizer(NAMES, warmup_epochs=1, rule="val_error", top_k=2,
                                         candidates="all")
    hcr_all.observe_validation({"a": 0.1, "b": 0.4, "c": 0.3, "a+b": 0.9})
    hcr_all.select()
    assert hcr_all.hard_names == ["b", "a+b"]  # unmeasured subsets are never chosen


def test_reselection_every_n_epochs_uses_the_latest_validation():
    hcr = HardCombinationRegularizer(NAMES, warmup_epochs=2, rule="val_error", every=2)
    assert [hcr.due(e) for e in range(7)] == [False, True, True, True, True, True, True]
    hcr.observe_validation({"a": 0.5, "b": 0.1, "c": 0.1})
    assert hcr.end_epoch(1) and hcr.hard_names == ["a"]
    assert [hcr.due(e) for e in range(2, 7)] == [False, True, False, True, False]
    hcr.observe_validation({"a": 0.1, "b": 0.1, "c": 0.6})
    assert not hcr.end_epoch(2) and hcr.hard_names == ["a"]
    assert hcr.end_epoch(3) and hcr.hard_names == ["c"]


def test_variance_rule_reselects_from_the_window_since_the_last_choice():
    hcr = HardCombinationRegularizer(NAMES, warmup_epochs=1, every=1)
    idx = torch.tensor([0, 1, 2])
    hcr.accumulate(idx, torch.tensor([1.0, 5.0, 2.0]))
    hcr.end_epoch(0)
    assert hcr.hard_names == ["b"]
    hcr.accumulate(idx, torch.tensor([9.0, 1.0, 2.0]))  # still accumulated after warm-up
    hcr.end_epoch(1)
    assert hcr.hard_names == ["a"]  # only the new window counts


def test_soft_weights_follow_relative_difficulty():
    hcr = HardCombinationRegularizer(NAMES, beta=0.5, warmup_epochs=1, rule="val_error",
                                     weighting="soft")
    hcr.observe_validation({"a": 0.1, "b": 0.2, "c": 0.3})
    hcr.select()
    assert hcr.weights() == pytest.approx({"a": 0.5, "b": 1.0, "c": 1.5})  # mean weight 1
    loss = torch.tensor([1.0, 1.0, 2.0, 4.0])
    idx = torch.tensor([0, 1, 2, 6])  # a, b, c, a+b+c (not a candidate: weight 0)
    assert torch.allclose(hcr(loss, idx), torch.tensor(0.5 * (0.5 + 1.0 + 3.0) / 4))


def test_val_loss_rule_takes_each_subsets_mean_task_loss():
    shapes = {"a": [4], "b": [3]}
    _, objective = build_method(
        "dmrnet", modalities=list(shapes), input_shapes=shapes, num_classes=3,
        method_kwargs={"hcr_rule": "val_loss", "hcr_warmup_epochs": 1})
    assert objective.observes_validation
    torch.manual_seed(0)
    logits = [torch.randn(5, 3) for _ in range(3)]
    target = torch.randint(0, 3, (5,))
    for s, lg in enumerate(logits):  # a, b, a+b; two batches each
        objective.observe(s, lg[:2], target[:2])
        objective.observe(s, lg[2:], target[2:])
    objective.end_validation({}, reduce=lambda t: t)
    expected = {n: F.cross_entropy(lg, target).item()
                for n, lg in zip(["a", "b", "a+b"], logits, strict=True)}
    assert objective.hcr.validation_difficulty() == pytest.approx(expected)
    selection = objective.end_train_epoch(0, reduce=lambda t: t)
    unimodal = {k: v for k, v in expected.items() if "+" not in k}
    assert selection.state["hard_subsets"] == [max(unimodal, key=unimodal.get)]
    assert selection.record["rule"] == "val_loss"
    assert selection.record["difficulty"] == pytest.approx(expected)


@pytest.mark.parametrize(("options", "message"), [
    ({"hcr_rule": "test_error"}, "hcr_rule must be one of variance, val_loss, val_error"),
    ({"hcr_weighting": "hard"}, "hcr_weighting must be 'top_k' or 'soft'"),
    ({"hcr_every": -1}, "hcr_every must be a whole number >= 0"),
])
def test_bad_rule_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("dmrnet", modalities=["a", "b"], input_shapes={"a": [3], "b": [3]},
                     num_classes=2, method_kwargs=options)


def test_validation_rules_train_through_lightning_on_validation_only(tmp_path):
    data = MultimodalDataModule("synthetic", seed=0, batch_size=256, eval_batch_size=500)
    module = MultimodalModule(data.modalities, data.input_shapes, data.num_classes,
                              method_kwargs={"hcr_rule": "val_error", "hcr_warmup_epochs": 1,
                                             "hcr_every": 1},
                              network={"embed_dim": 8,
                                       "encoder_kwargs": {"out_features": 8, "hidden": [8]}})
    seen = []
    observe = module.objective.observe
    module.objective.observe = lambda *a: (  # type: ignore[method-assign]
        seen.append((module.trainer.state.stage.value, module.trainer.sanity_checking)),
        observe(*a))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1, default_root_dir=tmp_path,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version=""))
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    assert seen and set(seen) == {("validate", False)}  # no sanity check, no test batch
    assert [s["epoch"] for s in module.selections] == [0, 1, 2]
    for s in module.selections:
        assert s["rule"] == "val_error" and len(s["hard_subsets"]) == 1
        unimodal = {k: v for k, v in s["difficulty"].items() if "+" not in k}
        assert s["hard_subsets"] == [max(unimodal, key=unimodal.get)]  # the highest error
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    logged = [r for r in rows if r.get("subset_weight/weak")]
    assert len(logged) == 3  # every epoch once chosen


def test_benchmark_takes_the_rules_as_options_and_records_each_choice(tmp_path):
    import json

    from dmrnet.cli import main

    out = tmp_path / "b"
    assert main(["benchmark", "--option", "hcr_rule=val_loss", "--option", "hcr_every=2",
                 "--option", "hcr_warmup_epochs=1", "--modalities", "pix,mor", "--seeds", "0",
                 "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["baseline"]["selections"] == []  # the option went to dmrnet only
    choices = runs["dmrnet"]["selections"]
    assert [c["epoch"] for c in choices][:1] == [0] and all(c["rule"] == "val_loss"
                                                            for c in choices)
    assert set(choices[0]["difficulty"]) == {"pix", "mor", "pix+mor"}
