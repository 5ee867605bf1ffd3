"""Evaluation over every non-empty modality subset, with the encoders run once per batch.

A subset's prediction needs only the fusion, embedding and predictor on top of the encoder
features, so :func:`subset_outputs` encodes a batch once and replays the head for each subset:
2^M − 1 head passes instead of 2^M − 1 full forward passes. In eval mode this gives exactly the
predictions of the naive per-subset forward (:func:`naive_subset_outputs`); a test checks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from dmrnet.method import ModelOutput, MultimodalModel


def _index_rows(items: Sequence[Tensor] | None, rows: Tensor | None) -> list[Tensor] | None:
    if items is None:
        return None
    return list(items) if rows is None else [t[rows] for t in items]


def subset_outputs(
    model: MultimodalModel,
    inputs: Mapping[str, Tensor],
    availability: Tensor,
    subsets: Iterable[int] | None = None,
) -> Iterator[tuple[int, Tensor | None, ModelOutput]]:
    """Yield ``(subset_index, rows, output)`` for each subset, encoding the batch once.

    A sample enters a subset's evaluation only if it has every modality of that subset;
    ``rows`` is the (B,) bool selection of those samples, or None when all of them qualify.

    Args:
        inputs: modality -> (B, *shape); availability: (B, M) bool.
        subsets: subset indices to evaluate (default: all 2^M − 1).
    """
    model.check(inputs, availability)
    availability = availability.bool()
    features = model.encode(inputs)
    absent = model.encode_absent(inputs)
    masks = model.space.masks().to(availability.device)
    for s in range(len(model.space)) if subsets is None else subsets:
        mask = masks[s]
        has_all = (availability | ~mask).all(dim=1)  # (B,)
        if not bool(has_all.any()):
            continue
        rows = None if bool(has_all.all()) else has_all
        feats = _index_rows(features, rows)
        n = feats[0].shape[0]
        out = model.forward_head(feats, mask.expand(n, -1), _index_rows(absent, rows))
        yield s, rows, out


def naive_subset_outputs(
    model: MultimodalModel,
    inputs: Mapping[str, Tensor],
    availability: Tensor,
    subsets: Iterable[int] | None = None,
) -> Iterator[tuple[int, Tensor | None, ModelOutput]]:
    """Reference implementation: one full forward pass per subset (slow; for tests/benchmarks)."""
    availability = availability.bool()
    masks = model.space.masks().to(availability.device)
    for s in range(len(model.space)) if subsets is None else subsets:
        mask = masks[s]
        has_all = (availability | ~mask).all(dim=1)
        if not bool(has_all.any()):
            continue
        rows = None if bool(has_all.all()) else has_all
        sub = {m: (x if rows is None else x[rows]) for m, x in inputs.items()}
        n = next(iter(sub.values())).shape[0]
        yield s, rows, model(sub, mask.expand(n, -1))


@torch.no_grad()
def predict_all_subsets(
    model: MultimodalModel, inputs: Mapping[str, Tensor], availability: Tensor
) -> dict[str, Tensor]:
    """Class probabilities for every subset: subset name -> (B_s, K), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return {
            model.space.name(s): out.logits.softmax(dim=1)
            for s, _, out in subset_outputs(model, inputs, availability)
        }
    finally:
        model.train(was_training)
