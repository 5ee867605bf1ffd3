"""Model folders (config.json + safetensors), Predictor.predict, safe loading, ONNX export."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.batch import BatchError
from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.predict import load_module
from dmrnet.serving import load_model, save_model
from dmrnet.training import MultimodalModule

SHAPES = {"a": [6], "b": [4], "c": [5]}


def module(method="dmrnet", **options):
    torch.manual_seed(0)
    m = MultimodalModule(list(SHAPES), SHAPES, 3, method=method, class_names=["x", "y", "z"],
                         method_kwargs=options or None,
                         preprocessing={"standardize": {"mean": {"a": [1.0] * 6},
                                                    "std": {"a": [2.0] * 6}}},
                         network={"encoder_kwargs": {"out_features": 8, "hidden": [16]},
                                  "embed_dim": 8})
    m.model.train()
    for _ in range(3):  # non-trivial BatchNorm statistics
        m.model({k: torch.randn(16, *s) for k, s in SHAPES.items()},
                torch.ones(16, 3, dtype=torch.bool))
    return m.eval()


def test_folder_roundtrip_and_predict_with_missing_modalities(tmp_path):
    mod = module()
    path = save_model(mod, tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    assert config["model"]["method"] == "dmrnet" and config["class_names"] == ["x", "y", "z"]
    assert "lr" not in config["model"]  # training settings stay out
    pred = load_model(path)
    x = {"a": np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32),
         "c": np.random.default_rng(1).normal(size=(5, 5)).astype(np.float32)}
    out = pred.predict(x)  # b is absent: simply omitted
    assert out.probs.shape == (5, 3) and out.subsets == ["a+c"] * 5
    assert out.uncertainty is not None and out.uncertainty.shape == (5,)
    # the same numbers as the training module, with the stored standardisation applied
    xa = (torch.as_tensor(x["a"]) - 1.0) / 2.0
    ref = mod.model({"a": xa, "b": torch.zeros(5, 4), "c": torch.as_tensor(x["c"])},
                    torch.tensor([[True, False, True]] * 5))
    assert torch.allclose(out.probs, ref.logits.softmax(1), atol=1e-6)
    single = pred.predict({"b": np.zeros(4, np.float32)})
    assert single.probs.shape == (1, 3) and single.subsets == ["b"]
    mixed = pred.predict([{"a": x["a"][0]}, {"b": np.ones(4), "c": x["c"][1]}])
    assert mixed.subsets == ["a", "b+c"]
    with pytest.raises(ConfigError, match="exists"):
        save_model(mod, path)
    assert load_model(save_model(mod, path, overwrite=True)).modalities == ["a", "b", "c"]


def test_predict_errors_name_the_problem(tmp_path):
    pred = load_model(save_model(module(), tmp_path / "m"))
    with pytest.raises(BatchError, match="modality 'ir' is not one of"):
        pred.predict({"ir": np.zeros(3)})
    with pytest.raises(BatchError, match="no modality given"):
        pred.predict({})
    with pytest.raises(BatchError, match="sample\\(s\\) \\[1\\] have no modality"):
        pred.predict([{"a": np.zeros(6)}, {}])
    with pytest.raises(BatchError, match="modality 'a' has shape \\(7,\\); expected \\(6,\\)"):
        pred.predict({"a": np.zeros(7)})
    with pytest.raises(BatchError, match="NaN or inf"):
        pred.predict({"a": np.full(6, np.nan)})
    with pytest.raises(BatchError, match="empty batch"):
        pred.predict([])


def test_baseline_has_no_uncertainty(tmp_path):
    pred = load_model(save_model(module("baseline"), tmp_path / "m"))
    assert pred.predict({"a": np.zeros(6)}).uncertainty is None


def test_corrupt_and_code_carrying_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Payload()}, evil)
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        load_module(evil)
    assert not marker.exists()  # nothing ran
    assert main(["predict", "--checkpoint", str(evil), "--input", "a=x.npy"]) == 2
    assert not marker.exists()
    good = save_model(module(), tmp_path / "m")
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ConfigError, match="cannot read weights"):
        load_model(good)
    (good / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(good)
    with pytest.raises(ConfigError, match="has no config.json"):
        load_model(tmp_path)
    truncated = tmp_path / "t.ckpt"
    ok = tmp_path / "ok.ckpt"
    import lightning as L

    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module())
    trainer.save_checkpoint(ok)
    truncated.write_bytes(ok.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        load_module(truncated)
    assert load_module(ok).hparams["method"] == "dmrnet"


def test_predict_and_export_take_a_checkpoint_or_a_model_folder_alike(tmp_path, capsys):
    import lightning

    mod = module()
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": mod.state_dict(), "hyper_parameters": dict(mod.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=6).astype(np.float32))
    np.save(tmp_path / "c.npy", np.random.default_rng(1).normal(size=5).astype(np.float32))
    inputs = ["--input", f"a={tmp_path / 'a.npy'}", "--input", f"c={tmp_path / 'c.npy'}"]
    printed = {}
    folder = tmp_path / "folder"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder)]) == 0
    again = tmp_path / "again"  # folder -> folder, e.g. to copy it checked
    assert main(["export", "--checkpoint", str(folder), "--out", str(again)]) == 0
    capsys.readouterr()
    for source in (ckpt, folder, again):
        assert main(["predict", "--checkpoint", str(source), *inputs]) == 0
        printed[source.name] = capsys.readouterr().out
    assert printed["m.ckpt"] == printed["folder"] == printed["again"]
    assert printed["folder"].splitlines()[0].split()[0] == "a"  # one line per subset
    assert len(printed["folder"].splitlines()) == 3  # a, c, a+c


def test_served_model_keeps_the_unimodal_heads_vote(tmp_path):
    """A model trained with unimodal_ensemble serves (folder and ONNX) with its heads voting."""
    mod = module("baseline", unimodal_weight=1.0, unimodal_ensemble=0.5)
    pred = load_model(save_model(mod, tmp_path / "m"))
    x = {"b": np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)}
    out = pred.predict(x).probs
    avail = torch.tensor([[False, True, False]] * 4)
    inputs = {"a": torch.zeros(4, 6), "b": torch.as_tensor(x["b"]), "c": torch.zeros(4, 5)}
    assert torch.allclose(out, mod.model(inputs, avail).logits.softmax(1), atol=1e-6)
    mod.model.ensemble_weight = 0.0
    assert not torch.allclose(out, mod.model(inputs, avail).logits.softmax(1), atol=1e-3)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        import onnxruntime as ort

        from dmrnet.serving import export_onnx

        path = export_onnx(pred, tmp_path / "m.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        fed = {m: rng.normal(size=(4, *s)).astype(np.float32) for m, s in SHAPES.items()}
        probs, _ = session.run(None, {**fed, "availability": avail.float().numpy()})
        assert np.abs(probs - pred.predict({"b": fed["b"]}).probs.numpy()).max() < 1e-4


def test_onnx_graph_serves_every_subset_like_pytorch(tmp_path, capsys):
    """Raw inputs into the ONNX graph give what load_model(...).predict gives, for every subset:
    the standardisation stored with the model is inside the graph (on 4fe5d57 it was not, and
    mfeat's fac+pix scored 0.10 from raw features)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from dmrnet.serving import ONNX_INPUTS_KEY, export_onnx

    pred = load_model(save_model(module(), tmp_path / "m"))
    assert pred.preprocessing  # "a" is standardised: the case that used to go wrong
    rng = np.random.default_rng(0)
    raw = {m: rng.normal(3.0, 2.0, size=(4, *s)).astype(np.float32) for m, s in SHAPES.items()}
    for include in (True, False):
        path = export_onnx(pred, tmp_path / f"m-{include}.onnx", preprocessing=include)
        note = {p.key: p.value for p in onnx.load(str(path)).metadata_props}[ONNX_INPUTS_KEY]
        assert note.startswith("raw:" if include else "preprocessed:")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        fed = raw if include else {**raw, "a": (raw["a"] - 1.0) / 2.0}
        worst = 0.0
        for s in range(len(pred.model.space)):
            members = pred.model.space.parse(pred.model.space.name(s))
            avail = pred.model.space.masks()[s].float().expand(4, -1).numpy().copy()
            probs, unc = session.run(None, {**fed, "availability": avail})
            ref = pred.predict({m: raw[m] for m in members})
            worst = max(worst, float(np.abs(probs - ref.probs.numpy()).max()),
                        float(np.abs(unc - ref.uncertainty.numpy()).max()))
        assert worst < 1e-4, include
    path = tmp_path / "m-True.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "m"), "--format", "onnx", "--out",
                 str(path)]) == 2  # exists: refused
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "m"), "--format", "onnx", "--out",
                 str(tmp_path / "cli.onnx"), "--no-preprocessing"]) == 0
    assert "NOT in the graph" in capsys.readouterr().out  # said on the console too


def test_checkpoints_written_by_dmrnet_fit_serve_and_export(tmp_path):
    """Lightning's CLI stores its own keys ("_instantiator") among a checkpoint's
    hyperparameters; predict and export used to refuse such checkpoints as unknown settings."""
    cfg = str(Path(__file__).resolve().parents[1] / "configs" / "mfeat_baseline.yaml")
    assert main(["fit", "--config", cfg, "--trainer.max_epochs", "1", "--data.modalities",
                 "[fac, mor]", "--trainer.default_root_dir", str(tmp_path)]) == 0
    ckpt = next(tmp_path.glob("lightning_logs/version_0/checkpoints/best-*.ckpt"))
    assert "_instantiator" in torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m")]) == 0
    assert load_model(tmp_path / "m").predict({"fac": np.zeros(216)}).subsets == ["fac"]
    np.save(tmp_path / "mor.npy", np.ones(6, np.float32))
    assert main(["predict", "--checkpoint", str(ckpt), "--input",
                 f"mor={tmp_path / 'mor.npy'}"]) == 0


def tabular_manifest(root: Path, n: int = 60) -> Path:
    """Two array modalities whose features span eight orders of magnitude (a sensor table);
    some samples miss one of them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    scales = {"a": 10.0 ** np.arange(-3, 5), "b": np.array([1e-2, 1.0, 1e2, 1e4])}
    rows = ["a,b,label,split"]
    for i in range(n):
        k = i % 3
        cells = []
        for m, scale in scales.items():
            x = (rng.normal(0, 1, scale.shape) + k) * scale + 5 * scale
            np.save(root / f"{m}{i}.npy", x.astype(np.float32))
            cells.append(f"{m}{i}.npy" if (i % 7, m) not in ((2, "a"), (4, "b")) else "")
        split = ("train", "train", "train", "val", "test")[(i // 3) % 5]
        rows.append(f"{cells[0]},{cells[1]},{'xyz'[k]},{split}")
    (root / "tab.csv").write_text("\n".join(rows) + "\n")
    return root / "tab.csv"


def test_manifest_arrays_are_standardised_and_served_raw(tmp_path, capsys):
    """A manifest's .npy modalities are standardised on the training files by default; the
    statistics go into the model folder, and predict, the ``dmrnet predict`` path and the
    ONNX graph given the raw arrays give the training pipeline's predictions."""
    from dmrnet.data import manifest
    from dmrnet.predict import predict_subsets, read_input
    from dmrnet.serving import export_onnx
    from dmrnet.training import MultimodalDataModule

    csv = tabular_manifest(tmp_path / "data")
    data = manifest(manifest=str(csv))
    train = [r for r in data.train.records]
    stats = data.info["standardizer"]
    for m in ("a", "b"):
        x = np.stack([np.load(r.paths[m]) for r in train if r.paths[m] is not None]
                     ).astype(np.float64)
        assert np.allclose(stats["mean"][m], x.mean(0), rtol=1e-6)
        assert np.allclose(stats["std"][m], x.std(0), rtol=1e-4)
    raw = manifest(manifest=str(csv), standardize=False)
    assert "standardizer" not in raw.info and not raw.device_transforms

    out = tmp_path / "run"
    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(csv), "--out",
                 str(out), "--methods", "dmrnet", "--seeds", "0", "--epochs", "3",
                 "--no-progress"]) == 0
    checkpoint = str(out / "checkpoints" / "dmrnet-seed0" / "best.ckpt")
    module = load_module(checkpoint)
    assert module.hparams["preprocessing"]["standardize"]["mean"]["a"] == stats["mean"]["a"]
    dm = MultimodalDataModule("manifest", dataset_kwargs={"manifest": str(csv)})
    batches = [dm.on_after_batch_transfer(b) for b in dm.test_dataloader()]
    assert float(batches[0].inputs["a"].abs().max()) < 50  # standardised, not up to 1e5
    with torch.no_grad():
        ref = torch.cat([module.predict_step(b, 0)["probs"] for b in batches])

    samples = [dm.data.test[i]["inputs"] for i in range(len(dm.data.test))]  # raw arrays
    assert float(max(s["a"].abs().max() for s in samples if "a" in s)) > 1e4
    assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "model")]) == 0
    pred = load_model(tmp_path / "model")
    assert torch.allclose(pred.predict(samples).probs, ref, atol=1e-5)

    full = next(i for i, s in enumerate(samples) if set(s) == {"a", "b"})
    record = dm.data.test.records[full]
    inputs = {m: read_input(module, m, record.paths[m]) for m in ("a", "b")}
    got = predict_subsets(module, inputs)["a+b"]  # what `dmrnet predict --input` prints
    assert torch.allclose(got[0], ref[full], atol=1e-5)

    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(pred, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {m: np.stack([s[m].numpy() if m in s else np.zeros(pred.input_shapes[m],
                                                                  np.float32)
                          for s in samples]) for m in ("a", "b")}
    avail = np.array([[m in s for m in ("a", "b")] for s in samples], np.float32)
    probs, _ = session.run(None, {**feeds, "availability": avail})
    assert np.abs(probs - ref.numpy()).max() < 1e-4

    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(csv), "--out",
                 str(tmp_path / "raw"), "--methods", "baseline", "--seeds", "0", "--epochs",
                 "1", "--no-progress", "--no-standardize"]) == 0
    unscaled = load_module(str(tmp_path / "raw" / "checkpoints" / "baseline-seed0" /
                               "best.ckpt"))
    assert set(unscaled.hparams["preprocessing"]) == {"readers"}  # no statistics, the readers
    capsys.readouterr()


def test_predict_fills_an_absent_input_at_its_own_shape():
    """``dmrnet predict`` with some inputs of a classifier whose modalities have different
    shapes: an absent picture or spectrogram is filled at its trained shape, whatever was given
    first (a vector given first set the absent ones' size and every subset was refused)."""
    from dmrnet.predict import predict_subsets

    shapes = {"vec": [8], "img": [3, 16, 16], "snd": [1, 20, 12]}
    module = MultimodalModule(list(shapes), shapes, 3, network={"embed_dim": 8}).eval()
    torch.manual_seed(0)
    x = {m: torch.randn(1, *s) for m, s in shapes.items()}
    assert set(predict_subsets(module, {"vec": x["vec"]})) == {"vec"}
    both = predict_subsets(module, {"vec": x["vec"], "img": x["img"]})
    assert set(both) == {"vec", "img", "vec+img"}
    whole = module.model(x, torch.tensor([[True, True, False]])).logits.softmax(1)
    assert torch.allclose(both["vec+img"], whole, atol=1e-6)
