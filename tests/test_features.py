"""The feature-file data source: one array file per modality (``.npy``, ``.npz``, ``.pt``),
labels, an optional split and per-modality availability, named by a small YAML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.cli import main
from dmrnet.data import DATASETS, DataError

N = 60


class Unsafe:
    """An object a pickle would rebuild by running code (``weights_only`` refuses it)."""

    def __reduce__(self):
        return (print, ("ran code",))


def write_release(folder: Path, split: bool = True, **changes: object) -> Path:
    """Three modalities in three file kinds; ``visual`` missing in every 4th sample (a mask)
    and ``text`` in every 5th (NaN rows); string labels; a train/val/test split."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = np.arange(N) % 3
    audio = rng.normal(y[:, None], 1.0, (N, 5)).astype(np.float32) * 100 + 7  # its own units
    visual = rng.normal(y[:, None, None], 1.0, (N, 2, 3)).astype(np.float32)
    text = rng.normal(y[:, None], 2.0, (N, 4)).astype(np.float32)
    text[::5] = np.nan
    np.save(folder / "audio.npy", audio)
    np.savez(folder / "feats.npz", visual=visual, other=np.zeros(3))
    torch.save({"text": torch.from_numpy(text)}, folder / "text.pt")
    np.save(folder / "labels.npy", np.array(["neg", "neu", "pos"])[y])
    np.save(folder / "visual_present.npy", np.arange(N) % 4 != 0)
    np.save(folder / "split.npy", np.array(["train"] * 36 + ["val"] * 12 + ["test"] * 12))
    spec = {"modalities": {"audio": "audio.npy", "visual": {"file": "feats.npz", "key": "visual"},
                           "text": "text.pt"},
            "labels": "labels.npy", "available": {"visual": "visual_present.npy"},
            **({"split": "split.npy"} if split else {}), **changes}
    (folder / "features.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return folder


def test_a_release_reads_with_its_availability_split_and_statistics(tmp_path):
    folder = write_release(tmp_path / "release")
    data = DATASETS.get("features")(root=folder, seed=0)
    assert data.modalities == ["audio", "visual", "text"]
    assert data.input_shapes == {"audio": (5,), "visual": (2, 3), "text": (4,)}
    assert data.class_names == ["neg", "neu", "pos"]
    assert [len(data.train), len(data.val), len(data.test)] == [36, 12, 12]
    avail = torch.cat([data.train.availability, data.val.availability, data.test.availability])
    assert avail[:, 0].all()
    assert int((~avail[:, 1]).sum()) == N // 4 and int((~avail[:, 2]).sum()) == N // 5
    # absent rows are zeros; present ones standardised on the training rows that have them
    for part in (data.train, data.val, data.test):
        assert (part.features["text"][~part.availability[:, 2]] == 0).all()
        assert torch.isfinite(part.features["text"]).all()
    train_audio = data.train.features["audio"]
    assert train_audio.mean().abs() < 1e-4 and (train_audio.std(0) - 1).abs().max() < 0.05
    stats = data.info["standardizer"]
    assert len(stats["mean"]["visual"]) == 6  # per element of the (2, 3) rows
    raw = np.load(folder / "audio.npy")[:36]
    assert np.allclose(stats["mean"]["audio"], raw.mean(0), rtol=1e-5)
    assert data.info["availability"]["visual"] == 0.75
    # only some modalities, and no split: a stratified 60/20/20 split from the seed
    two = DATASETS.get("features")(root=write_release(tmp_path / "b", split=False),
                                   modalities=["text", "audio"], seed=1)
    assert two.modalities == ["text", "audio"] and len(two.train) == 36
    assert sorted(two.test.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: (f / "audio.npy").unlink(), "modality 'audio': file .* does not exist"),
    (lambda f: np.save(f / "audio.npy", np.zeros((N - 1, 5))),
     r"modality 'audio' must hold one row per sample, shape \(60, ...\)"),
    (lambda f: np.save(f / "audio.npy", np.array([{"x": 1}] * N), allow_pickle=True),
     "modality 'audio': cannot read"),
    (lambda f: np.savez(f / "feats.npz", a=np.zeros((N, 2)), b=np.zeros((N, 2))),
     r"holds \['a', 'b'\]; name one"),
    (lambda f: torch.save({"text": Unsafe()}, f / "text.pt"),  # would run code if unpickled
     "modality 'text': cannot read .*text.pt"),
    (lambda f: np.save(f / "split.npy", np.array(["train"] * 59 + ["dev"])),
     "split value 'dev' is not train, val, test"),
    (lambda f: np.save(f / "labels.npy", np.zeros((N, 2))), r"labels must be one value per"),
    (lambda f: (f / "features.yaml").write_text("modalities: {a: a.h5}\nlabels: labels.npy\n"),
     "'a.h5' is not one of the array files .npy, .npz, .pt|file .* does not exist"),
    (lambda f: (f / "features.yaml").write_text("modalities: {}\nlabels: x.npy\n"),
     "must map modalities"),
    (lambda f: (f / "features.yaml").write_text("modalities: {a: audio.npy}\nlabels: labels.npy"
                                                "\nsplits: s.npy\n"),
     "unknown key 'splits'"),
])
def test_a_bad_release_is_one_line_naming_the_file(tmp_path, change, message):
    folder = write_release(tmp_path / "release")
    change(folder)
    with pytest.raises(DataError, match=message):
        DATASETS.get("features")(root=folder)


def test_partly_nan_rows_and_samples_with_nothing_are_refused(tmp_path):
    folder = write_release(tmp_path / "release")
    audio = np.load(folder / "audio.npy")
    audio[3, 1] = np.nan
    np.save(folder / "audio.npy", audio)
    with pytest.raises(DataError, match="row 3 holds some NaN"):
        DATASETS.get("features")(root=folder)
    audio[3] = np.nan  # the whole row: the sample has no audio
    np.save(folder / "audio.npy", audio)
    data = DATASETS.get("features")(root=folder, modalities=["audio", "visual"])
    assert sum(int((~p.availability[:, 0]).sum()) for p in (data.train, data.val, data.test)) == 1
    with pytest.raises(DataError, match="sample 0 has none of the modalities"):
        DATASETS.get("features")(root=folder, modalities=["visual"])


def test_benchmark_and_fit_train_on_a_release_and_predict_takes_raw_rows(tmp_path, capsys):
    folder = write_release(tmp_path / "release")
    out = tmp_path / "bench"
    assert main(["benchmark", "--dataset", "features", "--root", str(folder), "--methods",
                 "baseline,dmrnet", "--epochs", "1", "--seeds", "0", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert len(results["subsets"]) == 7  # every non-empty subset of three modalities
    assert {r["method"] for r in results["runs"]} == {"baseline", "dmrnet"}
    ckpt = next(out.rglob("dmrnet-seed0/best.ckpt"))
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 0
    np.save(tmp_path / "row.npy", np.load(folder / "audio.npy")[0])  # raw units
    assert main(["predict", "--checkpoint", str(model), "--input",
                 f"audio={tmp_path / 'row.npy'}"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1].startswith("audio ")
    # the folder standardises a raw row as training did: the network on the training split's
    # standardised row gives the same probabilities
    import dmrnet

    served = dmrnet.load_model(model)
    data = DATASETS.get("features")(root=folder, seed=0)
    raw = served.predict({"audio": np.load(folder / "audio.npy")[0]}).probs
    row = {m: torch.zeros(1, *s) for m, s in data.input_shapes.items()}
    row["audio"] = data.train.features["audio"][:1]  # sample 0 is the first training row
    with torch.no_grad():
        logits = served.model(row, torch.tensor([[True, False, False]])).logits
    assert torch.allclose(raw, logits.softmax(-1), atol=1e-5)
    assert main(["fit", "--data.dataset", "features", "--data.root", str(folder),
                 "--trainer.max_epochs", "1", "--trainer.default_root_dir",
                 str(tmp_path / "fit")]) == 0, capsys.readouterr().err
    assert list((tmp_path / "fit").rglob("best-epoch=0.ckpt"))
