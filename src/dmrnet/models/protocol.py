"""The forward contract every network implements (:class:`MultimodalNetwork`) and what it
returns (:class:`ModelOutput`). Evaluation, training, serving and export use networks only
through this contract, so any method's network works everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from dmrnet.subsets import SubsetSpace


@dataclass
class ModelOutput:
    """What every method returns.

    Attributes:
        logits: (B, K) class scores (or (B, K, H, W) for dense tasks).
        mu: (B, D) embedding mean.
        logvar: (B, D) embedding log-variance; None for methods without a variance head.
        z: (B, D) the representation the predictor saw (a sample in training, mu otherwise).
        aux_logits: an auxiliary predictor's output for the HCR term (dense models), or None.
        side_logits: deep-supervision outputs at lower resolutions (training only), or None.
        extra_losses: a method's own auxiliary loss terms, already weighted (training only).
        modality_logits: (B, M, K) a classifier per modality on its own encoder's features
            (unimodal auxiliary heads; training only), or None.
        modality_mask: (B, M) bool, which of those modalities each sample had.
        modality_features: M tensors (B, C_m), each modality's pooled encoder features
            (training only, where a method asks for them), or None.
    """

    logits: Tensor
    mu: Tensor
    logvar: Tensor | None = None
    z: Tensor | None = None
    aux_logits: Tensor | None = None
    side_logits: list[Tensor] | None = None
    extra_losses: dict[str, Tensor] | None = None
    modality_logits: Tensor | None = None
    modality_mask: Tensor | None = None
    modality_features: list[Tensor] | None = None

    @property
    def variance(self) -> Tensor | None:
        """Per-sample mean of sigma^2 over every non-batch axis, (B,); None without a head."""
        if self.logvar is None:
            return None
        return self.logvar.float().exp().flatten(1).mean(dim=1)


@runtime_checkable
class MultimodalNetwork(Protocol):
    """A network over M modalities that serves any subset of them.

    ``network(inputs, availability, lengths=None)`` takes ``inputs`` modality -> (B, *shape),
    ``availability`` (B, M) bool (at least one True per row) and, where a modality holds
    variable-length sequences (B, T, D), ``lengths`` modality -> (B,) real steps; it returns a
    :class:`ModelOutput`. Lengths are passed (to ``__call__``, ``check`` and ``encode``) only
    when a batch holds sequences, so a network of fixed-size inputs may leave them out of its
    signatures; one that takes them but reads fixed-size inputs only refuses them. It is
    split in two so that evaluation runs the encoders once per batch and replays only the
    head for each of the 2^M - 1 subsets:

    - ``encode(inputs, availability=None, lengths=None)``: M entries, one per modality in
      order; each is that modality's features (a tensor (B, ...), or a sequence of them for
      multi-scale or shared/specific features). Opaque to callers: only ``forward_head``
      reads them. Computed on the inputs as given (``availability`` only matters for
      input-level missingness).
    - ``encode_absent(inputs)``: the features an all-zero input gives (input-level missingness),
      or None when absent modalities are handled on features.
    - ``forward_head(features, availability, absent_features=None)``: the prediction for one
      availability mask; equal to ``forward`` with that mask.
    - ``check(inputs, availability, lengths=None)``: raise a
      :class:`~dmrnet.batch.BatchError` naming the problem (unknown modality, shape, dtype,
      NaN in an available modality, a length outside 1..T) when ``validate_inputs`` is on.
    """

    modalities: list[str]
    space: SubsetSpace
    num_classes: int
    input_shapes: Mapping[str, tuple[int, ...]] | None
    validate_inputs: bool

    def check(self, inputs: Mapping[str, Tensor], availability: Tensor,
              lengths: Mapping[str, Tensor] | None = None) -> None: ...

    def encode(self, inputs: Mapping[str, Tensor], availability: Tensor | None = None,
               lengths: Mapping[str, Tensor] | None = None) -> Sequence[Any]: ...

    def encode_absent(self, inputs: Mapping[str, Tensor]) -> Sequence[Any] | None: ...

    def forward_head(self, features: Sequence[Any], availability: Tensor,
                     absent_features: Sequence[Any] | None = None) -> ModelOutput: ...

    def __call__(self, inputs: Mapping[str, Tensor], availability: Tensor,
                 lengths: Mapping[str, Tensor] | None = None) -> ModelOutput: ...


@dataclass
class HeadParts:
    """Each modality's share of a head's first linear layers, computed once per batch for the
    every-subset evaluation (:class:`SubsetHead`).

    Attributes:
        parts: (M, B, P): modality m's features times its columns of the layers.
        absent: (M, B, P) the same for an all-zero input (input-level missingness), or None
            (an absent modality adds nothing).
        offset: (P,) added to every sum (the layers' bias), or None.
        needs_features: the rest of the head reads the encoder features too (e.g. a
            unimodal ensemble).
    """

    parts: Tensor
    absent: Tensor | None = None
    offset: Tensor | None = None
    needs_features: bool = False

    def sums(self, masks: Tensor) -> Tensor:
        """(S, B, P): for each of S availability masks (S, M), the sum over modalities of the
        present ones' parts (and the absent ones' ``absent`` parts), plus ``offset``."""
        m, b, p = self.parts.shape
        weights = masks.to(self.parts.dtype)
        if self.absent is None:
            sums = (weights @ self.parts.reshape(m, b * p)).view(-1, b, p)
        else:
            delta = (self.parts - self.absent).reshape(m, b * p)
            sums = (weights @ delta).view(-1, b, p) + self.absent.sum(dim=0)
        return sums if self.offset is None else sums + self.offset


@runtime_checkable
class SubsetHead(Protocol):
    """Optional, for networks whose head begins with a linear map of the concatenated
    modality features: W concat(f_1, ..., f_M) = sum_m W_m f_m. Evaluation then multiplies
    each modality's features by its columns once per batch (:meth:`head_parts`), sums the
    present modalities' parts for every subset in one product (:meth:`HeadParts.sums`) and
    runs the rest of the head on those sums (:meth:`forward_parts`), instead of a matrix
    product per subset: the same values up to float rounding."""

    def head_parts(self, features: Sequence[Any],
                   absent_features: Sequence[Any] | None = None) -> HeadParts | None:
        """The parts for a batch of encoder features, or None where the head (or its mode,
        e.g. training) does not allow it."""
        ...

    def forward_parts(self, sums: Tensor, availability: Tensor,
                      features: Sequence[Any] | None = None) -> ModelOutput:
        """``forward_head`` from the summed parts (N, P, offset included) of rows with
        availability (N, M) (and, where ``needs_features``, those rows' encoder features)."""
        ...
