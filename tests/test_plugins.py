"""Plugins: a user's file registers an encoder and a dataset; every command takes --plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dmrnet import plugins
from dmrnet.cli import main
from dmrnet.data import DATASETS
from dmrnet.registry import ENCODERS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
"""A user's plugin: a dataset of two noisy views and a tiny encoder."""
import numpy as np
import torch
from torch import nn

import dmrnet
from dmrnet.data import ArrayDataset


@dmrnet.ENCODERS.register("tiny")
def tiny(input_shape, width=8):
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.ReLU())
    net.out_features = width
    return net


@dmrnet.DATASETS.register("two_views", dmrnet.DatasetDefaults(
    epochs=1, model={"embed_dim": 16, "encoder_kwargs": {"width": 6}},
    options={"hcr_warmup_epochs": 1}))
def two_views(root=None, modalities=None, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 240)
    views = {"a": rng.normal(y[:, None], 1.0, (240, 5)),
             "b": rng.normal(y[:, None], 2.0, (240, 3))}
    names = list(modalities or views)
    parts = [slice(0, 160), slice(160, 200), slice(200, 240)]
    sets = [ArrayDataset({m: torch.tensor(views[m][p], dtype=torch.float32) for m in names},
                         torch.tensor(y[p])) for p in parts]
    return dmrnet.SplitData(train=sets[0], val=sets[1], test=sets[2], modalities=names,
                            input_shapes=sets[0].input_shapes, class_names=["x", "y", "z"])
'''


@pytest.fixture
def plugin_file(tmp_path):
    """The plugin in a folder outside the package; what it registers is removed afterwards."""
    path = tmp_path / "elsewhere" / "my_plugin.py"
    path.parent.mkdir()
    path.write_text(PLUGIN)
    yield path
    DATASETS.unregister("two_views")
    ENCODERS.unregister("tiny")
    for key, module in list(plugins._LOADED.items()):
        if key == str(path.resolve()):
            del plugins._LOADED[key]
            sys.modules.pop(module.__name__, None)


def test_a_plugin_file_adds_a_dataset_and_an_encoder_to_benchmark_and_fit(plugin_file,
                                                                        tmp_path, capsys):
    out = tmp_path / "run"
    args = ["benchmark", "--dataset", "two_views", "--encoder", "tiny", "--methods",
            "baseline,dmrnet", "--epochs", "1", "--seeds", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "without")]) == 2  # not registered yet
    err = capsys.readouterr().err
    assert err.startswith("dmrnet: error: unknown dataset 'two_views'; available: [")
    assert "'synthetic'" in err and "--plugin FILE.py" in err and len(err.splitlines()) == 1
    config = plugin_file.parent / "bench.yaml"  # plugins: in a benchmark config, by its folder
    config.write_text("plugins: [my_plugin.py]\ndataset: two_views\nmethods: [baseline]\n"
                      "model: {encoder: tiny}\n")
    assert main(["benchmark", "--config", str(config), "--seeds", "0",
                 "--no-progress", "--out", str(tmp_path / "from_config")]) == 0
    # the dataset's own defaults (registered with it) apply where the user gave none
    used = json.loads((tmp_path / "from_config" / "results.json").read_text())["config"]
    assert used["epochs"] == 1 and used["model"]["embed_dim"] == 16
    assert used["options"] == {}  # its hcr_warmup_epochs is dmrnet's; baseline ran alone
    config.write_text("plugins: {a: 1}\n")
    assert main(["benchmark", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "plugins in " in capsys.readouterr().err
    # named twice (a config and the command line, say): imported once
    code = main([*args, "--plugin", str(plugin_file), f"--plugin={plugin_file}", "--out",
                 str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"baseline", "dmrnet"}
    assert set(results["subsets"]) == {"a", "b", "a+b"}
    assert results["config"]["model"]["encoder"] == "tiny"
    # a model folder names the plugin it needs; without it, loading is one line naming it
    ckpt = out / "checkpoints" / "baseline-seed0" / "best.ckpt"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "model")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["plugins"] == ["my_plugin.py"]
    import numpy as np

    np.save(tmp_path / "a.npy", np.ones(5, np.float32))
    predict = ["predict", "--checkpoint", str(tmp_path / "model"), "--input",
               f"a={tmp_path / 'a.npy'}"]
    ENCODERS.unregister("tiny")  # as in a new process without --plugin
    capsys.readouterr()
    assert main(predict) == 2
    err = capsys.readouterr().err
    assert "needs the plugin(s) ['my_plugin.py'] that registered its encoder 'tiny'" in err
    plugins._LOADED.pop(str(plugin_file.resolve()))
    DATASETS.unregister("two_views")
    assert main([*predict, "--plugin", str(plugin_file)]) == 0
    assert "a " in capsys.readouterr().out  # the prediction of subset a
    fit = ["fit", "--plugin", str(plugin_file), "--config",
           str(ROOT / "configs" / "smoke" / "manifest.yaml"), "--data.dataset", "two_views",
           "--data.dataset_kwargs", "null", "--model.network.encoder", "tiny",
           "--model.network.encoder_kwargs", "null", "--trainer.max_epochs", "1",
           "--trainer.default_root_dir", str(tmp_path / "fit")]
    assert main(fit) == 0
    assert list((tmp_path / "fit").rglob("best-epoch=0.ckpt"))
    # a fit config's plugins: (by its folder) and the dataset's defaults, as the benchmark's
    fit_config = plugin_file.parent / "fit.yaml"
    fit_config.write_text("plugins: [my_plugin.py]\ndata: {dataset: two_views}\n"
                          "model: {method: dmrnet, network: {encoder: tiny, encoder_kwargs: {}}}\n"
                          "trainer: {enable_progress_bar: false}\n")
    plugins._LOADED.pop(str(plugin_file.resolve()))
    DATASETS.unregister("two_views")
    ENCODERS.unregister("tiny")
    root = tmp_path / "fit2"
    assert main(["fit", "--config", str(fit_config), "--trainer.default_root_dir",
                 str(root)]) == 0, capsys.readouterr().err
    (ckpt,) = root.rglob("best-epoch=*.ckpt")
    assert ckpt.name == "best-epoch=0.ckpt"  # the dataset's 1 epoch, not Lightning's 1000
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["network"]["embed_dim"] == 16 and hp["network"]["encoder_kwargs"] == {"width": 6}
    assert hp["method_kwargs"] == {"hcr_warmup_epochs": 1}  # dmrnet has it: offered
    assert main(["fit", "--config", str(fit_config), "--plugins", "x.py"]) == 2
    assert "on the command line give --plugin" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "spec", "says"), [
    (None, "missing.py", "plugin 'missing.py' does not exist"),
    (None, "no_such_module_x", "plugin 'no_such_module_x' is neither a .py file nor an "
                               "importable module"),
    ("import numpy\nraise ValueError('bad setting')\n", "bad.py",
     r"plugin '.*bad.py' failed while loading: ValueError: bad setting \(bad.py, line 2\)"),
    ("def broken(:\n", "syntax.py", r"failed while loading: SyntaxError: .*\(syntax.py, line 1\)"),
    ("import dmrnet\n@dmrnet.ENCODERS.register('mlp')\ndef mlp(shape):\n    pass\n",
     "clash.py", "RegistryError: encoder 'mlp' is already registered"),
])
def test_a_plugin_that_cannot_load_is_one_line(tmp_path, capsys, source, spec, says):
    if source is not None:
        (tmp_path / spec).write_text(source)
        spec = str(tmp_path / spec)
    assert main(["benchmark", "--plugin", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("dmrnet: error: "), err
    import re

    assert re.search(says, err), err
    assert not (tmp_path / "out").exists()
    assert main(["benchmark", "--plugin"]) == 2
    assert "--plugin needs a .py file or a module name" in capsys.readouterr().err


def test_installed_entry_points_are_loaded_by_the_command_only(tmp_path, monkeypatch, capsys):
    """A package's ``dmrnet.plugins`` entry point is imported by the ``dmrnet`` command (a
    fake distribution here: a module on sys.path and its entry point), not by the API."""
    from importlib.metadata import EntryPoint

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "their_plugin_pkg.py").write_text(
        "import dmrnet\nLOADED = True\n@dmrnet.ENCODERS.register('theirs')\n"
        "def theirs(shape):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    point = EntryPoint("theirs", "their_plugin_pkg:theirs", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    try:
        import dmrnet

        assert "their_plugin_pkg" not in sys.modules and "theirs" not in dmrnet.ENCODERS
        with pytest.raises(SystemExit):
            main(["benchmark", "--help"])
        assert "theirs" in capsys.readouterr().out  # the help lists the plugin's encoder
        assert "theirs" in ENCODERS
    finally:
        ENCODERS.unregister("theirs")
        plugins._LOADED.pop("their_plugin_pkg", None)
        sys.modules.pop("their_plugin_pkg", None)
