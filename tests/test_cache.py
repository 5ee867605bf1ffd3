"""Decoded samples read once (issue 21): the cache changes no value, later epochs read no file,
the budget holds, and in-memory arrays are fetched a batch at a time."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from dmrnet.batch import MultimodalCollate
from dmrnet.benchmark import BenchmarkConfig, apply_dataset_defaults
from dmrnet.benchmark.runs import _data_module
from dmrnet.cli import main
from dmrnet.data.base import ArrayDataset
from dmrnet.data.cache import SampleCache, nbytes
from dmrnet.errors import ConfigError
from dmrnet.training import MultimodalDataModule

from .fixtures import make_cremad, make_manifest, write_cremad_splits

_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # every open() by Python code: np.load, PIL, wave, read_bytes


def opened_under(folder: Path, fn) -> list[str]:
    """The files under ``folder`` that ``fn()`` opens."""
    _OPENED[:] = ["<recording>"]
    try:
        fn()
        return [p for p in _OPENED[1:] if p.startswith(str(folder))]
    finally:
        _OPENED.clear()


def epoch_batches(data: MultimodalDataModule, epoch: int, split: str = "train") -> list:
    """One epoch of batches, finished as on the device, from a fixed random state."""
    torch.manual_seed(1234 + epoch)
    loader = getattr(data, f"{split}_dataloader")()
    if split == "train":
        loader.sampler.set_epoch(epoch)
    return [data.on_after_batch_transfer(b) for b in loader]


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.availability, y.availability)
        assert torch.equal(x.target, y.target)
        for m in x.inputs:
            assert x.inputs[m].dtype == y.inputs[m].dtype
            assert torch.equal(x.inputs[m], y.inputs[m]), m


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    return make_manifest(tmp_path / "m")


@pytest.fixture()
def cremad(tmp_path: Path) -> Path:
    root = make_cremad(tmp_path / "c", actors=("1001", "1002", "1003"), frames=3)
    write_cremad_splits(root, ["1001", "1002"], ["1003"])
    return root


def _module(dataset: str, cache: str, **kw) -> MultimodalDataModule:
    return MultimodalDataModule(dataset, batch_size=5, eval_batch_size=7, cache=cache, **kw)


@pytest.mark.parametrize("source", ["manifest", "cremad", "rgbd-shapes"])
def test_batches_with_and_without_the_cache_are_equal_bit_for_bit(source, manifest, cremad):
    # npy + png + wav (random audio crop); frame folders (random crop and flip while
    # decoding); rendered scenes (random scale, crop, jitter, flip): two training epochs and
    # the validation split, the second epoch served from the cache
    kw = {"manifest": {"dataset_kwargs": {"manifest": str(manifest)}},
          "cremad": {"root": str(cremad), "dataset_kwargs": {"image_size": 32}},
          "rgbd-shapes": {"dataset_kwargs": {"train": 6, "val": 3, "test": 3, "size": 32}},
          }[source]
    plain, cached = _module(source, "none", **kw), _module(source, "memory", **kw)
    assert plain.cache is None and cached.cache is not None
    for epoch in (0, 1):
        assert_same(epoch_batches(plain, epoch), epoch_batches(cached, epoch))
    assert_same(epoch_batches(plain, 0, "val"), epoch_batches(cached, 0, "val"))
    assert cached.cache.hits > 0 and len(cached.cache) > 0


def test_a_second_epoch_reads_no_file(manifest):
    folder = manifest.parent
    cached = _module("manifest", "auto", dataset_kwargs={"manifest": str(manifest)})
    _ = cached.data  # the files are listed and checked before training
    first = opened_under(folder, lambda: epoch_batches(cached, 0))
    second = opened_under(folder, lambda: epoch_batches(cached, 1))
    assert len(first) >= 20  # every training file, once
    assert second == []
    # without the cache every epoch reads the files again: the count above can fail
    plain = _module("manifest", "none", dataset_kwargs={"manifest": str(manifest)})
    _ = plain.data
    opened_under(folder, lambda: epoch_batches(plain, 0))
    assert len(opened_under(folder, lambda: epoch_batches(plain, 1))) == len(first)


def test_frame_folders_are_read_once(cremad):
    data = _module("cremad", "memory", root=str(cremad), dataset_kwargs={"image_size": 32})
    _ = data.data
    assert opened_under(cremad, lambda: epoch_batches(data, 0))
    assert opened_under(cremad, lambda: epoch_batches(data, 1)) == []


def test_one_cache_serves_every_seed_of_a_benchmark(manifest):
    # the seeds' splits differ (no split column), but the files are the same ones
    path = manifest.parent / "nosplit.csv"
    lines = manifest.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:4]) for line in lines) + "\n")
    cfg = apply_dataset_defaults(BenchmarkConfig(
        out="unused", dataset="manifest", dataset_kwargs={"manifest": str(path)}))
    first = _data_module(cfg, 0)
    for epoch in (0, 1):
        epoch_batches(first, epoch)
        epoch_batches(first, epoch, "val")
        epoch_batches(first, epoch, "test")
    second = _data_module(cfg, 1, cache=first.cache)
    assert second.cache is first.cache
    assert ({r.where for r in second.data.train.records}
            != {r.where for r in first.data.train.records})
    assert opened_under(manifest.parent, lambda: epoch_batches(second, 0)) == []


def test_the_budget_bounds_what_is_kept():
    cache = SampleCache(budget=100)
    small, big = torch.zeros(10), torch.zeros(1000)  # 40 and 4000 bytes
    assert cache.get("a", lambda: small) is small
    assert cache.get("b", lambda: big) is big  # handed out, not kept
    assert len(cache) == 1 and cache.bytes == 40 and cache.skipped == 1
    calls = []
    cache.get("b", lambda: calls.append(1) or big)
    assert calls == [1]  # decoded again: it was not kept
    assert cache.get("a", lambda: pytest.fail("kept samples are not decoded again")) is small
    assert nbytes((torch.zeros(3, dtype=torch.uint8), 16000)) == 64 + 3 + 64
    auto = SampleCache.for_mode("auto")
    assert auto is not None and auto.budget > 0
    assert SampleCache.for_mode("auto", workers=4).budget == pytest.approx(auto.budget / 4,
                                                                            rel=0.2)
    assert SampleCache.for_mode("memory").budget is None
    assert SampleCache.for_mode("none") is None


def test_a_worker_process_starts_with_an_empty_copy():
    import pickle

    cache = SampleCache(budget=10_000)
    cache.get("a", lambda: torch.zeros(10))
    copy = pickle.loads(pickle.dumps(cache))
    assert len(copy) == 0 and copy.budget == 10_000


def test_a_bad_cache_mode_is_one_line(capsys):
    with pytest.raises(ConfigError, match="cache 'ram' is not one of"):
        MultimodalDataModule("mfeat", cache="ram")
    assert main(["benchmark", "--cache", "ram", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--cache" in err and "'ram'" in err


def test_array_batches_are_what_the_collate_makes_of_single_items():
    # fetched a batch at a time, with absent modalities zero-filled like the collate does
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(9, 4, generator=g), "b": torch.randn(9, 2, 3, generator=g)}
    feats["b"][3] = float("nan")  # absent there: never seen
    avail = torch.ones(9, 2, dtype=torch.bool)
    avail[3, 1] = avail[5, 0] = False
    ds = ArrayDataset(feats, torch.arange(9) % 3, avail)
    collate = MultimodalCollate(["a", "b"], {"a": (4,), "b": (2, 3)})
    idx = [5, 3, 0, 8]
    fast = collate(ds.__getitems__(idx))
    slow = collate([ds[i] for i in idx])
    assert torch.equal(fast.availability, slow.availability)
    assert torch.equal(fast.target, slow.target)
    for m in ("a", "b"):
        assert torch.equal(fast.inputs[m], slow.inputs[m])
    assert not torch.isnan(fast.inputs["b"]).any()
    wrong = MultimodalCollate(["a", "b"], {"a": (5,), "b": (2, 3)})
    with pytest.raises(Exception, match="modality 'a' of the dataset's batch"):
        wrong(ds.__getitems__(idx))


def test_fit_takes_the_cache_and_says_its_threads(tmp_path, capsys, monkeypatch):
    from .test_tasks_cli import fit_and_test

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # dmrnet's own choice

    manifest = make_manifest(tmp_path / "m")
    m = fit_and_test("manifest.yaml", tmp_path / "run", [
        "--data.dataset_kwargs.manifest", str(manifest), "--data.cache", "none"])
    assert 0.0 <= m["test/vec+img+snd/accuracy"] <= 1.0
    # the choice and why, in fit's output (how many depends on how busy the machine is)
    assert re.search(r"^\d+ CPU threads? \(a [\d.]+-GFLOP step", capsys.readouterr().out, re.M)
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke" / "manifest.yaml"
    code = main(["fit", "--config", str(config), "--data.cache", "ram",
                 "--data.dataset_kwargs.manifest", str(manifest),
                 "--trainer.default_root_dir", str(tmp_path / "never")])
    assert code == 2 and "cache 'ram' is not one of" in capsys.readouterr().err
