"""Unimodal teachers (a booster of the DMRNet family) and the preset that uses them: stages,
encoder initialisation (fresh runs only), feature distillation, and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmrnet.cli import main
from dmrnet.determinism import cuda_nondeterministic
from dmrnet.errors import ConfigError
from dmrnet.methods import get_method
from dmrnet.methods.dmrnet import preset_heads
from dmrnet.methods.teachers import UnimodalTeachers, distillation_loss, modality_encoder
from dmrnet.training import MultimodalModule

from .test_boosters import NET, batch, build
from .test_determinism import DENSE, VECTORS, make_batch, run_step


def save_teacher(path, modality, shapes=VECTORS, seed=0, **net):
    """A dedicated one-modality model's checkpoint in the training format; returns the module."""
    torch.manual_seed(seed)
    module = MultimodalModule([modality], {modality: shapes[modality]}, 3, method="dedicated",
                              **(net or NET))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               path)
    return module


def teachers(tmp_path, shapes=VECTORS, **net):
    paths, modules = {}, {}
    for i, m in enumerate(shapes):
        paths[m] = str(tmp_path / f"{m}.ckpt")
        modules[m] = save_teacher(paths[m], m, shapes, seed=10 + i, **net)
    return paths, modules


def test_teacher_stages_come_first_and_feed_the_student():
    settings = {"method_kwargs": {"teacher_init": True}, "subset_weights": {"a": 1, "*": 1},
                "embed_dim": 8}
    stages = get_method("baseline").stages(settings, list(VECTORS))
    assert [s.name for s in stages] == ["teacher-a", "teacher-b", "teacher-c", ""]
    for stage, m in zip(stages, VECTORS, strict=False):
        assert stage.modalities == [m] and stage.settings["method"] == "dedicated"
        assert "method_kwargs" not in stage.settings and "subset_weights" not in stage.settings
        assert stage.settings["embed_dim"] == 8
    student = stages[-1]
    assert student.settings["method"] == "baseline" and student.modalities is None
    assert student.needs == {f"method_kwargs.teacher_checkpoints.{m}": f"teacher-{m}"
                             for m in VECTORS}
    assert [s.name for s in get_method("baseline").stages({}, list(VECTORS))] == [""]


def test_init_copies_each_teachers_encoder_and_nothing_else(tmp_path):
    paths, modules = teachers(tmp_path)
    net, _ = build(teacher_init=True, teacher_checkpoints=paths)
    head = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoders.")}
    context = get_method("baseline").training_context(
        _config(teacher_init=True, teacher_checkpoints=paths), net)
    assert isinstance(context, UnimodalTeachers)
    context.initialise(net)
    for m, module in modules.items():
        mine, theirs = net.encoders[m].state_dict(), module.model.encoders[m].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in head.items())
    assert context({}, "cpu") == {}  # init only: no teacher forward in training steps


def _config(**options):
    from dmrnet.methods import ModelConfig
    return ModelConfig(method="baseline", modalities=list(VECTORS), input_shapes=VECTORS,
                       num_classes=3, method_kwargs=options, **NET)


def test_distillation_term_is_the_mean_squared_feature_distance_over_available_modalities(
        tmp_path):
    paths, modules = teachers(tmp_path)
    net, objective = build(teacher_distill=0.5, teacher_checkpoints=paths)
    context = get_method("baseline").training_context(
        _config(teacher_distill=0.5, teacher_checkpoints=paths), net)
    x, avail, y = batch()
    out = net.train()(x, avail)
    extra = context(make_batch_of(x, avail, y), "cpu")
    feats = extra["teacher_features"]
    for j, m in enumerate(VECTORS):
        with torch.no_grad():
            assert torch.equal(feats[j], modules[m].model.eval().encoders[m](x[m]))
    per = torch.stack([(s - t).pow(2).mean(1) for s, t in
                       zip(out.modality_features, feats, strict=True)], 1)
    expected = 0.5 * (per * avail).sum() / avail.sum()
    terms = objective(out, y, torch.zeros(6, dtype=torch.long), **extra)
    assert torch.allclose(terms["teacher"], expected)
    assert torch.allclose(terms["loss"], terms["task"] + terms["teacher"])
    grads = torch.autograd.grad(terms["teacher"], list(net.parameters()), allow_unused=True)
    named = dict(zip([n for n, _ in net.named_parameters()], grads, strict=True))
    assert all(g is None for n, g in named.items() if not n.startswith("encoders."))
    same = [f.detach() for f in out.modality_features]
    assert float(distillation_loss(same, same, avail)) == 0.0
    assert net.eval()(x, avail).modality_features is None  # training only


def make_batch_of(x, avail, y):
    from dmrnet.batch import Batch
    return Batch(inputs=x, availability=avail, target=y)


@pytest.mark.parametrize(("options", "message"), [
    ({"teacher_distill": -1}, "teacher_distill must be a finite number >= 0"),
    ({"teacher_init": "yes"}, "teacher_init must be true or false"),
    ({"teacher_init": True, "teacher_checkpoints": "a.ckpt"},
     "teacher_checkpoints must map each modality"),
])
def test_bad_teacher_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        get_method("baseline").options(options)


def test_teacher_files_are_checked_before_training(tmp_path):
    paths, _ = teachers(tmp_path)
    net, _ = build()

    def setup(options):
        get_method("baseline").training_context(_config(**options), net).setup()

    with pytest.raises(ConfigError, match=r"missing \['c'\]: train a 'dedicated' model"):
        setup({"teacher_init": True, "teacher_checkpoints": {"a": paths["a"], "b": paths["b"]}})
    with pytest.raises(ConfigError, match="teacher_checkpoints names 'z'"):
        setup({"teacher_init": True, "teacher_checkpoints": {**paths, "z": paths["a"]}})
    with pytest.raises(ConfigError, match=r"the teacher of 'c' .* is a model of \['a'\]"):
        setup({"teacher_init": True, "teacher_checkpoints": {**paths, "c": paths["a"]}})
    wide = str(tmp_path / "wide.ckpt")
    save_teacher(wide, "a", network={"encoder_kwargs": {"out_features": 4, "hidden": [16]},
                                      "embed_dim": 8})
    context = get_method("baseline").training_context(
        _config(teacher_init=True, teacher_checkpoints={**paths, "a": wide}), net)
    with pytest.raises(ConfigError, match="encoder that does not fit the student's"):
        context.initialise(net)


def test_dense_models_take_teacher_streams_but_not_distillation(tmp_path):
    dense = {"network": {"architecture": "dense", "embed_dim": 16, "encoder_kwargs": {"width": 8},
                         "dense_kwargs": {"decoder_channels": [16, 8, 8]}},
             "training": {"metric": "miou"}}
    paths = {}
    for m in DENSE:
        paths[m] = str(tmp_path / f"{m}.ckpt")
        module = MultimodalModule([m], {m: DENSE[m]}, 3, method="dedicated", **dense)
        torch.save({"hyper_parameters": dict(module.hparams),
                    "state_dict": module.state_dict()}, paths[m])
    student = MultimodalModule(list(DENSE), DENSE, 3, method="tutored",
                               method_kwargs={"teacher_checkpoints": paths}, **dense)
    student.context.initialise(student.model)
    for m in DENSE:
        saved = torch.load(paths[m], weights_only=True)["state_dict"]
        mine = modality_encoder(student.model, m).state_dict()
        assert all(torch.equal(v, saved[f"model.streams.{m}.{k}"]) for k, v in mine.items())
    assert student.model.training and student.objective.part("unimodal") is None
    assert not hasattr(student.model, "ensemble_weight")  # no heads to vote on dense models
    with pytest.raises(ConfigError, match="teacher_distill applies to classification"):
        MultimodalModule(list(DENSE), DENSE, 3, method="baseline",
                         method_kwargs={"teacher_distill": 1.0}, **dense)


def test_preset_defaults_serving_without_teachers_and_deterministic_ops(tmp_path):
    opts = get_method("tutored").options(None)
    assert opts.teacher_init and opts.unimodal_weight is None and opts.unimodal_ensemble is None
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method="tutored", **NET)
    assert module.objective.unimodal.weight == 2.0 and module.model.unimodal is not None
    assert module.model.ensemble_weight == 0.5
    for options, vote in (({"unimodal_weight": 0}, 0.0), ({"unimodal_ensemble": 0}, 0.0),
                          ({"unimodal_weight": 1, "unimodal_ensemble": 2}, 2.0)):
        built = MultimodalModule(list(VECTORS), VECTORS, 3, method="tutored",
                                 method_kwargs=options, **NET)
        assert built.model.ensemble_weight == vote, options  # heads off: the vote is off too
    with pytest.raises(ConfigError, match="unimodal_ensemble needs unimodal_weight > 0"):
        get_method("tutored").options({"unimodal_weight": 0, "unimodal_ensemble": 1})
    with pytest.raises(ConfigError, match="unimodal_weight must be a finite number >= 0"):
        get_method("tutored").options({"unimodal_weight": -1})
    kept = get_method("tutored").serving_kwargs({"teacher_checkpoints": {"a": "x"},
                                                 "unimodal_weight": 2.0})
    assert kept == {"unimodal_weight": 2.0}
    paths, _ = teachers(tmp_path)
    module = MultimodalModule(list(VECTORS), VECTORS, 3, method="tutored",
                              method_kwargs={"teacher_checkpoints": paths}, **NET)
    flagged = cuda_nondeterministic(lambda: run_step(module, make_batch(VECTORS)))
    assert flagged == {}, flagged  # the preset's training step is deterministic on CUDA


def test_benchmark_trains_teachers_then_initialises_the_student_once(tmp_path, monkeypatch):
    calls = []
    original = UnimodalTeachers.initialise

    def spy(self, network):
        original(self, network)
        calls.append({m: {k: v.clone() for k, v in
                          modality_encoder(network, m).state_dict().items()}
                      for m in self.modalities})

    monkeypatch.setattr(UnimodalTeachers, "initialise", spy)
    out = tmp_path / "b"
    assert main(["benchmark", "--methods", "baseline,tutored", "--modalities", "pix,mor",
                 "--seeds", "0", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    tutored = next(r for r in res["runs"] if r["method"] == "tutored")
    assert set(tutored["stage_train_seconds"]) == {"teacher-pix", "teacher-mor"}
    assert len(calls) == 1  # the student only, once
    for m in ("pix", "mor"):
        saved = torch.load(out / "checkpoints" / f"tutored-teacher-{m}-seed0" / "best.ckpt",
                           weights_only=True)["state_dict"]
        assert all(torch.equal(v, saved[f"model.encoders.{m}.{k}"])
                   for k, v in calls[0][m].items())
    logs = (out / "logs" / "tutored-seed0").rglob("metrics.csv")
    assert "train/unimodal" in next(iter(logs)).read_text()


def test_a_resumed_run_keeps_its_trained_encoders(tmp_path, monkeypatch):
    import lightning as L

    from dmrnet.training import MultimodalDataModule
    data = MultimodalDataModule("synthetic", seed=0, batch_size=256)
    shapes = dict(data.input_shapes)
    net = {"network": {"embed_dim": 8, "encoder_kwargs": {"out_features": 8, "hidden": [8]}}}
    paths = {}
    for m in data.modalities:
        paths[m] = str(tmp_path / f"{m}.ckpt")
        save_teacher(paths[m], m, shapes, **net)
    calls = []
    monkeypatch.setattr(UnimodalTeachers, "initialise",
                        lambda self, network: calls.append(len(calls)))

    def fit(epochs, ckpt=None):
        module = MultimodalModule(data.modalities, shapes, data.num_classes, method="tutored",
                                  method_kwargs={"teacher_checkpoints": paths}, **net)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        return trainer

    first = fit(1)
    assert calls == [0]
    saved = first.checkpoint_callback.best_model_path
    fit(2, saved)
    assert calls == [0]  # resuming does not start the encoders from the teachers again


def test_dataset_default_options_apply_only_to_methods_that_have_them():
    from dmrnet.benchmark import BenchmarkConfig, apply_dataset_defaults
    from dmrnet.benchmark.config import _check_options
    plain = apply_dataset_defaults(BenchmarkConfig(out="-", dataset="rgbd-shapes",
                                                   methods=["baseline", "tutored"]))
    assert plain.options == {}
    _check_options(plain)  # was: "no method in this run has option 'hcr_warmup_epochs'"
    mixed = apply_dataset_defaults(BenchmarkConfig(out="-", dataset="rgbd-shapes",
                                                   methods=["baseline", "dmrnet"]))
    assert mixed.options == {"hcr_warmup_epochs": 3}
    _check_options(mixed)


def test_results_page_names_a_registered_preset_and_its_options_match_the_docs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("Preset:")]
    assert len(names) == 1, "docs/results.md needs exactly one 'Preset: <name>' line"
    preset = get_method(names[0])  # a method users can run by that name
    opts = preset.options({})
    assert opts.teacher_init is True and "`teacher_init: true`" in text
    assert opts.unimodal_weight is None and "`unimodal_weight: 2`" in text  # 2 for classification
    assert opts.unimodal_ensemble is None and "`unimodal_ensemble: 0.5`" in text
    resolved = preset_heads({}, dense=False)
    assert resolved == {"unimodal_weight": 2.0, "unimodal_ensemble": 0.5}
