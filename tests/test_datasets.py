"""Loaders on tiny fixtures in the real on-disk layouts, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmrnet.batch import MultimodalCollate
from dmrnet.data import DataError, casia_surf, cremad, kinetics_sounds, manifest
from dmrnet.data.io import read_wav, write_wav
from dmrnet.data.transforms import AudioSpec, imagenet_normalize, log_spectrogram, resample

from .fixtures import (
    make_casia,
    make_cremad,
    make_kinetics_sounds,
    make_manifest,
    picture,
    write_cremad_splits,
)


def test_audio_recipe_gives_257_by_188_and_resamples(tmp_path):
    assert AudioSpec().shape == (1, 257, 188)
    t = np.arange(16000) / 16000
    write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 16000)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and x.shape == (16000,) and abs(float(x.abs().max()) - 0.5) < 1e-3
    y = resample(x, 16000, 22050)
    assert y.shape == (22050,)
    peak = torch.fft.rfft(y).abs().argmax().item()  # 1 s long: bin index = frequency in Hz
    assert abs(peak - 1000) <= 1
    spec = log_spectrogram(x, 16000, AudioSpec())
    assert spec.shape == (1, 257, 188)
    assert abs(float(spec.mean())) < 1e-4 and abs(float(spec.std()) - 1) < 1e-3
    # the energy sits in the 1 kHz bin (1000 / (22050 / 512) ~ bin 23)
    assert int(spec[0].mean(dim=1).argmax()) in (23, 24)


def test_cremad_with_split_files(tmp_path):
    root = make_cremad(tmp_path / "crema")
    write_cremad_splits(root, {"1001", "1002", "1003", "1004"}, {"1005"})
    data = cremad(root, train_csv="train.csv", test_csv="test.csv",
                  image_size=32, audio={"seconds": 1.0})
    assert data.modalities == ["audio", "visual"] and data.num_classes == 6
    assert data.input_shapes == {"audio": (1, 257, 63), "visual": (3, 32, 32)}
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 24
    assert data.info["validation"] == "10% of the training actors"
    # items: the 1-s waveform window at the files' 16 kHz and a uint8 frame; resampling to
    # 22,050 Hz, the spectrogram and the normalisation run per batch on the device
    item = data.test[0]
    assert item["inputs"]["audio"].shape == (16000,)
    assert item["inputs"]["visual"].shape == (3, 32, 32)
    assert item["inputs"]["visual"].dtype == torch.uint8
    # evaluation is deterministic; training augments
    assert torch.equal(data.test[2]["inputs"]["visual"], data.test[2]["inputs"]["visual"])
    collate = MultimodalCollate(data.modalities, data.item_shapes, dtypes=data.item_dtypes)
    batch = data.finish_batch(collate([data.train[i] for i in range(3)]))
    assert batch.availability.all()
    assert batch.inputs["audio"].shape == (3, 1, 257, 63)
    assert batch.inputs["visual"].shape == (3, 3, 32, 32)
    assert batch.inputs["visual"].dtype == torch.float32


def test_device_side_recipe_equals_the_per_sample_one(tmp_path):
    """What would be wrong if this failed: moving the STFT and the frame normalisation to the
    device changed the inputs models see (the recipe of SPEC §3)."""
    root = make_cremad(tmp_path / "crema", size=(90, 120))
    write_cremad_splits(root, {"1001", "1002", "1003", "1004"}, {"1005"})
    data = cremad(root, train_csv="train.csv", test_csv="test.csv", image_size=64,
                  audio={"seconds": 1.0})
    readers = list(data.test.readers.values())  # shared by the three splits
    assert set(data.device_transforms) == {"audio", "visual"}

    def per_sample(on: bool) -> None:
        for r in readers:
            r.on_device = on

    collate = MultimodalCollate(data.modalities, data.item_shapes, dtypes=data.item_dtypes)
    batch = data.finish_batch(collate([data.test[i] for i in range(4)]))
    per_sample(False)
    reference = MultimodalCollate(data.modalities, data.input_shapes)(
        [data.test[i] for i in range(4)])
    torch.testing.assert_close(batch.inputs["audio"], reference.inputs["audio"], rtol=0,
                               atol=1e-4)
    # frames: Pillow's antialiased bilinear on uint8 against torch's on float: the same
    # filter, up to rounding
    diff = (batch.inputs["visual"] - reference.inputs["visual"]).abs()
    assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.2
    # training: the same random draws give the same frame, crop box and flip in both paths
    per_sample(True)
    torch.manual_seed(3)
    fast = imagenet_normalize(data.train[0]["inputs"]["visual"])
    per_sample(False)
    torch.manual_seed(3)
    slow = data.train[0]["inputs"]["visual"]
    assert float((fast - slow).abs().mean()) < 0.05


def test_device_resampling_of_tiled_noise_differs_only_at_the_window_edges(tmp_path):
    """CREMA-D's recipe tiles 2.5-s clips into a 3-s window. The device resamples the tiled
    window (one FFT per batch) where the per-sample path resampled the clip, so the two treat
    different spans as periodic: on white noise they differ by a few hundredths of a standard
    deviation near the tile seam and more only in the window's first and last frames."""
    root = make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
    write_cremad_splits(root, {"1001", "1002"}, {"1003"})
    rng = np.random.default_rng(0)
    for wav in sorted((root / "AudioWAV").glob("*.wav")):
        write_wav(wav, 0.3 * rng.standard_normal(40000), 16000)
    data = cremad(root, train_csv="train.csv", test_csv="test.csv", image_size=32)
    collate = MultimodalCollate(data.modalities, data.item_shapes, dtypes=data.item_dtypes)
    fast = data.finish_batch(collate([data.test[i] for i in range(6)])).inputs["audio"]
    for reader in data.test.readers.values():
        reader.on_device = False
    slow = MultimodalCollate(data.modalities, data.input_shapes)(
        [data.test[i] for i in range(6)]).inputs["audio"]
    assert fast.shape == slow.shape == (6, 1, 257, 188)
    per_frame = (fast - slow).abs().mean(dim=(0, 1, 2))  # standardised log-magnitude units
    assert float(per_frame[2:-2].max()) < 0.06
    assert float(per_frame.mean()) < 0.01


def test_cremad_speaker_independent_default_split(tmp_path, caplog):
    root = make_cremad(tmp_path / "crema", actors=[str(1001 + i) for i in range(10)])
    with caplog.at_level("WARNING", logger="dmrnet"):
        data = cremad(root, seed=0, image_size=32, audio={"seconds": 0.5})
    assert "speaker-independent" in caplog.text
    actors = [{r.paths["audio"].stem.split("_")[0] for r in ds.records}
              for ds in (data.train, data.val, data.test)]
    assert not (actors[0] & actors[1]) and not (actors[0] & actors[2])
    assert not (actors[1] & actors[2])
    assert [len(a) for a in actors] == [7, 1, 2]
    again = cremad(root, seed=0, image_size=32, audio={"seconds": 0.5})
    assert [r.where for r in again.test.records] == [r.where for r in data.test.records]


def test_cremad_errors(tmp_path):
    root = make_cremad(tmp_path / "crema", actors=["1001", "1002"])
    (root / "train.csv").write_text("1001_S00_ANG_XX,ANG\n1001_S00_HAP_XX,JOY\n")
    (root / "test.csv").write_text("1002_S00_ANG_XX,ANG\n")
    with pytest.raises(DataError, match="train.csv line 2: label 'JOY' is not one of"):
        cremad(root, train_csv="train.csv", test_csv="test.csv")
    (root / "train.csv").write_text("1001_S00_ANG_XX,ANG,extra\n")
    with pytest.raises(DataError, match="train.csv line 1: expected 2 fields"):
        cremad(root, train_csv="train.csv", test_csv="test.csv")
    (root / "train.csv").write_text("1001_S00_ANG_XX,ANG\n1001_S09_ANG_XX,ANG\n")
    with pytest.raises(DataError, match="1001_S09_ANG_XX.wav' does not exist \\(train.csv line 2"):
        cremad(root, train_csv="train.csv", test_csv="test.csv", val_csv="test.csv")
    with pytest.raises(DataError, match="CREMA-D folder .* does not exist"):
        cremad(tmp_path / "nope")
    with pytest.raises(DataError, match="needs the folder"):
        cremad(None)
    with pytest.raises(DataError, match="modality 'depth' is not one of CREMA-D"):
        cremad(root, modalities=["depth"])
    # a corrupt WAV is found before any training, named with the split file's line
    (root / "train.csv").write_text("1001_S00_ANG_XX,ANG\n")
    good = (root / "AudioWAV" / "1002_S00_ANG_XX.wav").read_bytes()
    (root / "AudioWAV" / "1002_S00_ANG_XX.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match="1 file.* cannot be used.*cannot read WAV file "
                                        ".*1002_S00_ANG_XX.wav.*test.csv line 1"):
        cremad(root, train_csv="train.csv", test_csv="test.csv", val_csv="train.csv")
    # and if it breaks after the scan, reading it still names the file and the line
    (root / "AudioWAV" / "1002_S00_ANG_XX.wav").write_bytes(good)
    data = cremad(root, train_csv="train.csv", test_csv="test.csv", val_csv="train.csv")
    (root / "AudioWAV" / "1002_S00_ANG_XX.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match="cannot read WAV file .*1002_S00_ANG_XX.wav.*test.csv "
                                        "line 1"):
        data.test[0]


def test_kinetics_sounds_classes_from_data_and_missing_modalities(tmp_path):
    root = make_kinetics_sounds(tmp_path / "ks")
    data = kinetics_sounds(root, image_size=32, audio={"seconds": 0.5})
    assert data.class_names == ["laughing", "playing drums", "singing"]
    assert data.input_shapes["audio"] == (1, 257, 23)  # 16 kHz, 0.5 s
    recs = data.train.records + data.val.records
    assert len(recs) == 12
    assert sum(r.paths["audio"] is None for r in recs) == 1
    assert sum(r.paths["visual"] is None for r in recs) == 1
    (root / "classes.txt").write_text("singing\nlaughing\nplaying drums\nwhistling\n")
    data = kinetics_sounds(root, class_list="classes.txt", image_size=32)
    assert data.num_classes == 4 and data.class_names[0] == "singing"
    (root / "bad.txt").write_text("singing\nlaughing\n")
    with pytest.raises(DataError, match="class folder .*playing drums' is not in the class list"):
        kinetics_sounds(root, class_list="bad.txt")
    # evaluation crops deterministically
    ev = data.test
    assert torch.equal(ev[0]["inputs"]["audio"], ev[0]["inputs"]["audio"])


def test_casia_surf_lists_and_errors(tmp_path):
    root = make_casia(tmp_path / "casia")
    data = casia_surf(root, image_size=32)
    assert data.modalities == ["rgb", "depth", "ir"] and data.class_names == ["attack", "real"]
    assert data.input_shapes == {m: (3, 32, 32) for m in ("rgb", "depth", "ir")}
    item = data.val[1]
    assert item["target"] == 1 and item["inputs"]["ir"].shape == (3, 32, 32)
    x = item["inputs"]["rgb"]
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0  # (x - 127.5) / 128
    lines = (root / "train_list.txt").read_text().splitlines()
    (root / "bad_list.txt").write_text("\n".join([*lines[:2], lines[2].rsplit(" ", 1)[0]]))
    with pytest.raises(DataError, match="bad_list.txt line 3: expected 4 fields"):
        casia_surf(root, train_list="bad_list.txt")
    (root / "bad_list.txt").write_text(lines[0].rsplit(" ", 1)[0] + " 2\n")
    with pytest.raises(DataError, match="bad_list.txt line 1: label '2' is not 0"):
        casia_surf(root, train_list="bad_list.txt")
    (root / "bad_list.txt").write_text(lines[0].replace("color.jpg", "colour.jpg") + "\n")
    with pytest.raises(DataError, match="colour.jpg' does not exist \\(bad_list.txt line 1\\)"):
        casia_surf(root, train_list="bad_list.txt")
    (root / "val" / "s000" / "depth.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*depth.jpg.*val_list.txt line 1"):
        casia_surf(root, image_size=32)  # found by the scan, before any training


def test_manifest_kinds_missing_entries_and_errors(tmp_path):
    path = make_manifest(tmp_path / "m")
    data = manifest(manifest=str(path), audio={"seconds": 0.3})
    assert data.modalities == ["vec", "img", "snd"] and data.class_names == ["cat", "dog", "eel"]
    assert data.info["kinds"] == {"vec": "npy", "img": "image", "snd": "audio"}
    assert data.input_shapes["vec"] == (8,) and data.input_shapes["img"] == (3, 16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 6)
    missing = [i for i, r in enumerate(data.train.records) if r.paths["img"] is None]
    assert missing and "img" not in data.train[missing[0]]["inputs"]
    # a wrong-size image names the file and line, before any training
    picture(0, (20, 16)).save(tmp_path / "m" / "i4.png")
    with pytest.raises(DataError, match="image .*i4.png' is 20x16 but this modality's images are "
                                        "16x16.*manifest.csv line 6"):
        manifest(manifest=str(path), audio={"seconds": 0.3})
    data = manifest(manifest=str(path), image_size=[16, 16])
    row = next(i for i, r in enumerate(data.train.records) if r.paths["img"] and
               r.paths["img"].name == "i4.png")
    assert data.train[row]["inputs"]["img"].shape == (3, 16, 16)
    # every problem is reported at once, each with its file and line
    np.save(tmp_path / "m" / "v5.npy", np.zeros(9, dtype=np.float32))
    with pytest.raises(DataError, match="2 file.* cannot be used.*i4.png' is 20x16.*"
                                        "v5.npy' has shape \\(9,\\), expected \\(8,\\).*line 7"):
        manifest(manifest=str(path))
    np.save(tmp_path / "m" / "v5.npy", np.full(8, np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="v5.npy' holds NaN or inf"):
        manifest(manifest=str(path), image_size=[16, 16])
    np.save(tmp_path / "m" / "v5.npy", np.zeros(8, dtype=np.float32))
    text = path.read_text().splitlines()
    path.write_text("\n".join([*text[:2], text[2].replace(",dog,", ",cow,"), *text[3:]]) + "\n")
    with pytest.raises(DataError, match="manifest.csv line 3: label 'cow' is not one of"):
        manifest(manifest=str(path), classes=["cat", "dog", "eel"])
    with pytest.raises(DataError, match="modality 'depth' is not a column"):
        manifest(manifest=str(path), modalities=["depth"])
    with pytest.raises(DataError, match="does not exist"):
        manifest(manifest=str(tmp_path / "none.csv"))
    (tmp_path / "short.csv").write_text("vec,label\nv0.npy\n")
    with pytest.raises(DataError, match="short.csv line 2: expected 2 fields"):
        manifest(manifest=str(tmp_path / "short.csv"), root=str(tmp_path / "m"))


def test_a_model_of_some_columns_leaves_out_samples_with_none_of_them(tmp_path):
    """A dedicated model or a teacher of ``vec`` alone trains on the samples that have it;
    every other sample keeps the split it has in the model of every column. (Before, the
    source refused the first sample without a ``vec`` file, so ``dedicated`` and ``tutored``
    failed on any manifest with missing entries.)"""
    path = make_manifest(tmp_path / "m")
    full = manifest(manifest=str(path), audio={"seconds": 0.3})
    vec = manifest(manifest=str(path), modalities=["vec"])
    for a, b in ((full.train, vec.train), (full.val, vec.val), (full.test, vec.test)):
        assert [r.where for r in a.records if r.paths["vec"] is not None] == \
            [r.where for r in b.records]
    assert sum(len(p) for p in (vec.train, vec.val, vec.test)) == 36 - 7  # i % 5 == 1: none
    lines = path.read_text().splitlines()  # no validation sample has a vec file
    path.write_text("\n".join(line if not line.endswith(",val") else "," + line.split(",", 1)[1]
                              for line in lines) + "\n")
    with pytest.raises(DataError, match="no validation sample has any of \\['vec'\\]"):
        manifest(manifest=str(path), modalities=["vec"])


def test_loaders_work_with_worker_processes(tmp_path):
    from dmrnet.training import MultimodalDataModule

    path = make_manifest(tmp_path / "m")
    dm = MultimodalDataModule("manifest", batch_size=8, num_workers=2,
                              dataset_kwargs={"manifest": str(path), "audio": {"seconds": 0.3}})
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == len(dm.data.train)
    first = batches[0]
    assert set(first.inputs) == {"vec", "img", "snd"} and first.availability.dtype == torch.bool
    single = MultimodalDataModule("manifest", batch_size=8, num_workers=0,
                                  dataset_kwargs={"manifest": str(path), "audio": {"seconds": 0.3}})
    ev_multi = next(iter(dm.val_dataloader()))
    ev_single = next(iter(single.val_dataloader()))
    for m in ev_multi.inputs:  # deterministic evaluation items, whatever the worker count
        assert torch.equal(ev_multi.inputs[m], ev_single.inputs[m])


def test_audio_options_are_checked_in_one_line():
    """A mistyped audio option was a TypeError traceback from AudioSpec."""
    from dmrnet.data.transforms import AudioSpec

    assert AudioSpec.of(None, {"source_rate": 16000}) == AudioSpec(source_rate=16000)
    assert AudioSpec.of({"seconds": 2}, {"seconds": 3.0}).seconds == 2
    for given, says in [({"wavefrom": True}, "audio option 'wavefrom' is not one of"),
                        ({"sample_rate": 0}, "sample_rate takes a whole number >= 1"),
                        ({"hop": 2.5}, "hop takes a whole number"),
                        ({"source_rate": "16k"}, "source_rate takes a whole number"),
                        ({"seconds": -1}, "seconds takes a number > 0"),
                        ({"train_crop": "middle"}, "train_crop takes start or random"),
                        ({"waveform": "yes"}, "waveform takes true or false"),
                        ([1, 2], "must be a mapping")]:
        with pytest.raises(DataError, match=says):
            AudioSpec.of(given)
