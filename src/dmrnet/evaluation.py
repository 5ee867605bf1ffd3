"""Evaluation over every non-empty modality subset, with the encoders run once per batch.

A subset's prediction needs only the fusion, embedding and predictor on top of the encoder
features, so :func:`subset_outputs` encodes a batch once and replays the head for each subset
(several subsets stacked into one head call): 2^M − 1 head evaluations instead of 2^M − 1 full
forward passes. In eval mode this gives exactly the
predictions of the naive per-subset forward (:func:`naive_subset_outputs`); a test checks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from dmrnet.models.protocol import HeadParts, ModelOutput, MultimodalNetwork, SubsetHead


def subset_outputs(
    model: MultimodalNetwork,
    inputs: Mapping[str, Tensor],
    availability: Tensor,
    subsets: Iterable[int] | None = None,
    max_rows: int | None = None,
    lengths: Mapping[str, Tensor] | None = None,
) -> Iterator[tuple[int, Tensor | None, ModelOutput]]:
    """Yield ``(subset_index, rows, output)`` for each subset, encoding the batch once.

    A sample enters a subset's evaluation only if it has every modality of that subset;
    ``rows`` is the (B,) bool selection of those samples, or None when all of them qualify.
    The head runs on several subsets at once (up to ``max_rows`` stacked samples per call):
    in eval mode every layer of the head treats samples independently, so this changes
    nothing but speed.

    Args:
        inputs: modality -> (B, *shape); availability: (B, M) bool.
        subsets: subset indices to evaluate (default: all 2^M − 1).
        max_rows: bound on the samples stacked into one head call (memory); default: the
            model's ``eval_max_rows`` or 8192.
        lengths: sequence modality -> (B,) real steps (:attr:`dmrnet.batch.Batch.lengths`).
    """
    max_rows = max_rows or int(getattr(model, "eval_max_rows", 8192))
    # a network written before sequences existed takes no lengths
    steps = {} if lengths is None else {"lengths": lengths}
    model.check(inputs, availability, **steps)
    availability = availability.bool()
    features = model.encode(inputs, **steps)
    absent = model.encode_absent(inputs)
    # a head that starts linear: each modality's product once, each subset a sum of them
    parts = model.head_parts(features, absent) if isinstance(model, SubsetHead) else None
    masks = model.space.masks().to(availability.device)
    plan: list[tuple[int, Tensor | None, Tensor]] = []  # (subset, rows, row indices)
    for s in range(len(model.space)) if subsets is None else subsets:
        has_all = (availability | ~masks[s]).all(dim=1)  # (B,)
        if bool(has_all.any()):
            rows = None if bool(has_all.all()) else has_all
            plan.append((s, rows, has_all.nonzero().flatten()))
    chunk: list[tuple[int, Tensor | None, Tensor]] = []
    for k, item in enumerate(plan):
        chunk.append(item)
        size = sum(len(c[2]) for c in chunk)
        nxt = len(plan[k + 1][2]) if k + 1 < len(plan) else 0
        if k + 1 == len(plan) or size + nxt > max_rows:
            yield from _run_chunk(model, features, absent, masks, chunk, parts)
            chunk = []


def _run_chunk(
    model: MultimodalNetwork,
    features: Sequence[Tensor],
    absent: Sequence[Tensor] | None,
    masks: Tensor,
    chunk: Sequence[tuple[int, Tensor | None, Tensor]],
    parts: HeadParts | None = None,
) -> Iterator[tuple[int, Tensor | None, ModelOutput]]:
    index = torch.cat([c[2] for c in chunk])
    avail = torch.cat([masks[s].expand(len(idx), -1) for s, _, idx in chunk])
    if parts is not None:  # every subset's sum in one product, then the rows it keeps
        sums = parts.sums(torch.stack([masks[s] for s, _, _ in chunk]))
        rows = sums.flatten(0, 1) if all(r is None for _, r, _ in chunk) else torch.cat(
            [sums[k].index_select(0, idx) for k, (_, _, idx) in enumerate(chunk)])
        out = model.forward_parts(  # type: ignore[attr-defined]
            rows, avail, _rows(features, index) if parts.needs_features else None)
    else:
        out = model.forward_head(_rows(features, index), avail, _rows(absent, index))
    sizes = [len(c[2]) for c in chunk]
    for k, (s, rows, _) in enumerate(chunk):
        part = {name: _part(value, sizes, k) for name, value in vars(out).items()}
        yield s, rows, ModelOutput(**part)


def _rows(obj: object, index: Tensor) -> object:
    """Select batch rows in a tensor or a (nested) list of tensors."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return obj.index_select(0, index)
    return [_rows(o, index) for o in obj]  # type: ignore[attr-defined]


def _part(value: object, sizes: list[int], k: int) -> object:
    if value is None or isinstance(value, dict):  # dicts hold batch-level scalars (losses)
        return None
    if isinstance(value, Tensor):
        return value.split(sizes)[k]
    return [_part(v, sizes, k) for v in value]  # type: ignore[attr-defined]


def naive_subset_outputs(
    model: MultimodalNetwork,
    inputs: Mapping[str, Tensor],
    availability: Tensor,
    subsets: Iterable[int] | None = None,
    lengths: Mapping[str, Tensor] | None = None,
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
        steps = {m: (x if rows is None else x[rows]) for m, x in (lengths or {}).items()}
        n = next(iter(sub.values())).shape[0]
        yield s, rows, model(sub, mask.expand(n, -1), *([steps] if steps else []))


@torch.no_grad()
def predict_all_subsets(
    model: MultimodalNetwork, inputs: Mapping[str, Tensor], availability: Tensor,
    lengths: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Class probabilities for every subset, in eval mode: subset name -> (B, K), row b for
    sample b; NaN rows for the samples that lack one of the subset's modalities (every subset
    the batch has none of is left out). ``lengths``: sequence modality -> (B,) real steps."""
    was_training = model.training
    model.eval()
    try:
        out: dict[str, Tensor] = {}
        for s, rows, o in subset_outputs(model, inputs, availability, lengths=lengths):
            probs = o.logits.softmax(dim=1)
            if rows is not None:  # the samples that have the subset, in their batch rows
                full = probs.new_full((len(rows), *probs.shape[1:]), float("nan"))
                full[rows] = probs
                probs = full
            out[model.space.name(s)] = probs
        return out
    finally:
        model.train(was_training)
