"""Encoders of variable-length sequences: each maps a padded (B, T, D) batch and its per-sample
lengths (B,) to features (B, out_features) that depend on the first ``lengths[b]`` steps only,
so the padding's values never reach the pooled features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dmrnet.batch import VOCABULARY_SIZE, BatchError
from dmrnet.errors import ConfigError
from dmrnet.nn.resnet import init_weights
from dmrnet.registry import ENCODERS


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B,) lengths -> (B, T) bool, True at the real steps of each sample."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T, C) steps and (B, T) bool mask -> (B, C) mean over the masked steps (a sample
    with none gives zeros). Padded steps are selected away, not multiplied by zero, so a NaN
    or inf there cannot reach the mean."""
    kept = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return kept.sum(dim=1) / count


class SequenceEncoder(nn.Module):
    """Base of the encoders that read padded sequences with their lengths.

    ``forward(x, lengths=None)``: x (B, T, D) float; lengths (B,) int (None: every step is
    real, a fixed-length sequence); returns (B, out_features). A model passes the batch's
    lengths to these encoders only (:func:`run_encoder`).
    """

    out_features: int
    max_steps: int

    def full_lengths(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The lengths to use: the given ones clamped to 1..T (an absent sample's zero-filled
        row counts as one zero step), or T for every sample."""
        steps = x.shape[1]
        if lengths is None:
            return torch.full((x.shape[0],), steps, dtype=torch.long, device=x.device)
        return lengths.to(device=x.device, dtype=torch.long).clamp(1, steps)

    def trimmed(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(x, lengths)`` with the steps after the batch's longest sample cut off (all
        padding): a batch of short texts padded to T = 128 runs over its own 12 steps."""
        lengths = self.full_lengths(x, lengths)
        longest = int(lengths.max()) if lengths.numel() else x.shape[1]
        return x[:, :longest], lengths

    def real_steps(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, lengths, mask)``: the batch cut to its longest sample (:meth:`trimmed`), its
        padded steps replaced by zeros (not scaled: their values, even NaN, never enter a
        sum), and the (B, T) mask of the real steps."""
        x, lengths = self.trimmed(x, lengths)
        mask = step_mask(lengths, x.shape[1])
        keep = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)), lengths, mask


def run_encoder(encoder: nn.Module, x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """One modality's features: a :class:`SequenceEncoder` gets the lengths; any other
    encoder reads fixed-size inputs and is refused lengths (it would pool the padding)."""
    if isinstance(encoder, SequenceEncoder):
        return encoder(x, lengths)
    if lengths is not None:
        raise BatchError(f"this batch holds variable-length sequences (it has lengths) but the "
                         f"encoder {type(encoder).__name__} reads fixed-size inputs and would "
                         "see the padding; use a sequence encoder ('gru' or 'transformer')")
    return encoder(x)


def _sequence_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ConfigError(f"encoder {name!r} reads sequences (T, D); got inputs of shape "
                          f"{tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1])


def reversal(lengths: Tensor, steps: int, dtype: torch.dtype) -> Tensor:
    """(B, T, T) one-hot matrices that reverse each sample's first ``lengths[b]`` steps and
    leave the rest in place (their own inverse). A matrix product, not an index: its backward
    has no accumulating scatter, so it stays deterministic on CUDA."""
    t = torch.arange(steps, device=lengths.device)
    source = torch.where(t[None, :] < lengths[:, None], lengths[:, None] - 1 - t[None, :],
                         t[None, :])
    return (source.unsqueeze(-1) == t).to(dtype)


class GRUEncoder(SequenceEncoder):
    """A GRU over the real steps (one per direction when bidirectional; the backward one
    reads each sample's steps reversed within its length), mean-pooled over those steps,
    then Linear -> ReLU. Padded steps are zeroed first and come after the real ones in both
    directions, so they reach neither the real steps' states nor the pooled features.
    Input (B, T, D), lengths (B,); output (B, out_features)."""

    def __init__(self, steps: int, in_features: int, out_features: int = 128,
                 hidden: int = 128, layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()

        def gru() -> nn.GRU:
            return nn.GRU(in_features, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)

        self.forward_gru = gru()
        self.backward_gru = gru() if bidirectional else None
        self.out = nn.Sequential(nn.Linear(hidden * (2 if bidirectional else 1), out_features),
                                 nn.ReLU(inplace=True))
        self.out_features, self.max_steps = out_features, steps
        init_weights(self.out)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        x, lengths, mask = self.real_steps(x, lengths)
        states = self.forward_gru(x)[0]
        if self.backward_gru is not None:
            flip = reversal(lengths, x.shape[1], x.dtype)
            states = torch.cat([states, flip @ self.backward_gru(flip @ x)[0]], dim=-1)
        return self.out(masked_mean(states, mask))


class TransformerSequenceEncoder(SequenceEncoder):
    """Linear projection + learned positions -> a small Transformer encoder whose attention
    skips the padded steps -> mean over the real steps -> Linear -> ReLU.
    Input (B, T, D), lengths (B,); output (B, out_features)."""

    def __init__(self, steps: int, in_features: int, out_features: int = 128,
                 width: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"encoder 'transformer': width {width} must be a multiple of "
                              f"heads {heads}")
        self.proj = nn.Linear(in_features, width)
        self.positions = nn.Parameter(torch.zeros(1, steps, width))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width,
                                           dropout=dropout, batch_first=True)
        # nested tensors would drop the padded steps in eval mode only: one code path for both
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.Linear(width, out_features), nn.ReLU(inplace=True))
        self.out_features, self.max_steps = out_features, steps
        init_weights(self.out)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        x, lengths, mask = self.real_steps(x, lengths)
        h = self.proj(x) + self.positions[:, : x.shape[1]]
        h = self.blocks(h, src_key_padding_mask=~mask)
        return self.out(masked_mean(h, mask))


class TokenEncoder(SequenceEncoder):
    """Token ids (B, T) -> an embedding per token (padding id 0 embeds to zeros) -> a sequence
    encoder over them (``inner``, e.g. a GRU). Ids come as float32 whole numbers, as every
    input does; one outside 0..vocab_size-1 is a :class:`BatchError`."""

    def __init__(self, steps: int, inner: SequenceEncoder, vocab_size: int = VOCABULARY_SIZE,
                 width: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=0)
        self.inner = inner
        self.out_features, self.max_steps = int(inner.out_features), steps

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        ids, lengths, _ = self.real_steps(x, lengths)
        top = self.embedding.num_embeddings
        bad = (ids != ids.round()) | (ids < 0) | (ids >= top)
        if bool(bad.any()):
            value = float(ids[bad][0])
            fix = ("a larger vocabulary than the embedding holds: set the tokens encoder's "
                   "vocab_size" if value == round(value) and value >= top else
                   "a sequence of shape (T,) is read as token ids")
            raise BatchError(f"token ids must be whole numbers 0..{top - 1}; got {value} "
                             f"({fix})")
        return self.inner(self.embedding(ids.round().long()), lengths)


@ENCODERS.register("tokens")
def tokens(input_shape: tuple[int, ...], vocab_size: int = VOCABULARY_SIZE, width: int = 64,
           sequence: Mapping[str, Any] | None = None) -> TokenEncoder:
    """Token-id sequences (T,) (text): an embedding of ``width`` per token, then the
    sequence encoder ``sequence`` names (``{name: transformer, ...}``; a GRU by default)."""
    if len(input_shape) != 1:
        raise ConfigError(f"encoder 'tokens' reads token ids (T,); got inputs of shape "
                          f"{tuple(input_shape)}")
    steps = int(input_shape[0])
    return TokenEncoder(steps, sequence_encoder((steps, int(width)), sequence), vocab_size,
                        int(width))


@ENCODERS.register("gru")
def gru(input_shape: tuple[int, ...], out_features: int = 128, hidden: int = 128,
        layers: int = 1, bidirectional: bool = True, dropout: float = 0.0) -> GRUEncoder:
    """A GRU over sequences (T, D) of any length up to T (padding never read)."""
    steps, dim = _sequence_shape("gru", input_shape)
    return GRUEncoder(steps, dim, out_features=out_features, hidden=hidden, layers=layers,
                      bidirectional=bidirectional, dropout=dropout)


@ENCODERS.register("transformer")
def transformer(input_shape: tuple[int, ...], out_features: int = 128, width: int = 64,
                heads: int = 4, layers: int = 2, dropout: float = 0.1
                ) -> TransformerSequenceEncoder:
    """A small Transformer over sequences (T, D) of any length up to T (padding masked)."""
    steps, dim = _sequence_shape("transformer", input_shape)
    return TransformerSequenceEncoder(steps, dim, out_features=out_features, width=width,
                                      heads=heads, layers=layers, dropout=dropout)


def sequence_encoder(input_shape: tuple[int, ...], options: Mapping[str, Any] | None
                     ) -> SequenceEncoder:
    """The encoder ``auto`` builds for a sequence modality: ``options`` name it (``{name:
    transformer, ...}``; a GRU by default) and give its arguments. Token ids (T,) are
    embedded first (:class:`TokenEncoder`)."""
    if len(input_shape) == 1:
        return tokens(input_shape, sequence=options)
    kwargs = dict(options or {})
    name = str(kwargs.pop("name", "gru"))
    encoder = ENCODERS.get(name)(tuple(input_shape), **kwargs)
    if not isinstance(encoder, SequenceEncoder):
        raise ConfigError(f"encoder 'auto': sequence: {{name: {name!r}}} is not a sequence "
                          "encoder; use 'gru' or 'transformer'")
    return encoder
