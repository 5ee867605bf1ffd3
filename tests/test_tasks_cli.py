"""Short `dmrnet fit` + all-subset `dmrnet test` runs through the CLI on fixtures in each
paper task's layout and on a manifest; `dmrnet prepare cremad` on a real (tiny) video."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from dmrnet.cli import main

from .fixtures import (
    make_casia,
    make_cremad,
    make_kinetics_sounds,
    make_manifest,
    write_cremad_splits,
    write_video,
)

ROOT = Path(__file__).resolve().parents[1]


def fit_and_test(config: str, out: Path, extra: list[str]) -> dict[str, float]:
    cfg = str(ROOT / "configs" / "smoke" / config)
    common = ["--config", cfg, "--trainer.default_root_dir", str(out), *extra]
    assert main(["fit", *common]) == 0
    ckpts = sorted((out / "lightning_logs").glob("version_0/checkpoints/best-*.ckpt"))
    assert len(ckpts) == 1
    assert main(["test", *common, "--ckpt_path", str(ckpts[0])]) == 0
    with open(out / "lightning_logs" / "version_1" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}


def test_cremad_fit_and_test(tmp_path, capsys):
    root = make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
    write_cremad_splits(root, {"1001", "1002"}, {"1003"})
    m = fit_and_test("cremad.yaml", tmp_path / "run", [
        "--data.root", str(root), "--data.dataset_kwargs.train_csv", "train.csv",
        "--data.dataset_kwargs.test_csv", "test.csv"])
    for subset in ("audio", "visual", "audio+visual"):
        assert 0.0 <= m[f"test/{subset}/accuracy"] <= 1.0
    assert "test/mean" in m and "test/worst" in m
    # the fitted checkpoint reads a raw clip and a frame as the test split was read
    ckpt = next((tmp_path / "run" / "lightning_logs").glob("version_0/checkpoints/best-*.ckpt"))
    clip = sorted((root / "AudioWAV").glob("1003_*.wav"))[0]
    frame = sorted((root / "Image-01-FPS" / clip.stem).iterdir())[0]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), "--input", f"audio={clip}", "--input",
                 f"visual={frame}"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "audio", "visual", "audio+visual"]


def test_kinetics_sounds_fit_and_test(tmp_path):
    root = make_kinetics_sounds(tmp_path / "ks")
    m = fit_and_test("kinetics_sounds.yaml", tmp_path / "run", ["--data.root", str(root)])
    assert {"test/audio/accuracy", "test/visual/accuracy", "test/audio+visual/accuracy"} <= set(m)


def test_casia_surf_fit_and_test_reports_iso_rates(tmp_path):
    root = make_casia(tmp_path / "casia")
    m = fit_and_test("casia_surf.yaml", tmp_path / "run", ["--data.root", str(root)])
    for subset in ("rgb", "depth", "ir", "rgb+depth", "rgb+ir", "depth+ir", "rgb+depth+ir"):
        for key in ("acer", "apcer", "bpcer", "accuracy"):
            assert 0.0 <= m[f"test/{subset}/{key}"] <= 1.0
        assert m[f"test/{subset}/acer"] == pytest.approx(
            (m[f"test/{subset}/apcer"] + m[f"test/{subset}/bpcer"]) / 2, abs=1e-6)
    # the smoke config names neither: the dataset's metric, selected in its direction
    saved = yaml.safe_load((tmp_path / "run" / "lightning_logs" / "version_0" /
                            "config.yaml").read_text())
    assert saved["model"]["training"]["metric"] == "acer" and saved["checkpoint"]["mode"] == "min"
    # the worst subset is the one with the highest ACER (lower is better)
    assert m["test/worst"] == pytest.approx(max(m[f"test/{s}/acer"] for s in (
        "rgb", "depth", "ir", "rgb+depth", "rgb+ir", "depth+ir", "rgb+depth+ir")))


def test_manifest_fit_test_and_benchmark(tmp_path, capsys):
    path = make_manifest(tmp_path / "m")
    m = fit_and_test("manifest.yaml", tmp_path / "run",
                     ["--data.dataset_kwargs.manifest", str(path)])
    assert len([k for k in m if k.startswith("test/") and k.endswith("/accuracy")]) == 7
    out = tmp_path / "bench"
    code = main(["benchmark", "--dataset", "manifest", "--manifest", str(path),
                 "--modalities", "vec,img", "--seeds", "0", "--epochs", "2", "--out", str(out),
                 "--set", "encoders={img: {name: resnet18}}", "--option", "hcr_warmup_epochs=1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["modalities"] == ["vec", "img"]
    assert set(res["runs"][0]["per_subset"]) == {"vec", "img", "vec+img"}


def test_casia_benchmark_selects_on_acer(tmp_path):
    root = make_casia(tmp_path / "casia")
    out = tmp_path / "b"
    code = main(["benchmark", "--dataset", "casia_surf", "--root", str(root), "--methods",
                 "dmrnet", "--seeds", "0", "--epochs", "1", "--out", str(out), "--no-progress",
                 "--encoder", "se_resnet_stem", "--set", "trunk=resnet_trunk",
                 "--set", "metric=acer", "--set", "dataset_kwargs={image_size: 32}",
                 "--set", "embed_dim=32", "--option", "hcr_subsets=[rgb, ir, rgb+ir]",
                 "--option", "hcr_warmup_epochs=0"])
    assert code == 2  # dataset_kwargs is not a model setting: a clear error, not a crash
    cfg = out.parent / "casia.yaml"
    cfg.write_text(f"dataset: casia_surf\nroot: {root}\nmethods: [dmrnet]\nseeds: [0]\n"
                   f"epochs: 1\nprogress: false\ndataset_kwargs: {{image_size: 32}}\nmodel:\n"
                   "  encoder: se_resnet_stem\n  trunk: resnet_trunk\n  metric: acer\n"
                   "  embed_dim: 32\noptions:\n  hcr_subsets: [rgb, ir, rgb+ir]\n"
                   "  hcr_warmup_epochs: 0\n")
    assert main(["benchmark", "--config", str(cfg), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "acer" and res["higher_is_better"] is False
    run = res["runs"][0]
    assert run["worst"] == pytest.approx(max(run["per_subset"].values()))
    assert set(run["per_subset_all"]["rgb"]) == {"acer", "apcer", "bpcer", "accuracy"}
    assert run["objective_state"]["hard_subsets"] == ["rgb", "ir", "rgb+ir"]


def test_prepare_cremad_extracts_frames_with_pyav(tmp_path, capsys):
    pytest.importorskip("av")
    videos = tmp_path / "VideoFlash"
    write_video(videos / "1001_DFA_ANG_XX.mp4")  # 2.5 s at 10 fps
    out = tmp_path / "Image-01-FPS"
    assert main(["prepare", "cremad", "--videos", str(videos), "--out", str(out)]) == 0
    frames = sorted((out / "1001_DFA_ANG_XX").glob("*.jpg"))
    assert [f.name for f in frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    # existing frames are kept unless --overwrite
    frames[0].write_bytes(b"user edit")
    assert main(["prepare", "cremad", "--videos", str(videos), "--out", str(out)]) == 0
    assert frames[0].read_bytes() == b"user edit"
    assert "kept 1 existing" in capsys.readouterr().out
    (videos / "1002_DFA_ANG_XX.mp4").write_bytes(b"broken")
    assert main(["prepare", "cremad", "--videos", str(videos), "--out", str(out)]) == 2
    assert "cannot open video" in capsys.readouterr().err


def test_prepare_kinetics_sounds_from_video_clips(tmp_path, capsys):
    """``dmrnet prepare kinetics_sounds`` turns <videos>/<split>/<class>/<clip>.mp4 into the
    loader's layout (frames, and the audio track as a 16 kHz WAV), leaves out a clip it
    cannot read (named in prepare_errors.txt), keeps a clip without audio as a sample with
    its audio missing, and the loader reads the result."""
    pytest.importorskip("av")
    from dmrnet.data.io import read_wav

    from .fixtures import tone

    videos = tmp_path / "clips"
    for split, n in (("train", 3), ("test", 2)):
        for k, cls in enumerate(("playing drums", "laughing")):
            for c in range(n):
                silent = split == "train" and k == 1 and c == 0
                write_video(videos / split / cls / f"clip{c}.mp4", frames=12,
                            audio=None if silent else tone(k, rate=44100, seconds=1.2,
                                                           seed=c), rate=44100)
    (videos / "test" / "laughing" / "broken.mp4").write_bytes(b"not a video")
    root = tmp_path / "ks"
    assert main(["prepare", "kinetics_sounds", "--videos", str(videos), "--out",
                 str(root)]) == 0
    said = capsys.readouterr().out
    assert "prepared 10 clip(s)" in said and "1 clip(s) could not be read" in said
    assert "broken.mp4" in (root / "prepare_errors.txt").read_text()
    wav = root / "audio" / "train" / "playing drums" / "clip0.wav"
    samples, rate = read_wav(wav)
    assert rate == 16000 and abs(len(samples) - 1.2 * 16000) < 0.1 * 16000
    assert float(samples.abs().max()) > 0.1  # the tone, not silence
    frames = root / "visual" / "train_img" / "Image-01-FPS" / "laughing" / "clip0"
    assert len(list(frames.glob("*.jpg"))) == 2  # 1.2 s at one frame per second
    assert not (root / "audio" / "train" / "laughing" / "clip0.wav").exists()  # no track
    assert not (root / "visual" / "test_img" / "Image-01-FPS" / "laughing" / "broken").exists()
    assert not list(root.rglob(".*partial*"))
    # a second run keeps what is done (the silent clip is not retried) and reports the rest
    assert main(["prepare", "kinetics_sounds", "--videos", str(videos), "--out",
                 str(root)]) == 0
    assert "prepared 0 clip(s)" in capsys.readouterr().out
    # a file of the user's by the list's name is never replaced or removed
    (root / "prepare_errors.txt").write_text("my notes\n")
    assert main(["prepare", "kinetics_sounds", "--videos", str(videos), "--out",
                 str(root)]) == 0
    assert (root / "prepare_errors.txt").read_text() == "my notes\n"
    assert "prepare_errors-" in capsys.readouterr().out
    from dmrnet.data import kinetics_sounds

    data = kinetics_sounds(root, image_size=32)  # the loader reads it (the README trains on it)
    assert len(data.train) + len(data.val) == 6 and len(data.test) == 4
    assert main(["prepare", "kinetics_sounds", "--videos", str(videos / "train"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "must hold train/ and test/" in capsys.readouterr().err


def test_an_interrupted_prepare_leaves_no_half_written_clip(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a clip's frames: the clip's folder is not there (a rerun
    would have skipped a half-filled one as done) and no partial folder is left."""
    pytest.importorskip("av")
    from dmrnet.data import prepare

    write_video(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.mp4")
    real = prepare.extract_frames

    def interrupted(video, out_dir, fps=1.0):
        real(video, out_dir, fps)  # frames written, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "extract_frames", interrupted)
    out = tmp_path / "Image-01-FPS"
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_cremad(tmp_path / "VideoFlash", out)
    assert not (out / "1001_DFA_ANG_XX").exists() and not list(out.iterdir())
    monkeypatch.setattr(prepare, "extract_frames", real)
    assert prepare.prepare_cremad(tmp_path / "VideoFlash", out) == 1
    assert len(list((out / "1001_DFA_ANG_XX").glob("*.jpg"))) == 3


def test_prepare_in_several_processes_writes_the_same_files(tmp_path):
    """``--jobs 2`` (each clip in its own process) writes byte for byte what one process
    writes, and an unreadable clip is still listed."""
    pytest.importorskip("av")
    from dmrnet.data.prepare import prepare_kinetics_sounds

    from .fixtures import tone

    videos = tmp_path / "clips"
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b")):
            write_video(videos / split / cls / "c.mp4", frames=12,
                        audio=tone(k, rate=44100, seconds=1.2), rate=44100)
    (videos / "test" / "b" / "broken.mp4").write_bytes(b"not a video")
    for jobs in (1, 2):
        assert prepare_kinetics_sounds(videos, tmp_path / f"out{jobs}", jobs=jobs,
                                       echo=lambda _: None) == 4

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "prepare_errors.txt"}

    one, two = files(tmp_path / "out1"), files(tmp_path / "out2")
    assert len(one) == 4 * 2 + 4 and one == two  # frames (2 a clip) and a WAV per clip
    assert "broken.mp4" in (tmp_path / "out2" / "prepare_errors.txt").read_text()
