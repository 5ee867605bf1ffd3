"""Methods are registered units (issue 11): a method defined here, in a test file, trains and
evaluates through the command line with no change to library code; every registered method's
network keeps the one forward contract; the glue names no method."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmrnet.batch import check_inputs
from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.methods import (
    METHODS,
    Method,
    ModelConfig,
    Stage,
    TrainingContext,
    build_method,
    checkpoint_network,
    get_method,
)
from dmrnet.models import ModelOutput, MultimodalNetwork
from dmrnet.subsets import SubsetSpace
from dmrnet.training import MultimodalModule

from .conftest import random_batch

ROOT = Path(__file__).resolve().parents[1]


class Prototypes(nn.Module):
    """A toy network: a linear map per modality, the mean over the available ones, a linear
    classifier. It implements the forward contract and nothing else."""

    def __init__(self, modalities, input_shapes, num_classes, width: int) -> None:
        super().__init__()
        self.space = SubsetSpace(modalities)
        self.modalities = list(self.space.modalities)
        self.input_shapes = {m: tuple(input_shapes[m]) for m in self.modalities}
        self.num_classes = num_classes
        self.validate_inputs = True
        self.maps = nn.ModuleDict({m: nn.Linear(self.input_shapes[m][0], width)
                                   for m in self.modalities})
        self.head = nn.Linear(width, num_classes)

    def check(self, inputs, availability) -> None:
        if self.validate_inputs:
            check_inputs(inputs, availability, self.modalities, self.input_shapes,
                         dtype=self.head.weight.dtype)

    def encode(self, inputs, availability=None):
        return [self.maps[m](inputs[m]) for m in self.modalities]

    def encode_absent(self, inputs):
        return None

    def forward_head(self, features, availability, absent_features=None) -> ModelOutput:
        w = availability.to(features[0].dtype).unsqueeze(-1)  # (B, M, 1)
        mean = (torch.stack(list(features), dim=1) * w).sum(1) / w.sum(1).clamp_min(1.0)
        return ModelOutput(logits=self.head(torch.relu(mean)), mu=mean, z=mean)

    def forward(self, inputs, availability) -> ModelOutput:
        self.check(inputs, availability)
        return self.forward_head(self.encode(inputs), availability)


class PrototypeLoss(nn.Module):
    def forward(self, out, target, subset_index):
        task = F.cross_entropy(out.logits, target)
        return {"task": task, "loss": task}


class WarmStart(TrainingContext):
    """Loads the warm start's weights when training starts (a trained network's own
    checkpoint holds all its weights, so building it never needs the warm start's file)."""

    def __init__(self, path, network) -> None:
        self.path, self.network, self.loaded = path, network, False

    def setup(self) -> None:
        if not self.loaded:
            self.network.load_state_dict(checkpoint_network(self.path).state_dict())
            self.loaded = True


class ToyPrototypes(Method):
    """Two stages: a warm start on complete inputs, then training on random subsets from the
    warm start's weights (the checkpoint of the first stage, filled in by the benchmark)."""

    name = "toy_prototypes"
    description = "toy: mean of per-modality linear maps"

    @dataclass
    class Options:
        width: int = 16
        warm_start: str | None = None

    def build(self, config: ModelConfig):
        opts = self.options(config.method_kwargs)
        net = Prototypes(config.modalities, config.input_shapes, config.num_classes,
                         opts.width)
        return net, PrototypeLoss()

    def training_context(self, config, network):
        path = self.options(config.method_kwargs).warm_start
        return None if path is None else WarmStart(path, network)

    def stages(self, settings, modalities):
        own = {**settings, "method": self.name}
        warm = {**own, "subset_weights": {SubsetSpace(modalities).names[-1]: 1.0}}
        return [Stage("warm", warm),
                Stage("", own, needs={"method_kwargs.warm_start": "warm"})]


@pytest.fixture
def toy_method():
    METHODS.register(ToyPrototypes.name)(ToyPrototypes())
    yield ToyPrototypes.name
    METHODS.unregister(ToyPrototypes.name)


def test_a_method_defined_in_a_test_trains_and_evaluates_through_the_cli(toy_method, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    code = main(["benchmark", "--dataset", "synthetic", "--methods", toy_method,
                 "--seeds", "0", "--epochs", "10", "--out", str(out), "--no-progress",
                 "--set", "method_kwargs={width: 12}"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert toy_method in printed.out  # listed like any other method
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    toy = runs[toy_method]
    # eight classes: chance is 1/8; the complete subset learns far more than that
    assert len(toy["per_subset"]) == 7 and toy["per_subset"]["strong+medium+weak"] > 0.3
    assert set(toy["stage_train_seconds"]) == {"warm"}
    # both stages trained and were kept; the second started from the first's weights
    warm = out / "checkpoints" / f"{toy_method}-warm-seed0" / "best.ckpt"
    main_ckpt = out / "checkpoints" / f"{toy_method}-seed0" / "best.ckpt"
    assert warm.is_file() and main_ckpt.is_file()
    hp = torch.load(main_ckpt, weights_only=True)["hyper_parameters"]
    # the path it trained from (inside the run folder while it was being written)
    assert hp["method_kwargs"]["width"] == 12
    assert hp["method_kwargs"]["warm_start"].endswith(f"{toy_method}-warm-seed0/best.ckpt")
    assert checkpoint_network(str(main_ckpt)).maps["strong"].out_features == 12


def test_methods_and_datasets_in_help_and_errors_come_from_the_registries(toy_method, capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert toy_method in capsys.readouterr().out
    assert main(["benchmark", "--methods", "nope", "--out", "never"]) == 2
    assert toy_method in capsys.readouterr().err


def test_method_options_are_typed_and_unknown_ones_are_named():
    with pytest.raises(ConfigError, match="method 'shaspec' has no option 'dao' in "
                                          "method_kwargs; its options: \\['proj_dim'"):
        build_method("shaspec", modalities=["a"], input_shapes={"a": [3]}, num_classes=2,
                     method_kwargs={"dao": 1})
    with pytest.raises(ConfigError, match="its options: none"):
        build_method("full_only", modalities=["a"], input_shapes={"a": [3]}, num_classes=2,
                     method_kwargs={"x": 1})
    with pytest.raises(ConfigError, match="its options: \\['alpha', 'beta', 'hcr_"):
        build_method("dmrnet", modalities=["a"], input_shapes={"a": [3]}, num_classes=2,
                     method_kwargs={"x": 1})
    with pytest.raises(ConfigError, match="alpha must be a finite number >= 0; got nan"):
        build_method("dmrnet_no_hcr", modalities=["a"], input_shapes={"a": [3]},
                     num_classes=2, method_kwargs={"alpha": float("nan")})
    assert get_method("mmanet").Options().temperature == 2.0


SHAPES = {"a": (6,), "b": (4,), "c": (5,)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_network_keeps_the_forward_contract(name, tmp_path):
    """encode gives one entry per modality; forward_head on them equals forward for every
    mask; outputs have the contract's shapes."""
    torch.manual_seed(0)
    net, _ = build_method(name, modalities=list(SHAPES), input_shapes=SHAPES, num_classes=3,
                          encoder_kwargs={"out_features": 8, "hidden": [16]}, embed_dim=8)
    assert isinstance(net, MultimodalNetwork)
    net.eval()
    x, avail = random_batch(SHAPES, 6)
    feats = net.encode(x, avail)
    assert len(feats) == len(SHAPES)
    out = net(x, avail)
    assert out.logits.shape == (6, 3) and out.mu.shape[0] == 6
    same = net.forward_head(feats, avail, net.encode_absent(x))
    assert torch.allclose(same.logits, out.logits, atol=1e-6)


GLUE = ["training.py", "benchmark/__init__.py", "benchmark/config.py", "benchmark/runs.py",
        "benchmark/statistics.py", "serving.py", "lightning_cli.py",
        "evaluation.py", "predict.py", "sweep.py", "optim.py",
        *(f"cli/{p.name}" for p in sorted((ROOT / "src" / "dmrnet" / "cli").glob("*.py")))]


def test_the_glue_names_no_method():
    """The loop, the benchmark, serving and the command line know methods only through the
    registry (the benchmark's default list and the DMRNet-vs-ablation analyses aside)."""
    pattern = re.compile("mmanet|shaspec|dedicated|full_only|toy_prototypes", re.IGNORECASE)
    for file in GLUE:
        found = pattern.findall((ROOT / "src" / "dmrnet" / file).read_text())
        assert not found, f"{file} names methods {sorted(set(found))}"


def test_the_glue_names_no_method_internals():
    """DMRNet's own words (its regulariser, the subsets it chooses, its ablations) reach
    results, checkpoints, reports and analyses only through the records its objective and
    method write (``Choice``, ``Method.analysis``): the glue never spells them."""
    pattern = re.compile("hcr|hard_subset|dmrnet_no", re.IGNORECASE)
    for file in [*GLUE, "report.py", "analysis.py", "comparison.py", "outputs.py"]:
        text = (ROOT / "src" / "dmrnet" / file).read_text()
        found = [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]
        assert not found, f"{file} spells a method's internals on lines {found}"


def test_each_concern_is_one_typed_argument_and_each_setting_exists_once():
    """MultimodalModule takes the data's fields, the method, and one typed config per concern
    (network, training, optim): a network or training field that were also a module argument
    would be a second copy of it, and the benchmark's short names would be ambiguous."""
    from dmrnet.optim import OptimConfig
    from dmrnet.settings import SHORT_NAMES, NetworkConfig, TrainingConfig

    params = inspect.signature(MultimodalModule.__init__).parameters
    assert params["network"].annotation in (NetworkConfig, "NetworkConfig")
    assert params["training"].annotation in (TrainingConfig, "TrainingConfig")
    assert params["optim"].annotation in (OptimConfig, "OptimConfig")
    assert not set(SHORT_NAMES) & set(params), "a concern's field is also a module argument"
    assert not set(NetworkConfig.names()) & set(TrainingConfig.names())
    module = MultimodalModule(["a", "b"], {"a": [4], "b": [3]}, 3,
                              network={"embed_dim": 8}, training={"label_smoothing": 0.1})
    assert module.hparams["network"] == {**NetworkConfig().to_dict(), "embed_dim": 8}
    assert module.hparams["training"]["label_smoothing"] == 0.1
    assert module.objective.label_smoothing == 0.1  # the objective gets the training's value
    with pytest.raises(ConfigError, match="network has no setting 'embed'; its settings"):
        MultimodalModule(["a"], {"a": [4]}, 3, network={"embed": 8})


