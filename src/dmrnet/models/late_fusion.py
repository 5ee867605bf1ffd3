"""The late-fusion network of DMRNet and its family (the baseline is the same network with
flags off):

    x_m --encoder_m--> f_m --(zero where missing)--> fuse (--> trunk) --> h
    h --> mu = BN(W_mu h),  logvar = BN(W_v h)
    train: z = mu + eps * exp(logvar / 2);  eval: z = mu
    z --> predictor g

Plain PyTorch: nothing here knows about files, Lightning or the CLI. The losses are in
:mod:`dmrnet.methods.objectives`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from dmrnet.batch import check_inputs
from dmrnet.errors import ConfigError
from dmrnet.models.protocol import HeadParts, ModelOutput
from dmrnet.nn.fusion import ConcatFusion, create_fusion, zero_missing
from dmrnet.nn.resnet import init_weights
from dmrnet.nn.sequence import run_encoder
from dmrnet.subsets import SubsetSpace


def pool_features(f: Tensor) -> Tensor:
    """An encoder's features as (B, C): vectors (B, C) as they are, maps (B, C, H, W)
    averaged over positions (in float32, returned in their dtype)."""
    return f if f.dim() == 2 else f.float().mean(dim=(2, 3)).to(f.dtype)


class ProbabilisticEmbedding(nn.Module):
    """Gaussian embedding of the fused representation.

    mu and logvar are each a Linear + BatchNorm1d (vectors) or a 1x1 Conv + BatchNorm2d (maps).
    ``forward(h)`` returns ``(z, mu, logvar)``: z is one reparameterised sample when ``sample``
    and the module is training, else mu. With ``variance=False`` there is no logvar head (the
    baseline's deterministic embedding) and logvar is None.

    Shapes: h (B, C_in[, H, W]) -> z, mu, logvar (B, C_out[, H, W]).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        variance: bool = True,
        sample: bool = True,
        spatial: bool = False,
    ) -> None:
        super().__init__()
        if sample and not variance:
            raise ConfigError("sampling needs the variance head: set variance=True")

        def head() -> nn.Module:
            if spatial:
                return nn.Sequential(
                    nn.Conv2d(in_features, out_features, 1), nn.BatchNorm2d(out_features)
                )
            return nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features))

        self.mu = head()
        self.logvar = head() if variance else None
        self.sample = sample
        self.out_features = out_features

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        mu = self.mu(h)
        logvar = self.logvar(h) if self.logvar is not None else None
        if self.training and self.sample and logvar is not None:
            # exp of a bf16/fp16 log-variance under autocast loses most of its precision
            std = torch.exp(0.5 * logvar.float())
            z = (mu.float() + torch.randn_like(std) * std).to(mu.dtype)
        else:
            z = mu
        return z, mu, logvar


class MultimodalModel(nn.Module):
    """Encoders -> zero missing -> fusion -> (probabilistic) embedding -> classifier.

    The forward contract shared by every method: ``model(inputs, availability)`` with
    ``inputs`` a dict modality -> (B, *shape) and ``availability`` (B, M) bool, returning a
    :class:`ModelOutput`. ``encode`` and ``forward_head`` split it so that evaluation can run the
    encoders once and reuse their features for every subset.

    Args:
        modalities: the M modality names, in order.
        encoders: modality -> encoder module with an ``out_features`` attribute.
        num_classes: K.
        embed_dim: D, the embedding size.
        fusion: "concat" (default) or "mean" (masked mean of the available features).
        variance: build the logvar head (DMRNet); False = deterministic embedding (baseline).
        sample: draw z ~ N(mu, sigma^2) in training (DMRNet); False = z = mu always.
        missing_at: "feature" (zero an absent modality's features after its encoder; default)
            or "input" (zero its input; the encoder sees zeros).
        input_shapes: per-modality shape without the batch axis, checked on every forward.
        validate_inputs: check names, shapes and NaN/inf of each batch (cheap; on by default).
        trunk: shared layers between fusion and the embedding (mid-level fusion), or None.
        spatial: the encoders give maps (B, C, H, W): fusion, trunk and embedding work on maps
            (1x1 Conv + BatchNorm2d heads) and the classifier pools before its linear layer.
        unimodal_heads: a linear classifier per modality on its pooled encoder features, run in
            training (``ModelOutput.modality_logits``) so that each encoder learns to classify
            alone (the unimodal-loss remedy for modality imbalance: Du et al., "On
            Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023).
        detach_fused: in training, the fused head's gradient does not reach the encoders:
            they learn from their unimodal heads only (DGL: Wei et al., "Diagnosing and
            Re-learning for Balanced Multimodal Learning", ECCV 2024). Needs unimodal_heads.
        expose_features: in training, return each modality's pooled encoder features
            (``ModelOutput.modality_features``), e.g. for distillation to unimodal teachers.
        probe_heads: the unimodal heads see detached features: probes that measure each
            encoder (e.g. for gradient modulation) without training it.
        ensemble_weight: w > 0: in eval mode the logits are the fused head's log-probabilities
            plus w x the sum of the available modalities' unimodal-head log-probabilities (a
            product of experts; the uni-modal ensemble, UME, of Du et al., ICML 2023, with the
            fused head as one more member). Training outputs are unchanged. Needs
            unimodal_heads that are trained (not probe_heads).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        embed_dim: int = 256,
        fusion: str = "concat",
        variance: bool = True,
        sample: bool = True,
        missing_at: str = "feature",
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        validate_inputs: bool = True,
        trunk: nn.Module | None = None,
        spatial: bool = False,
        unimodal_heads: bool = False,
        detach_fused: bool = False,
        expose_features: bool = False,
        probe_heads: bool = False,
        ensemble_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.space = SubsetSpace(modalities)
        self.modalities = list(self.space.modalities)
        missing = [m for m in self.modalities if m not in encoders]
        if missing:
            raise ConfigError(f"no encoder given for modality {missing[0]!r}")
        if missing_at not in ("feature", "input"):
            raise ConfigError(f"missing_at must be 'feature' or 'input'; got {missing_at!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {num_classes}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        dims = [int(self.encoders[m].out_features) for m in self.modalities]
        self.fusion = create_fusion(fusion, dims)
        self.trunk = trunk
        width = int(trunk.out_features) if trunk is not None else self.fusion.out_features
        self.embedding = ProbabilisticEmbedding(
            width, embed_dim, variance=variance, sample=sample, spatial=spatial
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if spatial else None
        self.classifier = nn.Linear(embed_dim, num_classes)
        if detach_fused and not unimodal_heads:
            raise ConfigError("detach_fused needs unimodal_heads: the encoders would get no "
                              "gradient at all")
        self.unimodal = (nn.ModuleDict({m: nn.Linear(d, num_classes)
                                        for m, d in zip(self.modalities, dims, strict=True)})
                         if unimodal_heads else None)
        self.detach_fused = detach_fused
        if probe_heads and not unimodal_heads:
            raise ConfigError("probe_heads needs unimodal_heads: they are the probes")
        self.probe_heads = probe_heads
        if ensemble_weight < 0 or ensemble_weight != ensemble_weight:
            raise ConfigError(f"ensemble_weight must be >= 0; got {ensemble_weight}")
        if ensemble_weight > 0 and (not unimodal_heads or probe_heads):
            raise ConfigError("ensemble_weight needs trained unimodal heads (unimodal_heads "
                              "without probe_heads)")
        self.ensemble_weight = float(ensemble_weight)
        self.expose_features = expose_features
        self.num_classes = num_classes
        self.missing_at = missing_at
        self.input_shapes = (
            {m: tuple(int(s) for s in input_shapes[m]) for m in self.modalities}
            if input_shapes is not None
            else None
        )
        self.validate_inputs = validate_inputs
        # the authors' initialisation for the layers built here; encoders and trunks initialise
        # themselves (and may have loaded weights)
        init_weights(self.embedding)
        init_weights(self.classifier)
        if self.unimodal is not None:
            init_weights(self.unimodal)

    def check(self, inputs: Mapping[str, Tensor], availability: Tensor,
              lengths: Mapping[str, Tensor] | None = None) -> None:
        if self.validate_inputs:
            dtype = self.classifier.weight.dtype
            check_inputs(inputs, availability, self.modalities, self.input_shapes, dtype=dtype,
                         lengths=lengths)

    def encode(
        self, inputs: Mapping[str, Tensor], availability: Tensor | None = None,
        lengths: Mapping[str, Tensor] | None = None,
    ) -> list[Tensor]:
        """Per-modality features [(B, D_m)], computed on the inputs as given; a sequence
        modality's encoder reads its ``lengths`` (B,) real steps.

        With ``missing_at="input"`` and an ``availability`` mask, absent inputs are zeroed first
        (a sequence's to its full length, the input :meth:`encode_absent` sees).
        """
        feats = []
        for j, m in enumerate(self.modalities):
            x, steps = inputs[m], (lengths or {}).get(m)
            if self.missing_at == "input" and availability is not None:
                x = zero_missing([x], availability[:, j : j + 1])[0]
                if steps is not None:
                    steps = torch.where(availability[:, j].bool(), steps, x.shape[1])
            feats.append(run_encoder(self.encoders[m], x, steps))
        return feats

    def encode_absent(self, inputs: Mapping[str, Tensor]) -> list[Tensor] | None:
        """Features of an all-zero input per modality (input-level missingness), else None."""
        if self.missing_at != "input":
            return None
        return [run_encoder(self.encoders[m], torch.zeros_like(inputs[m]))
                for m in self.modalities]

    def forward_head(
        self,
        features: Sequence[Tensor],
        availability: Tensor,
        absent_features: Sequence[Tensor] | None = None,
    ) -> ModelOutput:
        """Fusion, embedding and classifier on encoder features for one availability mask."""
        avail = availability.bool()
        if absent_features is not None:  # input-level missingness: the encoder's zero response
            feats = [
                torch.where(avail[:, j].view(-1, *([1] * (f.dim() - 1))), f, a)
                for j, (f, a) in enumerate(zip(features, absent_features, strict=True))
            ]
        else:
            feats = zero_missing(features, avail)
        h = self.fusion(feats, avail)
        if self.trunk is not None:
            h = self.trunk(h)
        z, mu, logvar = self.embedding(h)
        logits = self.classifier(z if self.pool is None else self.pool(z))
        if self.ensemble_weight > 0 and not self.training:
            logits = self.ensemble(logits, features, avail)
        return ModelOutput(logits=logits, mu=mu, logvar=logvar, z=z)

    def _folded(self) -> tuple[Tensor, Tensor] | None:
        """The mu (and logvar) heads as one affine map of the concatenated features, their
        eval-mode BatchNorm folded in: (weight (P, sum_m C_m), bias (P,)), P = D or 2D; None
        in training or for heads of another form (a trunk, maps, a masked-mean fusion)."""
        if self.training or self.trunk is not None or self.pool is not None or \
                not isinstance(self.fusion, ConcatFusion):
            return None
        heads = [self.embedding.mu] + ([self.embedding.logvar]
                                       if self.embedding.logvar is not None else [])
        weights, biases = [], []
        for head in heads:
            if not (isinstance(head, nn.Sequential) and len(head) == 2 and
                    isinstance(head[0], nn.Linear) and isinstance(head[1], nn.BatchNorm1d)
                    and head[1].track_running_stats and head[0].bias is not None):
                return None
            lin, bn = head[0], head[1]
            scale = (bn.running_var + bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
            weights.append(lin.weight * scale[:, None])
            biases.append(lin.bias * scale + shift)
        return torch.cat(weights), torch.cat(biases)

    def head_parts(self, features: Sequence[Tensor],
                   absent_features: Sequence[Tensor] | None = None) -> HeadParts | None:
        """In eval mode, each modality's share (M, B, P) of the mu (and logvar) heads
        (linear layer and BatchNorm, one affine map), P = D or 2D (see
        :class:`~dmrnet.models.protocol.SubsetHead`); None in training or for heads of
        another form."""
        folded = self._folded()
        if folded is None:
            return None
        columns = folded[0].split([f.shape[1] for f in features], dim=1)
        parts = torch.stack([f @ w.T for f, w in zip(features, columns, strict=True)])
        absent = None if absent_features is None else torch.stack(
            [f @ w.T for f, w in zip(absent_features, columns, strict=True)])
        return HeadParts(parts, absent, folded[1], needs_features=self.ensemble_weight > 0)

    def forward_parts(self, sums: Tensor, availability: Tensor,
                      features: Sequence[Tensor] | None = None) -> ModelOutput:
        """``forward_head`` (eval mode) from the summed parts (N, P) of :meth:`head_parts`,
        their folded bias included: mu (and logvar), the classifier and any ensemble."""
        d = self.embedding.out_features
        mu = sums[:, :d]
        logvar = sums[:, d:] if self.embedding.logvar is not None else None
        logits = self.classifier(mu)
        if self.ensemble_weight > 0:
            assert features is not None
            logits = self.ensemble(logits, features, availability.bool())
        return ModelOutput(logits=logits, mu=mu, logvar=logvar, z=mu)

    def ensemble(self, logits: Tensor, features: Sequence[Tensor], avail: Tensor) -> Tensor:
        """(B, K) fused logits -> log p_fused + w * sum over available m of log p_m, (B, K)."""
        assert self.unimodal is not None
        out = torch.log_softmax(logits, dim=-1)
        for j, (m, f) in enumerate(zip(self.modalities, features, strict=True)):
            uni = torch.log_softmax(self.unimodal[m](pool_features(f)), dim=-1)
            out = out + self.ensemble_weight * uni * avail[:, j : j + 1].to(uni.dtype)
        return out

    def forward(self, inputs: Mapping[str, Tensor], availability: Tensor,
                lengths: Mapping[str, Tensor] | None = None) -> ModelOutput:
        """inputs: modality -> (B, *shape); availability: (B, M) bool; lengths: sequence
        modality -> (B,) real steps (None: no variable-length input) -> :class:`ModelOutput`."""
        self.check(inputs, availability, lengths)
        feats = self.encode(inputs, availability, lengths)
        # input-level missingness: absent inputs were zeroed before their encoders, and the
        # encoders' response to zeros is what the model sees, so nothing is zeroed again
        absent = feats if self.missing_at == "input" else None
        if not (self.training and (self.unimodal is not None or self.expose_features)):
            return self.forward_head(feats, availability, absent)
        pooled = [pool_features(f) for f in feats]
        modality_logits = None
        if self.unimodal is not None:
            modality_logits = torch.stack(
                [self.unimodal[m](p.detach() if self.probe_heads else p)
                 for m, p in zip(self.modalities, pooled, strict=True)], dim=1)
        if self.detach_fused:
            feats = [f.detach() for f in feats]
            absent = feats if absent is not None else None
        out = self.forward_head(feats, availability, absent)
        out.modality_logits, out.modality_mask = modality_logits, availability.bool()
        if self.expose_features:
            out.modality_features = pooled
        return out
