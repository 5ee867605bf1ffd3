"""A model reads a new file as its training data were read at evaluation: each file
modality's reader goes with the model (checkpoint and model folder), so ``dmrnet predict``
and :meth:`Predictor.read` take a WAV, a frame or frame folder, a face image, as the data
source took them, and give the evaluation pipeline's probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from dmrnet.cli import main
from dmrnet.data.base import DataError
from dmrnet.data.files import READER_KINDS, READERS_KEY, NpyReader, Reader, reader_from_dict
from dmrnet.predict import load_module, predict_subsets, read_input
from dmrnet.serving import load_model, save_model
from dmrnet.training import MultimodalDataModule, MultimodalModule

from .fixtures import make_casia, make_cremad, make_manifest, write_cremad_splits


def _untrained(dm: MultimodalDataModule) -> MultimodalModule:
    """A model of the data with random weights: reading, not training, is under test."""
    torch.manual_seed(0)
    return MultimodalModule(dm.modalities, {m: list(s) for m, s in dm.input_shapes.items()},
                            dm.num_classes, class_names=dm.class_names,
                            preprocessing=dm.preprocessing,
                            network={"encoder": "mlp", "embed_dim": 8}).eval()


def _evaluation(module: MultimodalModule, dm: MultimodalDataModule) -> torch.Tensor:
    """Every test sample's probabilities through the data pipeline (loader, device step)."""
    batches = [dm.on_after_batch_transfer(b) for b in dm.test_dataloader()]
    with torch.no_grad():
        return torch.cat([module.predict_step(b, 0)["probs"] for b in batches])


def _data(kind: str, tmp_path):
    if kind == "cremad":
        root = make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
        write_cremad_splits(root, {"1001", "1002"}, {"1003"})
        return MultimodalDataModule("cremad", root=str(root), batch_size=4, dataset_kwargs={
            "train_csv": "train.csv", "test_csv": "test.csv", "image_size": 32,
            "audio": {"seconds": 0.5}})
    if kind == "casia_surf":
        return MultimodalDataModule("casia_surf", root=str(make_casia(tmp_path / "casia")),
                                    batch_size=4, dataset_kwargs={"image_size": 24})
    csv = make_manifest(tmp_path / "manifest")
    return MultimodalDataModule("manifest", batch_size=4, dataset_kwargs={
        "manifest": str(csv), "audio": {"seconds": 0.3}})


@pytest.mark.parametrize("kind", ["cremad", "casia_surf", "manifest"])
def test_predict_reads_a_file_as_evaluation_did(kind, tmp_path):
    """Before, ``dmrnet predict`` refused a WAV, fed a frame without its ImageNet
    normalisation and a face without its recipe, and an image as 0..255 where training
    saw [0, 1]: wrong probabilities, silently."""
    dm = _data(kind, tmp_path)
    module = _untrained(dm)
    readers = module.hparams["preprocessing"][READERS_KEY]
    assert set(readers) == set(dm.modalities)  # every file modality's reader
    ref = _evaluation(module, dm)
    records = dm.data.test.records
    full = next(i for i, r in enumerate(records) if all(r.paths.get(m) for m in dm.modalities))
    paths = {m: records[full].paths[m] for m in dm.modalities}
    got = predict_subsets(module, {m: read_input(module, m, p) for m, p in paths.items()})
    assert torch.allclose(got["+".join(dm.modalities)][0], ref[full], atol=1e-5)

    folder = save_model(module, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["preprocessing"][READERS_KEY] == readers  # the folder keeps the readers
    predictor = load_model(folder)
    inputs = {m: predictor.read(m, p) for m, p in paths.items()}
    assert torch.allclose(predictor.predict(inputs).probs[0], ref[full], atol=1e-5)
    by_path = predictor.predict({m: str(p) for m, p in paths.items()})  # paths, read for you
    assert torch.equal(by_path.probs, predictor.predict(inputs).probs)
    one = dm.modalities[0]  # and a subset, with the others absent
    alone = predict_subsets(module, {one: read_input(module, one, paths[one])})[one]
    assert torch.allclose(predictor.predict({one: inputs[one]}).probs, alone, atol=1e-5)


def test_the_command_takes_a_wav_and_a_single_frame(tmp_path, capsys):
    """``dmrnet predict --input audio=clip.wav --input visual=frame.jpg`` on a CREMA-D
    model: one frame is a folder of that one frame."""
    dm = _data("cremad", tmp_path)
    module = _untrained(dm)
    folder = save_model(module, tmp_path / "model")
    record = next(r for r in dm.data.test.records if all(r.paths.values()))
    frame = sorted(record.paths["visual"].iterdir())[0]
    assert main(["predict", "--checkpoint", str(folder), "--input",
                 f"audio={record.paths['audio']}", "--input", f"visual={frame}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["audio", "visual", "audio+visual"]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not a wave")
    assert main(["predict", "--checkpoint", str(folder), "--input", f"audio={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmrnet: error:") and "bad.wav" in err and "\n" not in err


def test_a_stored_reader_round_trips_and_an_unknown_kind_is_one_line():
    for kind in ("audio", "frames", "image", "npy"):
        assert kind in READER_KINDS
    reader = NpyReader(shape=(3, 4), mean=torch.zeros(3, 4), std=torch.ones(3, 4))
    stored = reader.to_dict()
    assert stored == {"reader": "npy", "shape": [3, 4]}  # no fitted statistics in it
    assert json.loads(json.dumps(stored)) == stored
    assert reader_from_dict(stored) == NpyReader(shape=[3, 4])
    with pytest.raises(DataError, match="'sonar' reader, which no loaded code defines.*--plugin"):
        reader_from_dict({"reader": "sonar", "depth": 3})
    with pytest.raises(DataError, match="do not fit this dmrnet"):
        reader_from_dict({"reader": "npy", "shape": [3], "colour": 1})


def test_a_plugins_reader_kind_is_found_by_its_name(tmp_path):
    """A reader defined outside the package is stored and read back like dmrnet's own."""
    from dataclasses import dataclass

    @dataclass
    class Scaled(Reader):
        factor: float = 2.0
        shape: tuple[int, ...] = (2,)
        kind = "test-scaled"

        def decode(self, path):
            return torch.tensor([float(path.read_text())] * 2) * self.factor

    try:
        (tmp_path / "x.num").write_text("1.5")
        back = reader_from_dict(Scaled(factor=3.0).to_dict())
        assert torch.equal(back.read_one(tmp_path / "x.num"), torch.tensor([4.5, 4.5]))
    finally:
        READER_KINDS.pop("test-scaled", None)


def test_old_models_without_readers_still_predict(tmp_path):
    """A checkpoint written before readers were stored reads .npy and images as before."""
    dm = _data("manifest", tmp_path)
    module = _untrained(dm)
    del module.hparams["preprocessing"][READERS_KEY]
    record = next(r for r in dm.data.test.records if r.paths.get("vec"))
    x = read_input(module, "vec", record.paths["vec"])
    assert x.shape == (1, 8)
    with pytest.raises(DataError, match="use .npy or an image file"):
        read_input(module, "snd", record.paths["snd"] or tmp_path / "s.wav")
    depth = MultimodalModule(["depth"], {"depth": [1, 8, 8]}, 2)  # raw 16-bit values
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        read_input(depth, "depth", tmp_path / "broken.png")
    assert load_module  # the checkpoint path is the same function (read_input)


def test_hostile_files_are_one_line_each_and_a_fifo_does_not_block(tmp_path):
    """A missing file, a folder, a FIFO (reading one never ends: it hung ``read`` before),
    a broken image: each a DataError naming the file. An alarm turns a regression that
    blocks into a failure instead of a hung suite."""
    import os
    import signal

    dm = _data("cremad", tmp_path)
    predictor = load_model(save_model(_untrained(dm), tmp_path / "model"))
    os.mkfifo(tmp_path / "fifo.wav")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cases = [("audio", "missing.wav", "No such file"), ("audio", "empty", "Is a directory"),
             ("audio", "fifo.wav", "not a regular file"), ("audio", "fifo.npy",
                                                          "not a regular file"),
             ("visual", "empty", "holds no image"), ("visual", "broken.jpg", "broken.jpg"),
             ("audio", "broken.jpg", "broken.jpg")]

    def blocked(signum, frame):
        raise TimeoutError("reading blocked")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(60)
    try:
        for modality, name, says in cases:
            with pytest.raises(DataError) as err:
                predictor.read(modality, tmp_path / name)
            assert says in str(err.value) and name in str(err.value), (name, err.value)
            assert "\n" not in str(err.value)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_text_given_to_an_audio_modality_names_what_it_reads(tmp_path):
    dm = _data("cremad", tmp_path)
    module = _untrained(dm)
    (tmp_path / "note.txt").write_text("hello")
    with pytest.raises(DataError, match="'audio' was not trained on text; give its .npy input "
                                        "or a WAV file"):
        read_input(module, "audio", tmp_path / "note.txt")
