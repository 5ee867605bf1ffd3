"""Text as a modality with no extra package: .txt files in a manifest, a vocabulary fitted on
the training split, token-id sequences read by the ``tokens`` encoder, and models that read
raw text after a reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.cli import main
from dmrnet.data import DATASETS, DataError
from dmrnet.data.text import Vocabulary, words

WORDS = {0: ["calm", "quiet", "gentle", "soft"], 1: ["loud", "angry", "harsh", "sharp"]}


def write_manifest(folder: Path, n: int = 48) -> Path:
    """``text`` (.txt, 2..9 words of the class's list with shared filler words; every 6th
    sample has none) and ``img`` (.npy, weakly informative; every 5th has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["text,img,label"]
    for i in range(n):
        y = i % 2
        count = 2 + i % 8
        text = " ".join(rng.choice(WORDS[y] + ["the", "a", "and"], count))
        (folder / f"t{i}.txt").write_text(text.capitalize() + ".")
        np.save(folder / f"x{i}.npy", rng.normal(0.3 * y, 1.0, 6).astype(np.float32))
        no_img = i % 5 == 4 and i % 6 != 5  # never neither
        rows.append(f"{'' if i % 6 == 5 else f't{i}.txt'},{'' if no_img else f'x{i}.npy'},"
                    f"{['calm', 'angry'][y]}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def test_vocabulary_is_fitted_on_training_texts_and_reads_any_text():
    vocab = Vocabulary.fit(["The cat sat.", "the dog sat", "a cat!"], max_tokens=4)
    assert vocab.words == ("cat", "sat", "the", "!", ".", "a", "dog")  # by count, then name
    assert words("Hello, World") == ["hello", ",", "world"]
    assert vocab.ids("THE CAT sat on the mat").tolist() == [4.0, 2.0, 3.0, 1.0]  # 4 at most
    assert vocab.ids("").tolist() == [1.0]  # no word: one unknown-word id
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(DataError, match="vocabulary must be a list of distinct words"):
        Vocabulary.from_dict({"vocabulary": ["a", "a"]})


def test_manifest_text_is_a_token_sequence_with_its_vocabulary(tmp_path):
    path = write_manifest(tmp_path / "m")
    data = DATASETS.get("manifest")(manifest=str(path), text={"max_tokens": 8})
    assert data.sequences == ["text"] and data.input_shapes["text"] == (8,)
    vocab = data.info["preprocessing"]["text"]
    assert vocab["max_tokens"] == 8 and "calm" in vocab["vocabulary"]
    assert "standardize" in data.info["preprocessing"]  # the .npy column's statistics too
    train_words = {w for r in data.train.records if r.paths["text"] is not None
                   for w in words(r.paths["text"].read_text())}
    assert set(vocab["vocabulary"]) == train_words  # the training split's words only
    item = next(data.train[i] for i in range(len(data.train)) if "text" in data.train[i]["inputs"])
    ids = item["inputs"]["text"]
    assert ids.dim() == 1 and 1 <= len(ids) <= 8 and bool((ids >= 1).all())
    with pytest.raises(DataError, match="text option 'max_len' is not one of max_tokens"):
        DATASETS.get("manifest")(manifest=str(path), text={"max_len": 8})
    with pytest.raises(DataError, match="text option max_tokens"):
        DATASETS.get("manifest")(manifest=str(path), text={"max_tokens": 0})


def test_text_and_arrays_train_every_subset_and_a_model_folder_reads_raw_text(tmp_path,
                                                                               capsys):
    """Done-when of issue 25 (built-in tokenizer): a manifest whose ``text`` column holds .txt
    files and whose ``img`` column holds .npy files trains with baseline and dmrnet, with a
    sequence encoder; the saved folder predicts from a .txt file after a reload."""
    path = write_manifest(tmp_path / "m")
    out = tmp_path / "b"
    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(path), "--methods",
                 "baseline,dmrnet", "--epochs", "1", "--seeds", "0", "--jobs", "1", "--out",
                 str(out), "--no-progress"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["subsets"]) == ["img", "text", "text+img"]
    # one seed: no spread to show, not "± 0.0000" (issue 26)
    printed, report = capsys.readouterr().out, (out / "report.md").read_text()
    assert "(1 seed)" in printed and "(1 seed)" in report
    assert "± 0.0000" not in printed + report
    ckpt = next(out.rglob("dmrnet-seed0/best.ckpt"))
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 0
    import dmrnet

    served = dmrnet.load_model(model)
    assert type(served.model.encoders["text"]).__name__ == "TokenEncoder"
    config = json.loads((model / "config.json").read_text())
    assert config["model"]["sequences"] == ["text"]
    assert "calm" in config["preprocessing"]["text"]["vocabulary"]
    (tmp_path / "q.txt").write_text("Calm and quiet, the gentle soft calm.")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(model), "--input",
                 f"text={tmp_path / 'q.txt'}"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1].startswith("text ")
    calm = served.predict({"text": "Calm and quiet, the gentle soft calm."}).probs
    # a string is the text itself; a Path is the file holding it
    assert torch.equal(served.predict({"text": tmp_path / "q.txt"}).probs, calm)
    assert not torch.equal(served.predict({"text": str(tmp_path / "q.txt")}).probs, calm)
    both = served.predict([{"text": "calm quiet"}, {"text": "angry loud harsh",
                                                    "img": np.zeros(6, np.float32)}])
    assert both.subsets == ["text", "text+img"]
    # the checkpoint reads the same text the same way as the folder
    from dmrnet.predict import load_trained, predict_subsets, read_input

    module = load_trained(ckpt)
    probs = predict_subsets(module, {"text": read_input(module, "text", tmp_path / "q.txt")})
    assert torch.allclose(probs["text"], calm, atol=1e-6)
    np.save(tmp_path / "q.npy", np.zeros(3))
    assert main(["predict", "--checkpoint", str(model), "--input",
                 f"text={tmp_path / 'q.npy'}"]) == 2
    assert "modality 'text' reads text: give a .txt file" in capsys.readouterr().err
