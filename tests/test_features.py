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
    audio[0] = np.nan  # sample 0 has no visual and no text either: nothing at all
    np.save(folder / "audio.npy", audio)
    with pytest.raises(DataError, match="sample 0 has none of the modalities"):
        DATASETS.get("features")(root=folder)
    # a model of some modalities (a dedicated one, a teacher) leaves out the samples without
    # any of them, and the others keep their split
    with pytest.raises(DataError, match="sample 0 has none"):  # all of them, in another order
        DATASETS.get("features")(root=folder, modalities=["text", "visual", "audio"])
    visual = DATASETS.get("features")(root=folder, modalities=["visual"])
    assert visual.info["left_out"] == N // 4
    assert [len(p) for p in (visual.train, visual.val, visual.test)] == [27, 9, 9]
    assert bool(visual.test.availability.all())


def test_benchmark_and_fit_train_on_a_release_and_predict_takes_raw_rows(tmp_path, capsys):
    folder = write_release(tmp_path / "release")
    out = tmp_path / "bench"
    assert main(["benchmark", "--dataset", "features", "--root", str(folder), "--methods",
                 "baseline,dmrnet", "--epochs", "1", "--seeds", "0,1", "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert len(results["subsets"]) == 7  # every non-empty subset of three modalities
    # each subset's per-sample test statistics name the samples that have the subset (its
    # ids were the subset's 0/1 mask, so two seeds' comparison failed on a shape mismatch)
    samples = np.load(out / "test_samples" / "dmrnet-seed1.npz")
    sizes = [len(samples[f"ids{k}"]) for k in range(7)]
    assert [len(samples[f"rows{k}"]) for k in range(7)] == sizes and len(set(sizes)) > 1
    for k in range(7):
        ids = samples[f"ids{k}"]
        assert (np.diff(ids) > 0).all() and ids.max() < 12  # distinct test samples, in order
    assert {c["verdict"] for c in results["comparisons"]}
    assert {r["method"] for r in results["runs"]} == {"baseline", "dmrnet"}
    ckpt = next(out.rglob("dmrnet-seed0/best.ckpt"))
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 0
    # a model of fixed-size inputs writes no sequences key: dmrnet 0.3 reads its folder
    assert "sequences" not in json.loads((model / "config.json").read_text())["model"]
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


def write_sequences(folder: Path, pad: float = 0.0) -> Path:
    """Three modalities of a MOSI-like release: ``words`` and ``audio`` are padded sequences
    with per-sample lengths (0 = absent), ``face`` a fixed vector missing in every 5th
    sample (a NaN row); ``pad`` is what the files hold after the real steps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    y = np.arange(N) % 2
    words_len = 1 + np.arange(N) % 7
    audio_len = 2 + (3 * np.arange(N)) % 9
    audio_len[::6] = 0  # no audio in every 6th sample
    words = rng.normal(0, 1, (N, 7, 3)).astype(np.float32) + y[:, None, None] * 3 + 10
    audio = rng.normal(0, 1, (N, 10, 2)).astype(np.float32) - y[:, None, None]
    for arr, lengths in ((words, words_len), (audio, audio_len)):
        arr[np.arange(arr.shape[1])[None, :] >= lengths[:, None]] = pad
    face = rng.normal(y[:, None], 1.0, (N, 4)).astype(np.float32)
    face[::5] = np.nan
    for name, arr in (("words", words), ("words_len", words_len), ("audio", audio),
                      ("audio_len", audio_len), ("face", face), ("labels", y)):
        np.save(folder / f"{name}.npy", arr)
    spec = {"modalities": {"words": {"file": "words.npy", "lengths": "words_len.npy"},
                           "audio": {"file": "audio.npy", "lengths": "audio_len.npy"},
                           "face": "face.npy"},
            "labels": "labels.npy", "class_names": ["negative", "positive"]}
    (folder / "features.yaml").write_text(json.dumps(spec))
    return folder


def test_sequences_read_with_their_lengths_and_statistics_of_real_steps(tmp_path):
    folder = write_sequences(tmp_path / "seq", pad=np.nan)  # NaN padding is never read
    data = DATASETS.get("features")(root=folder, seed=0)
    assert data.sequences == ["words", "audio"]
    assert data.input_shapes == {"words": (7, 3), "audio": (10, 2), "face": (4,)}
    for part in (data.train, data.val, data.test):
        j = data.modalities.index("audio")
        assert torch.equal(part.availability[:, j], part.lengths["audio"] > 0)
        n = int(part.lengths["words"][0])
        assert part[0]["inputs"]["words"].shape == (n, 3)  # the real steps only
        assert torch.isfinite(part.features["words"]).all()
        steps = torch.arange(7)[None, :] >= part.lengths["words"][:, None]
        assert (part.features["words"][steps] == 0).all()  # padding is zeros
    stats = data.info["standardizer"]
    assert len(stats["mean"]["words"]) == 3  # per feature, not per (step, feature)
    raw = np.load(folder / "words.npy")
    real = np.arange(7)[None, :] < np.load(folder / "words_len.npy")[:, None]
    from dmrnet.data.base import stratified_split  # the training rows the source drew

    train_rows = np.isin(np.arange(N), stratified_split(np.arange(N) % 2, [0.6, 0.2, 0.2], 0)[0])
    expect = raw[train_rows][real[train_rows]].mean(0)
    assert np.allclose(stats["mean"]["words"], expect, rtol=1e-5)
    # a batch made whole equals the collate of single items (real steps only)
    from dmrnet.batch import MultimodalCollate
    collate = MultimodalCollate(data.modalities, data.input_shapes, sequences=data.sequences)
    whole = collate(data.train.__getitems__(list(range(8))))
    single = collate([data.train[i] for i in range(8)])
    for m in data.modalities:
        assert torch.equal(whole.inputs[m], single.inputs[m]), m
    assert whole.lengths.keys() == single.lengths.keys() == {"words", "audio"}
    for m in whole.lengths:
        assert torch.equal(whole.lengths[m], single.lengths[m])


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: np.save(f / "words_len.npy", np.full(N, 8)),
     r"lengths of 'words' must be \(60,\) whole numbers 0..7"),
    (lambda f: np.save(f / "words_len.npy", np.full(N, 1.5)), "whole numbers"),
    (lambda f: np.save(f / "face.npy", np.zeros((N, 4))) or (f / "features.yaml").write_text(
        json.dumps({"modalities": {"face": {"file": "face.npy", "lengths": "words_len.npy"}},
                    "labels": "labels.npy"})), r"must be a padded sequence array \(N, T, D\)"),
    (lambda f: (f / "features.yaml").write_text(json.dumps(
        {"modalities": {"words": {"file": "words.npy", "length": "words_len.npy"}},
         "labels": "labels.npy"})), "unknown key 'length' .*file, key, lengths"),
])
def test_bad_sequence_lengths_are_one_line(tmp_path, change, message):
    folder = write_sequences(tmp_path / "seq")
    change(folder)
    with pytest.raises(DataError, match=message):
        DATASETS.get("features")(root=folder)


def test_nan_inside_the_real_steps_is_refused_but_not_in_the_padding(tmp_path):
    folder = write_sequences(tmp_path / "seq", pad=np.inf)
    words = np.load(folder / "words.npy")
    words[3, 0, 1] = np.nan  # sample 3 has 4 real steps
    np.save(folder / "words.npy", words)
    with pytest.raises(DataError, match="the real steps of sample 3 holds some NaN"):
        DATASETS.get("features")(root=folder)
    words[3, :4] = np.nan  # every real step: the sample has no words
    np.save(folder / "words.npy", words)
    data = DATASETS.get("features")(root=folder, seed=0)
    parts = (data.train, data.val, data.test)
    assert sum(int((~p.availability[:, 0]).sum()) for p in parts) == 1


def test_a_sequence_release_trains_every_subset_and_padding_never_matters(tmp_path, capsys):
    """Done-when of issue 25: a variable-length feature-file dataset (three modalities, some
    samples missing some) trains and evaluates every subset; two releases that differ only
    in their padding give the same numbers."""
    results = []
    for pad in (0.0, 123.0):
        folder = write_sequences(tmp_path / f"seq{pad}", pad=pad)
        out = tmp_path / f"bench{pad}"
        assert main(["benchmark", "--dataset", "features", "--root", str(folder), "--methods",
                     "baseline,dmrnet", "--epochs", "1", "--seeds", "0", "--jobs", "1",
                     "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
        results.append(json.loads((out / "results.json").read_text()))
    assert len(results[0]["subsets"]) == 7
    same = [(r["per_subset"], r["loss_terms"]) for r in results[0]["runs"]]
    assert same == [(r["per_subset"], r["loss_terms"]) for r in results[1]["runs"]]
    assert len(same) == 2 and all(len(per) == 7 for per, _ in same)
    # deployment: the folder serves sequences of any length from raw files; ONNX refuses
    folder, out = tmp_path / "seq0.0", tmp_path / "bench0.0"
    ckpt = next(out.rglob("dmrnet-seed0/best.ckpt"))
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 0
    words = np.load(folder / "words.npy")[5, :6]  # sample 5: 6 real steps, raw units
    np.save(tmp_path / "words.npy", words)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(model), "--input",
                 f"words={tmp_path / 'words.npy'}"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.splitlines()[-1]
    import dmrnet

    served = dmrnet.load_model(model)
    assert served.sequences == ["words", "audio"]
    one = served.predict({"words": words}).probs
    assert f"{float(one.max()):.4f}" in printed or f"{float(one.max()):.3f}" in printed
    # the same sample in a list with others of other lengths, and padded by hand
    many = served.predict([{"words": words}, {"words": words[:2], "face": np.zeros(4)},
                           {"audio": np.load(folder / "audio.npy")[1, :5]}]).probs
    assert torch.allclose(many[0], one[0], atol=1e-6)
    assert main(["export", "--checkpoint", str(model), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export does not take variable-length sequences (modality 'words'" in err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(dmrnet.batch.BatchError, match=r"with 1..7 steps"):
        served.predict([{"words": np.zeros((8, 3))}])


def test_hdf5_files_read_by_key_and_without_h5py_say_how_to_get_it(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    folder = write_release(tmp_path / "release")
    with h5py.File(folder / "feats.h5", "w") as f:
        f["audio/features"] = np.load(folder / "audio.npy")
        f["labels"] = np.load(folder / "labels.npy").astype("S")  # names as bytes
    spec = {"modalities": {"audio": {"file": "feats.h5", "key": "audio/features"}},
            "labels": {"file": "feats.h5", "key": "labels"}}
    (folder / "features.yaml").write_text(json.dumps(spec))
    data = DATASETS.get("features")(root=folder, seed=0)
    assert data.class_names == ["neg", "neu", "pos"] and data.input_shapes == {"audio": (5,)}
    raw = np.load(folder / "audio.npy")
    stats = data.info["standardizer"]
    rows = torch.cat([p.features["audio"] for p in (data.train, data.val, data.test)])
    restored = rows * torch.tensor(stats["std"]["audio"]) + torch.tensor(stats["mean"]["audio"])
    assert np.allclose(np.sort(restored.numpy(), axis=0), np.sort(raw, axis=0), atol=1e-3)
    spec["modalities"]["audio"] = "feats.h5"  # two datasets, none named
    (folder / "features.yaml").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"holds the datasets \['audio/features', 'labels'\]; "
                       "name one"):
        DATASETS.get("features")(root=folder)
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(DataError, match="needs h5py: pip install h5py"):
        DATASETS.get("features")(root=folder)
