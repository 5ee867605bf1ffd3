"""Tiny datasets in the real on-disk layouts (synthetic WAVs, JPEG frames, list files, manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dmrnet.data.cremad import CLASSES as CREMAD_CLASSES
from dmrnet.data.io import write_wav


def tone(label: int, rate: int = 16000, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    """A class-dependent tone plus noise: the class is audible in the spectrogram."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * (300 + 250 * label) * t) + 0.05 * rng.standard_normal(t.size)


def picture(label: int, size=(40, 48), seed: int = 0, gray: bool = False) -> Image.Image:
    """A class-dependent colour field plus noise."""
    rng = np.random.default_rng(seed)
    base = np.array([(label * 67) % 256, (label * 131 + 60) % 256, (label * 29 + 120) % 256])
    arr = np.clip(base + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img.convert("L") if gray else img


def make_cremad(root: Path, actors=("1001", "1002", "1003", "1004", "1005"), frames: int = 2,
                clips_per_class: int = 1, size=(40, 48)) -> Path:
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    for a in actors:
        for k, emo in enumerate(CREMAD_CLASSES):
            for c in range(clips_per_class):
                clip = f"{a}_S{c:02d}_{emo}_XX"
                seed = int(a) * 100 + k * 10 + c
                write_wav(root / "AudioWAV" / f"{clip}.wav", tone(k, seed=seed), 16000)
                fdir = root / "Image-01-FPS" / clip
                fdir.mkdir(parents=True, exist_ok=True)
                for f in range(frames):
                    picture(k, size=size, seed=seed + f).save(fdir / f"{f:05d}.jpg")
    return root


def write_cremad_splits(root: Path, train_actors, test_actors) -> None:
    def lines(actors):
        return "".join(
            f"{p.stem},{p.stem.split('_')[2]}\n"
            for p in sorted((root / "AudioWAV").glob("*.wav")) if p.stem.split("_")[0] in actors
        )

    (root / "train.csv").write_text(lines(train_actors))
    (root / "test.csv").write_text(lines(test_actors))


def make_kinetics_sounds(root: Path, classes=("playing drums", "laughing", "singing"),
                         clips=4) -> Path:
    for split in ("train", "test"):
        n = clips if split == "train" else 2
        for k, cls in enumerate(classes):
            adir = root / "audio" / split / cls
            vdir = root / "visual" / f"{split}_img" / "Image-01-FPS" / cls
            adir.mkdir(parents=True, exist_ok=True)
            for c in range(n):
                clip = f"clip{c:03d}"
                if not (split == "train" and c == 0 and k == 0):  # one clip without audio
                    write_wav(adir / f"{clip}.wav", tone(k, seconds=1.0, seed=c), 16000)
                if not (split == "train" and c == 1 and k == 1):  # one clip without frames
                    (vdir / clip).mkdir(parents=True, exist_ok=True)
                    picture(k, seed=c).save(vdir / clip / "00000.jpg")
    return root


def make_casia(root: Path, per_split=(12, 6, 6)) -> Path:
    for split, n in zip(("train", "val", "test"), per_split, strict=True):
        lines = []
        for i in range(n):
            label = i % 2
            d = root / split / f"s{i:03d}"
            d.mkdir(parents=True, exist_ok=True)
            picture(3 * label, (60, 50), seed=i).save(d / "color.jpg")
            picture(3 * label + 1, (60, 50), seed=i, gray=True).save(d / "depth.jpg")
            picture(3 * label + 2, (60, 50), seed=i, gray=True).save(d / "ir.jpg")
            lines.append(f"{split}/s{i:03d}/color.jpg {split}/s{i:03d}/depth.jpg "
                         f"{split}/s{i:03d}/ir.jpg {label}")
        (root / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    return root


def make_manifest(root: Path, n: int = 36) -> Path:
    """Three modalities of three kinds (npy, png, wav); some entries empty (missing)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["vec,img,snd,label,split"]
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ["cat", "dog", "eel"][i % 3]
        k = i % 3
        np.save(root / f"v{i}.npy", (rng.normal(k, 0.3, 8)).astype(np.float32))
        picture(k, (16, 16), seed=i).save(root / f"i{i}.png")
        write_wav(root / f"s{i}.wav", tone(k, seconds=0.3, seed=i), 16000)
        vec = f"v{i}.npy" if i % 5 != 1 else ""
        img = f"i{i}.png" if i % 5 != 2 else ""
        snd = f"s{i}.wav" if i % 7 != 3 else ""
        # every class in every split (i % 6 would put only "cat" in val and test)
        split = "test" if (i // 3) % 6 == 0 else ("val" if (i // 3) % 6 == 3 else "train")
        rows.append(f"{vec},{img},{snd},{label},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _scene_arrays(i: int, size: int | tuple[int, int]):
    """A scene of ``size`` (S, or (H, W): the top-left crop of a max(H, W) square scene)."""
    from dmrnet.data.rgbd import render_scene

    h, w = (size, size) if isinstance(size, int) else size
    rgb, depth, label = render_scene(1000 + i, max(h, w))
    lab = label.numpy().astype(np.uint8)[:h, :w] + 1  # files: 0 = void, 1..K
    lab[:2] = 0  # a void band, as in NYUv2's unlabelled pixels
    return (rgb.permute(1, 2, 0).numpy()[:h, :w], depth[0].numpy().astype(np.uint16)[:h, :w],
            lab)


def make_nyuv2_prepared(root: Path, n_train: int = 8, n_test: int = 3,
                        size: int | tuple[int, int] = 64,
                        k: int = 40, name: str = "{split}{i:04d}") -> Path:
    """The prepared layout; ``name``: a file-name pattern of ``split``, ``i`` (from 0) and
    ``n`` (from 1)."""
    pattern = name
    for split, n in (("train", n_train), ("test", n_test)):
        names = []
        for i in range(n):
            name = pattern.format(split=split, i=i, n=i + 1)
            rgb, depth, lab = _scene_arrays(i + (0 if split == "train" else 500), size)
            for sub in ("rgb", "depth", f"labels_{k}"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / split / "rgb" / f"{name}.png")
            Image.fromarray(depth).save(root / split / "depth" / f"{name}.png")
            Image.fromarray(lab).save(root / split / f"labels_{k}" / f"{name}.png")
            names.append(name)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def make_nyuv2_mat(root: Path, n: int = 10, size: int = 64) -> Path:
    """The official file's structure: MATLAB-ordered HDF5 datasets, raw labels mapped by a
    text file (here raw label r -> class r, 0 = void), 1-based split JSON."""
    import json

    import h5py

    root.mkdir(parents=True, exist_ok=True)
    imgs = np.zeros((n, 3, size, size), np.uint8)
    depths = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint16)
    for i in range(n):
        rgb, depth, lab = _scene_arrays(i, size)
        imgs[i] = rgb.transpose(2, 1, 0)
        depths[i] = depth.T / 1000.0
        labels[i] = lab.T
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"], f["depths"], f["labels"] = imgs, depths, labels
    (root / "mapping.txt").write_text("\n".join(str(min(r, 40)) for r in range(895)) + "\n")
    (root / "splits.json").write_text(json.dumps({"train": list(range(1, n - 2)),
                                                  "test": list(range(n - 2, n + 1))}))
    return root


def write_video(path: Path, frames: int = 25, fps: int = 10, size=(24, 32),
                audio: np.ndarray | None = None, rate: int = 44100) -> Path:
    """A tiny MPEG-4 video (PyAV; the ``av`` extra): ``frames`` grey levels at ``fps``, and
    ``audio`` (mono float samples at ``rate``) as an AAC track when given."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        sound = None if audio is None else container.add_stream("aac", rate=rate)
        if sound is not None:
            sound.layout = "mono"
        for i in range(frames):
            img = np.full((*size, 3), i * 10 % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            step = sound.codec_context.frame_size or 1024
            for start in range(0, len(audio), step):
                chunk = np.zeros((1, step), np.float32)
                part = audio[start:start + step].astype(np.float32)
                chunk[0, :len(part)] = part
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def make_rgb_depth_manifest(root: Path, n: int = 36) -> Path:
    """``root/my.csv``: rgb (PNG) and depth (.npy vectors) columns with a split column, some
    entries empty (missing), three classes in every split."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["rgb,depth,label,split"]
    rng = np.random.default_rng(1)
    for i in range(n):
        k = i % 3
        picture(k, (16, 16), seed=i).save(root / f"rgb{i}.png")
        np.save(root / f"depth{i}.npy", rng.normal(k, 0.3, 8).astype(np.float32))
        rgb = f"rgb{i}.png" if i % 5 != 1 else ""
        depth = f"depth{i}.npy" if i % 5 != 2 else ""
        split = "test" if (i // 3) % 6 == 0 else ("val" if (i // 3) % 6 == 3 else "train")
        rows.append(f"{rgb},{depth},{['cat', 'dog', 'eel'][k]},{split}")
    (root / "my.csv").write_text("\n".join(rows) + "\n")
    return root / "my.csv"
