"""Pretrained encoders from a local Hugging Face folder (``encoder: hf``): tiny models made with
``from_config`` + ``save_pretrained`` here, never downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.training import MultimodalModule

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "calm", "quiet", "gentle", "soft", "loud",
         "angry", "harsh", "sharp", "the", "a", "and", "."]


def tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT of width 16 with its WordPiece tokenizer, as save_pretrained writes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def tiny_vit(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32)
    transformers.ViTModel(config).save_pretrained(folder)
    return folder


def test_a_frozen_text_encoder_and_a_partly_trained_image_encoder(tmp_path):
    bert, vit = tiny_bert(tmp_path / "bert"), tiny_vit(tmp_path / "vit")
    shapes = {"text": [12], "img": [3, 16, 16]}
    module = MultimodalModule(
        list(shapes), shapes, 2, sequences=["text"], optim={"lr": 0.01},
        network={"embed_dim": 8, "encoders": {
            "text": {"name": "hf", "path": str(bert), "freeze": True, "pooling": "mean"},
            "img": {"name": "hf", "path": str(vit), "freeze": 1, "lr_multiplier": 0.1}}})
    text, img = module.model.encoders["text"], module.model.encoders["img"]
    assert text.out_features == img.out_features == 16
    assert not any(p.requires_grad for p in text.parameters())
    trained = {n for n, p in img.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("backbone.encoder.layer.1.") for n in trained)
    module.train()
    assert not text.backbone.training and img.backbone.training  # frozen: eval (no dropout)
    # the pretrained weights read are the folder's
    saved = transformers.BertModel.from_pretrained(bert).embeddings.word_embeddings.weight
    assert torch.equal(text.backbone.embeddings.word_embeddings.weight, saved)
    # the optimiser: the image encoder's trainable layer at 0.1 x the learning rate
    from dmrnet.optim import OptimConfig, configure, parameter_groups

    opt = configure(OptimConfig(lr=0.01), parameter_groups(module, 0.01), 1, lambda: 1)
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    lrs = {round(g["lr"], 6): sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    layer = sum(p.numel() for p in img.backbone.encoder.layer[1].parameters())
    assert lrs[0.001] == layer and 0.01 in lrs
    ids = torch.tensor([[2.0, 5, 6, 3] + [0] * 8, [2, 9, 3] + [0] * 9])
    lengths = torch.tensor([4, 3])
    module.eval()
    with torch.no_grad():
        a = text(ids, lengths)
        ids[0, 4:] = 7  # other padding: the attention mask leaves it out
        assert torch.equal(a, text(ids, lengths))


def write_manifest(folder: Path, n: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = {0: ["calm", "quiet", "gentle", "soft"], 1: ["loud", "angry", "harsh", "sharp"]}
    rows = ["text,img,label"]
    for i in range(n):
        y = i % 2
        (folder / f"t{i}.txt").write_text(" ".join(rng.choice(words[y] + ["the", "a"], 4)))
        np.save(folder / f"x{i}.npy", rng.normal(0.3 * y, 1.0, 6).astype(np.float32))
        rows.append(f"{'' if i % 6 == 5 else f't{i}.txt'},x{i}.npy,{['calm', 'angry'][y]}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def test_a_manifest_trains_with_a_local_bert_and_its_folder_predicts_from_text(tmp_path,
                                                                              capsys):
    """Done-when of issue 25 (pretrained part): .txt + .npy manifest, the text read by the
    folder's tokenizer and encoded by its frozen BERT; the exported model folder carries the
    configuration and tokenizer (no pickle, weights in its safetensors only) and predicts from
    a .txt file after the original folder is gone."""
    bert = tiny_bert(tmp_path / "bert")
    manifest = write_manifest(tmp_path / "m")
    out = tmp_path / "b"
    # the command as written: the text is read with the encoder folder's tokenizer
    assert main(["benchmark", "--dataset", "manifest", "--manifest", str(manifest), "--set",
                 f"encoders={{text: {{name: hf, path: {bert}, freeze: true}}}}",
                 "--methods", "baseline,dmrnet", "--epochs", "1", "--seeds", "0", "--jobs", "1",
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    ckpt = next(out.rglob("dmrnet-seed0/best.ckpt"))
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["preprocessing"]["text"]["tokenizer"] == "tokenizers/text"
    kept = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    assert "pretrained/text/config.json" in kept and "tokenizers/text/vocab.txt" in kept
    assert not [k for k in kept if k.endswith((".bin", ".pt")) or
                (k.endswith(".safetensors") and k != "model.safetensors")]
    import dmrnet

    text = "quiet gentle calm"
    before = dmrnet.load_model(model).predict({"text": text}).probs
    shutil.rmtree(bert)  # the folder serves on its own
    served = dmrnet.load_model(model)
    assert torch.allclose(served.predict({"text": text}).probs, before, atol=1e-6)
    (tmp_path / "q.txt").write_text(text)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(model), "--input",
                 f"text={tmp_path / 'q.txt'}"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1].startswith("text ")


def test_text_read_with_another_vocabulary_than_the_encoders_is_refused(tmp_path, capsys):
    """dmrnet fit has no encoder settings when it reads the data: a BERT given text of the
    built-in vocabulary (whose ids mean other words) is one line before training."""
    bert = tiny_bert(tmp_path / "bert")
    manifest = write_manifest(tmp_path / "m")
    encoders = f"{{text: {{name: hf, path: {bert}}}}}"
    argv = ["fit", "--data.dataset", "manifest", "--data.dataset_kwargs.manifest",
            str(manifest), "--model.network.encoders", encoders, "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "fit")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "modality 'text' was read with the built-in vocabulary, but its encoder takes the " \
           "token ids of its own folder's tokenizer" in err
    assert main([*argv, "--data.dataset_kwargs.text", f"{{tokenizer: {bert}}}"]) == 0, \
        capsys.readouterr().err


def test_a_path_that_is_not_a_local_model_is_one_line(tmp_path, monkeypatch):
    shapes = {"text": [8]}

    def build(**encoder):
        return MultimodalModule(["text"], shapes, 2, sequences=["text"],
                                network={"encoders": {"text": {"name": "hf", **encoder}}})

    with pytest.raises(ConfigError, match="'bert-base-uncased' is not a local model folder .*"
                       "nothing is downloaded"):
        build(path="bert-base-uncased")
    bert = tiny_bert(tmp_path / "bert")
    state = transformers.BertModel.from_pretrained(bert).state_dict()
    (bert / "model.safetensors").unlink()
    torch.save(state, bert / "pytorch_model.bin")  # a pickle: never read
    with pytest.raises(ConfigError, match="pickle-based format only; dmrnet reads safetensors"):
        build(path=str(bert))
    with pytest.raises(ConfigError, match="freeze must be true, false or a number of last "
                       r"layers to train, 0..2; got 5"):
        build(path=str(tiny_bert(tmp_path / "b2")), freeze=5)
    shapes["text"] = [200]  # longer than the model's 128 positions
    with pytest.raises(ConfigError, match="holds up to 200 tokens but the model .* takes at "
                       "most 128; read fewer: dataset_kwargs: {text: {max_tokens: 128}}"):
        build(path=str(tmp_path / "b2"))
    shapes["text"] = [8]
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"needs transformers: pip install 'dmrnet\[hf\]'"):
        build(path=str(tmp_path / "b2"))


def test_a_frozen_encoder_computes_each_samples_features_once(tmp_path):
    """Every epoch after the first reads the store: no backbone call for a sample seen
    before, the same features as computing them, shared by another model of the same
    weights; new weights or a changed sample are computed afresh."""
    from dmrnet.nn.pretrained import FEATURES

    FEATURES.clear()
    bert = tiny_bert(tmp_path / "bert")
    shapes = {"text": [12], "face": [4]}

    def module(**options):
        torch.manual_seed(0)
        return MultimodalModule(list(shapes), shapes, 2, sequences=["text"], network={
            "embed_dim": 8, "encoders": {"text": {"name": "hf", "path": str(bert), **options}}})

    cached, plain = module(), module(cache=False)
    calls = []
    cached.model.encoders["text"].backbone.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(len(kwargs["input_ids"])), with_kwargs=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(WORDS), (16, 12), generator=g).float()
    lengths = torch.randint(2, 13, (16,), generator=g)
    ids[torch.arange(12)[None, :] >= lengths[:, None]] = 0
    x = {"text": ids, "face": torch.randn(16, 4, generator=g)}
    avail = torch.ones(16, 2, dtype=torch.bool)
    cached.train()
    first = cached(x, avail, {"text": lengths}).logits
    assert calls == [16] and FEATURES.misses == 16
    second = cached(x, avail, {"text": lengths}).logits  # the next epoch: nothing computed
    assert calls == [16] and FEATURES.hits == 16
    plain.train()
    reference = plain.model.encoders["text"](ids, lengths)
    stored = cached.model.encoders["text"](ids, lengths)
    torch.testing.assert_close(stored, reference, rtol=0, atol=1e-6)
    assert first.shape == second.shape == (16, 2)
    # a second model of the same weights (another method of a benchmark) reads the store
    module()(x, avail, {"text": lengths})
    assert FEATURES.hits == 48 and calls == [16]
    # one sample changed (an augmentation): that one alone is computed
    changed = ids.clone()
    changed[3, 0] = 5 if changed[3, 0] != 5 else 6
    cached({"text": changed, "face": x["face"]}, avail, {"text": lengths})
    assert calls == [16, 1]
    # other weights are another encoder: computed afresh
    other = module()
    with torch.no_grad():
        other.model.encoders["text"].backbone.embeddings.word_embeddings.weight.add_(1.0)
    other.model.encoders["text"]._identity = None
    misses = FEATURES.misses
    other(x, avail, {"text": lengths})
    assert FEATURES.misses == misses + 16
    FEATURES.clear()


def test_the_feature_store_forgets_the_least_recently_used_past_its_size():
    from dmrnet.nn.pretrained import FEATURES, FeatureStore

    assert FEATURES.max_bytes == 2 << 30  # the README's 2 GiB
    store = FeatureStore(max_bytes=3 * 16 * 4)  # three (16,) float32 features
    for k in range(3):
        store.put(("w", bytes([k])), torch.full((16,), float(k)))
    assert store.get(("w", bytes([0]))) is not None  # 0 is now the most recent
    store.put(("w", bytes([3])), torch.zeros(16))
    assert store.get(("w", bytes([1]))) is None and store.get(("w", bytes([0]))) is not None
    assert len(store.entries) == 3 and store.size == 3 * 16 * 4


def test_pretrained_encoders_have_only_deterministic_cuda_ops_and_onnx_takes_images(tmp_path):
    """The op guard covers a trained BERT; a model of a pretrained image encoder (no
    sequence) exports to ONNX and the graph gives the model's probabilities."""
    from dmrnet.determinism import cuda_nondeterministic
    from tests.test_determinism import run_step

    bert = tiny_bert(tmp_path / "bert")
    shapes = {"text": [12], "face": [4]}
    module = MultimodalModule(list(shapes), shapes, 2, sequences=["text"], network={
        "embed_dim": 8, "encoders": {"text": {"name": "hf", "path": str(bert), "freeze": False}}})
    from dmrnet.batch import MultimodalCollate

    g = torch.Generator().manual_seed(0)
    items = [{"inputs": {"text": torch.randint(5, len(WORDS), (2 + i % 10,), generator=g).float(),
                         "face": torch.randn(4, generator=g)}, "target": i % 2} for i in range(8)]
    batch = MultimodalCollate(list(shapes), shapes, sequences=["text"])(items)
    flagged = cuda_nondeterministic(lambda: run_step(module, batch))
    assert flagged == {}, f"ops that break deterministic CUDA training: {flagged}"

    pytest.importorskip("onnxruntime")
    import onnxruntime

    import dmrnet
    from dmrnet.serving import export_onnx, save_model

    vit = tiny_vit(tmp_path / "vit")
    images = {"img": [3, 16, 16], "face": [4]}
    module = MultimodalModule(list(images), images, 2, network={
        "embed_dim": 8, "encoders": {"img": {"name": "hf", "path": str(vit)}}})
    served = dmrnet.load_model(save_model(module.eval(), tmp_path / "model"))
    export_onnx(served, tmp_path / "m.onnx")
    x = {"img": np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32),
         "face": np.zeros((2, 4), np.float32)}
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    probs = session.run(["probs"], {**x, "availability": np.array([[1, 0], [1, 0]],
                                                                   np.float32)})[0]
    expected = served.predict([{"img": x["img"][0]}, {"img": x["img"][1]}]).probs
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)


def test_only_folders_are_copied_into_a_model_folder(tmp_path):
    """An encoder setting named path that is a file or a name (a plugin's own meaning) is
    kept as it is; a folder is copied without its weights and named relative to the model."""
    from dmrnet.serving import _bundle_folders, _localise_folders

    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text("{}")
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "w.bin").write_bytes(b"w")
    config = {"model": {"network": {"encoders": {
        "a": {"name": "hf", "path": str(tmp_path / "enc")},
        "b": {"name": "mine", "path": str(tmp_path / "w.bin")},
        "c": {"name": "mine", "path": "some-name"}}}}, "preprocessing": None}
    model = tmp_path / "model"
    model.mkdir()
    _bundle_folders(config, model)
    specs = config["model"]["network"]["encoders"]
    assert specs["a"]["path"] == "pretrained/a" and specs["b"]["path"] == str(tmp_path / "w.bin")
    assert specs["c"]["path"] == "some-name"
    assert sorted(p.name for p in (model / "pretrained" / "a").iterdir()) == ["config.json"]
    _localise_folders(config, model)
    assert specs["a"]["path"] == str(model / "pretrained" / "a")
    assert specs["c"]["path"] == "some-name"


def tiny_wav2vec2(folder: Path, rate: int = 16000) -> Path:
    """A 1-layer wav2vec2 of width 16 and its feature extractor, as save_pretrained writes."""
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=False)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=rate, do_normalize=True
                                          ).save_pretrained(folder)
    return folder


def test_a_waveform_model_reads_wav_files_as_its_feature_extractor_would(tmp_path, capsys):
    """``audio: {waveform: true, sample_rate: 16000}`` reads a WAV as the window itself, and
    an hf encoder of a wav2vec2 folder standardises it as the model's feature extractor does:
    features equal the model's own on the extractor's input. A spectrogram, or another rate,
    is one line naming the fix. The trained model predicts from a raw WAV."""
    from dmrnet.data.files import AudioReader
    from dmrnet.data.io import read_wav
    from dmrnet.data.transforms import AudioSpec

    from .fixtures import make_manifest

    folder = tiny_wav2vec2(tmp_path / "w2v")
    csv = make_manifest(tmp_path / "data", n=24)
    wav = tmp_path / "data" / "s0.wav"
    spec = AudioSpec.of({"waveform": True, "sample_rate": 16000, "seconds": 0.3})
    x = AudioReader(spec).read_one(wav)
    assert x.shape == spec.shape == (4800,)
    samples, rate = read_wav(wav)
    assert rate == 16000 and torch.allclose(x[: len(samples)], samples.clamp(-1, 1))

    encoder = MultimodalModule(["snd"], {"snd": [4800]}, 3, network={"encoders": {
        "snd": {"name": "hf", "path": str(folder), "pooling": "mean"}}}).model.encoders["snd"]
    assert encoder.waveform_rate == 16000 and encoder.normalize
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    values = extractor(x.numpy(), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        expected = transformers.Wav2Vec2Model.from_pretrained(folder)(values).last_hidden_state
        assert torch.allclose(encoder.features(x[None]), expected.mean(1), atol=1e-5)

    with pytest.raises(ConfigError, match=r"reads waveforms \(N,\).*waveform: true, "
                                          "sample_rate: 16000"):
        MultimodalModule(["snd"], {"snd": [1, 257, 14]}, 3, network={"encoders": {
            "snd": {"name": "hf", "path": str(folder)}}})
    common = ["benchmark", "--dataset", "manifest", "--manifest", str(csv), "--modalities",
              "snd,vec", "--methods", "dmrnet", "--seeds", "0", "--epochs", "1",
              "--no-progress", "--set", f"encoders={{snd: {{name: hf, path: {folder}, "
              "pooling: mean}}"]
    config = tmp_path / "audio.yaml"
    config.write_text("dataset_kwargs: {audio: {waveform: true, sample_rate: 22050, "
                      "seconds: 0.3}}\n")
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "r1")]) == 2
    assert "read at 22050 Hz, but its encoder's model takes waveforms at 16000 Hz" in \
        capsys.readouterr().err
    config.write_text("dataset_kwargs: {audio: {waveform: true, sample_rate: 16000, "
                      "seconds: 0.3}}\n")
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoints" / "dmrnet-seed0" / "best.ckpt"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", f"snd={wav}"]) == 0
    assert capsys.readouterr().out.split()[0] == "snd"


def test_an_image_model_gets_pixels_in_its_own_units(tmp_path):
    """A ViT whose image processor standardises with mean 0.5 and std 0.5 takes a manifest's
    [0, 1] pixels, CREMA-D's ImageNet-normalised frames and CASIA-SURF's (x - 127.5) / 128
    faces mapped to its own units: its features equal the model's on its processor's output.
    Weights saved before the map existed load as no map."""
    from PIL import Image

    from dmrnet.data.files import FramesReader, ImageReader

    folder = tiny_vit(tmp_path / "vit")
    transformers.ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                   size={"height": 16, "width": 16}).save_pretrained(folder)
    processor = transformers.ViTImageProcessor.from_pretrained(folder)
    vit = transformers.ViTModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    picture = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(picture)
    with Image.open(picture) as img:
        pixels = processor(img.convert("RGB"), return_tensors="pt").pixel_values
        expected = vit(pixels).last_hidden_state[:, 0]
    (tmp_path / "frames").mkdir()
    Image.open(picture).save(tmp_path / "frames" / "00000.png")
    readers = {"plain": ImageReader(size=(16, 16)), "casia": ImageReader(recipe="casia",
                                                                        size=(16, 16)),
               "frames": FramesReader(size=16)}
    for name, reader in readers.items():
        module = MultimodalModule(["img"], {"img": [3, 16, 16]}, 2, preprocessing={
            "readers": {"img": reader.to_dict()}}, network={"encoders": {
                "img": {"name": "hf", "path": str(folder)}}})
        encoder = module.model.encoders["img"]
        x = reader.read_one(tmp_path / ("frames" if name == "frames" else "p.png"))
        with torch.no_grad():
            got = encoder.features(x[None])
        # frames and faces are resized/cropped by their recipes: compare on what they read
        if name == "plain":
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        units = reader.pixel_units()
        p = x * torch.as_tensor(units[1]).reshape(-1, 1, 1) + torch.as_tensor(
            units[0]).reshape(-1, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(got, vit((p[None] - 0.5) / 0.5).last_hidden_state[:, 0],
                                       rtol=1e-4, atol=1e-4)
    state = {k: v for k, v in module.model.state_dict().items() if "in_s" not in k}
    fresh = MultimodalModule(["img"], {"img": [3, 16, 16]}, 2, network={"encoders": {
        "img": {"name": "hf", "path": str(folder)}}})
    fresh.model.encoders["img"].in_scale.fill_(7.0)
    fresh.model.load_state_dict(state)  # dmrnet 0.4's weights: no map
    assert torch.equal(fresh.model.encoders["img"].in_scale, torch.ones(3, 1, 1))


def test_an_image_model_takes_images_of_another_size(tmp_path):
    """A ViT made for 16 x 16 takes 32 x 32 images (its position embeddings interpolated, as
    Hugging Face does on request) instead of failing at the first batch; at its own size
    nothing changes."""
    folder = tiny_vit(tmp_path / "vit")
    vit = transformers.ViTModel.from_pretrained(folder).eval()
    for size in (16, 32):
        encoder = MultimodalModule(["img"], {"img": [3, size, size]}, 2, network={"encoders": {
            "img": {"name": "hf", "path": str(folder)}}}).model.encoders["img"]
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            got = encoder.features(x)
            expected = vit(x, interpolate_pos_encoding=size != 16).last_hidden_state[:, 0]
        assert torch.equal(got, expected)
