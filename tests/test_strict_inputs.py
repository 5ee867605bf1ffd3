"""Strict inputs, checked up front (issue 10, item 3): every split's files are looked at once
before training and all problems are reported together; manifests refuse what a careful user
would not want silently "handled"; numeric settings are checked before any work."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from dmrnet.cli import main
from dmrnet.data import DataError, manifest
from dmrnet.data.io import read_image, read_npy

from .fixtures import make_manifest


def rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ls: [ls[0].replace("img", "vec"), *ls[1:]], "column 'vec' appears twice"),
    (lambda ls: [ls[0].replace("img", " "), *ls[1:]], "column 2 of the header has no name"),
    (lambda ls: [ls[0], ls[1].replace(",cat,", ",,"), *ls[2:]], "line 2: label '' is not a"),
    (lambda ls: [ls[0], ls[1].replace(",cat,", ",nan,"), *ls[2:]], "label 'nan' is not a"),
    (lambda ls: [ls[0], ls[1].replace(",cat,", ",Cat,"), *ls[2:]],
     "labels 'Cat' and 'cat' .* look like one class written two ways"),
])
def test_manifest_header_and_label_mistakes_are_errors(tmp_path, edit, message):
    path = make_manifest(tmp_path / "m")
    rewrite(path, edit)
    with pytest.raises(DataError, match=message):
        manifest(manifest=str(path), audio={"seconds": 0.3})


def test_numeric_labels_written_two_ways_are_one_class_or_an_error(tmp_path):
    path = make_manifest(tmp_path / "m")
    names = {"cat": "1", "dog": "2", "eel": "3"}
    rewrite(path, lambda ls: [ls[0], *[ln.replace(f",{k},", f",{v},")
                                       for ln in ls[1:] for k, v in names.items() if
                                       f",{k}," in ln]])
    assert manifest(manifest=str(path), audio={"seconds": 0.3}).class_names == ["1", "2", "3"]
    rewrite(path, lambda ls: [ls[0], ls[1].replace(",1,", ",1.0,"), *ls[2:]])
    with pytest.raises(DataError, match="labels '1' and '1.0' .* one class written two ways"):
        manifest(manifest=str(path), audio={"seconds": 0.3})


def test_classes_and_modalities_only_in_evaluation_are_errors(tmp_path):
    path = make_manifest(tmp_path / "m")
    # the only "eel" rows left are in val and test
    rewrite(path, lambda ls: [ls[0], *[ln for ln in ls[1:]
                                       if not (",eel," in ln and ln.endswith(",train"))]])
    with pytest.raises(DataError, match="class 'eel' is in the validation split but never in "
                                        "training"):
        manifest(manifest=str(path), audio={"seconds": 0.3})
    path = make_manifest(tmp_path / "n")

    def no_vec_in_training(lines: list[str]) -> list[str]:
        out = [lines[0]]
        for ln in lines[1:]:
            _vec, img, snd, *rest = ln.split(",")
            if ln.endswith(",train"):
                if not (img or snd):
                    continue  # a training row with nothing but vec goes
                ln = ",".join(["", img, snd, *rest])
            out.append(ln)
        return out

    rewrite(path, no_vec_in_training)
    with pytest.raises(DataError, match="modality 'vec' has files in the .* split but none in "
                                        "training"):
        manifest(manifest=str(path), audio={"seconds": 0.3})


def test_an_array_header_promising_terabytes_is_refused_not_allocated(tmp_path):
    path = tmp_path / "huge.npy"
    np.save(path, np.zeros(4, dtype=np.float32))
    data = bytearray(path.read_bytes())
    header = data[:128].decode("latin1").replace("(4,)", "(1099511627776,)")
    path.write_bytes(header[:128].encode("latin1") + bytes(data[128:]))
    with pytest.raises(DataError, match="cannot read array .*huge.npy"):
        read_npy(path)


def png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_decompression_bomb_image_is_a_one_line_error(tmp_path):
    path = tmp_path / "bomb.png"
    png_header_only(path, 40_000, 40_000)  # 1.6 G pixels claimed by a 57-byte file
    with pytest.raises(DataError, match="too large to decode safely"):
        read_image(path)


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "-5"], "seeds must be whole numbers from 0 to 4294967295; got -5"),
    (["--embed-dim", "0"], "embed_dim must be a whole number >= 1; got 0"),
    (["--lr", "nan"], "optim.lr must be a finite number > 0; got nan"),
    (["--option", "beta=-1"], "beta must be a finite number >= 0"),
    (["--set", "optim.weight_decay=-1"], "optim.weight_decay must be a finite number >= 0"),
    (["--option", "hcr_top_k=0"], "hcr_top_k must be a whole number >= 1; got 0"),
    (["--batch-size", "0"], "batch size must be at least 1"),
])
def test_numeric_settings_are_checked_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    assert main(["benchmark", "--out", str(out), "--epochs", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_subset_weights_naming_some_subsets_warn_and_star_sets_the_rest(tmp_path, caplog):
    """On 4fe5d57 unnamed subsets silently got weight 0, and `dedicated` in the same run
    crashed on the shared model's subset names."""
    from dmrnet.subsets import SubsetSampler, SubsetSpace

    space = SubsetSpace(["strong", "medium", "weak"])
    assert SubsetSampler(space, {"weak": 4, "*": 1}).weights.tolist() == [1, 1, 4, 1, 1, 1, 1]
    code = main(["benchmark", "--dataset", "synthetic", "--methods", "baseline,dedicated",
                 "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "b"),
                 "--set", "subset_weights={weak: 4, medium+weak: 4}", "--no-progress"])
    assert code == 0
    assert "names 2 of 7 subsets: the other 5 (strong, medium, strong+medium, strong+weak, ...)" \
        " get weight 0" in caplog.text
