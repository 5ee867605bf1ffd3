"""Dense DMRNet: ESANet-style RGB-D segmentation with the same probabilistic embedding, KL and HCR
as classification (``dmrnet.method``), for any number of modalities.

    primary stream (modalities[0], e.g. rgb)      secondary streams (depth, ...)
    stem ──► SE-add fusion ◄── SE(stem of each secondary), zeroed where missing
    layer1 ─► fusion ◄── layer1 ...  layer4 ─► fusion ◄── layer4
        └─► pyramid pooling (context) ─► per-pixel mu / logvar (1x1 Conv + BN2d) ─► z
    z ─► decoder (3 stages, skips from the fused 1/16, 1/8, 1/4 maps, learned upsampling) ─► logits

Pooling and bilinear resizing are matrix products (``dmrnet.nn.resize``), so training is
deterministic on CUDA too. Secondary streams see only their own data, so evaluation computes
them once per batch and replays the primary stream and the head for each subset (``encode`` /
``forward_head``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmrnet.batch import BatchError, check_inputs, refuse_lengths
from dmrnet.errors import ConfigError
from dmrnet.models.late_fusion import ProbabilisticEmbedding
from dmrnet.models.protocol import ModelOutput
from dmrnet.nn.resize import adaptive_avg_pool, resize_bilinear
from dmrnet.nn.resnet import ResNet, SqueezeExcitation, init_weights
from dmrnet.subsets import SubsetSpace


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet context module: pooled branches at several bin sizes, upsampled and concatenated."""

    def __init__(self, channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        branch = max(channels // len(bins), 8)
        self.bins = list(bins)
        # no BatchNorm in the branches: a 1x1 pooled map of a batch of one has no statistics
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(inplace=True))
            for _ in self.bins
        )
        self.out = conv_bn_relu(channels + branch * len(self.bins), out_channels)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        feats = [x] + [
            resize_bilinear(b(adaptive_avg_pool(x, n)), size)
            for n, b in zip(self.bins, self.branches, strict=True)
        ]
        return self.out(torch.cat(feats, dim=1))


class LearnedUpsample(nn.Module):
    """x2 nearest upsampling followed by a depthwise 3x3 conv initialised to bilinear smoothing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = torch.tensor([0.25, 0.5, 0.25])
        with torch.no_grad():
            self.conv.weight.copy_((k[:, None] * k[None, :]).expand_as(self.conv.weight))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Three stages (1/32 -> 1/16 -> 1/8 -> 1/4), each conv + learned x2 upsampling plus a skip
    (1x1 conv of the fused encoder map) added, then a classifier and two more learned
    upsamplings to full resolution. Optional side outputs (deep supervision) at 1/32, 1/16, 1/8.
    """

    def __init__(self, in_channels: int, skip_channels: Sequence[int], channels: Sequence[int],
                 num_classes: int, deep_supervision: bool = False) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.stages = nn.ModuleList(conv_bn_relu(widths[i], widths[i + 1]) for i in range(3))
        self.ups = nn.ModuleList(LearnedUpsample(widths[i + 1]) for i in range(3))
        self.skips = nn.ModuleList(
            nn.Conv2d(c, widths[i + 1], 1) for i, c in enumerate(skip_channels)
        )
        self.classifier = nn.Conv2d(widths[-1], num_classes, 3, padding=1)
        self.final_up = nn.Sequential(LearnedUpsample(num_classes), LearnedUpsample(num_classes))
        self.sides = (
            nn.ModuleList(nn.Conv2d(widths[i + 1], num_classes, 1) for i in range(3))
            if deep_supervision else None
        )

    def forward(self, z: Tensor, skips: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        x, sides = z, []
        for i in range(3):
            x = self.stages[i](x)
            if self.sides is not None and self.training:
                sides.append(self.sides[i](x))  # at 1/32, 1/16, 1/8
            x = self.ups[i](x)
            skip = skips[i]
            x = resize_bilinear(x, skip.shape[-2:]) + self.skips[i](skip)
        return self.final_up(self.classifier(x)), sides


class DenseMultimodalModel(nn.Module):
    """Segmentation for M image-like modalities that share H x W (the first is the primary
    stream). Forward contract as every method: ``model(inputs, availability) -> ModelOutput``
    with logits (B, K, H, W), mu / logvar (B, D, H/32, W/32).

    Args:
        modalities: names; the first one's stream carries the fused features.
        in_channels: channels per modality (e.g. rgb 3, depth 1).
        num_classes: K (void pixels are marked with the ignore index in targets).
        layers / block / width: the ResNet of every stream ([2,2,2,2] basic = ResNet-18,
            [3,4,6,3] basic = ResNet-34, [3,4,6,3] bottleneck = ResNet-50).
        embed_dim: D, channels of the per-pixel embedding (context output).
        variance / sample: as :class:`~dmrnet.models.late_fusion.ProbabilisticEmbedding`.
        decoder_channels: widths of the three decoder stages.
        deep_supervision: side outputs at 1/32, 1/16, 1/8 in training.
        aux_decoder: a second decoder whose output feeds the hard combination regulariser
            (the authors' segmentation HCR); its logits are ``aux_logits`` in training.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        in_channels: Mapping[str, int],
        num_classes: int,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        width: int = 64,
        embed_dim: int = 512,
        variance: bool = True,
        sample: bool = True,
        decoder_channels: Sequence[int] = (512, 256, 128),
        deep_supervision: bool = False,
        aux_decoder: bool = False,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.space = SubsetSpace(modalities)
        self.modalities = list(self.space.modalities)
        missing = [m for m in self.modalities if m not in in_channels]
        if missing:
            raise ConfigError(f"no input channel count for modality {missing[0]!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {num_classes}")
        if len(decoder_channels) != 3:
            raise ConfigError(f"decoder_channels needs 3 widths; got {list(decoder_channels)}")
        self.streams = nn.ModuleDict(
            {m: ResNet(int(in_channels[m]), layers, block, width) for m in self.modalities}
        )
        chans = self.streams[self.modalities[0]].stage_channels
        self.fuse = nn.ModuleList(
            nn.ModuleDict({m: SqueezeExcitation(c) for m in self.modalities}) for c in chans
        )
        self.context = PyramidPooling(chans[-1], embed_dim)
        self.embedding = ProbabilisticEmbedding(embed_dim, embed_dim, variance=variance,
                                                sample=sample, spatial=True)
        skip_channels = [chans[3], chans[2], chans[1]]
        self.decoder = Decoder(embed_dim, skip_channels, decoder_channels, num_classes,
                               deep_supervision)
        self.aux = (Decoder(embed_dim, skip_channels, decoder_channels, num_classes)
                    if aux_decoder else None)
        self.num_classes = num_classes
        self.in_channels = {m: int(in_channels[m]) for m in self.modalities}
        self.validate_inputs = validate_inputs
        self.eval_max_rows = 16  # dense maps: stack few subsets per head call in evaluation
        for mod in (self.fuse, self.context, self.embedding, self.decoder, self.aux):
            if mod is not None:
                init_weights(mod)
        for dec in (self.decoder, self.aux):  # keep the bilinear init of learned upsampling
            if dec is not None:
                for up in dec.modules():
                    if isinstance(up, LearnedUpsample):
                        up.reset_parameters()

    # --- the contract shared with MultimodalModel -------------------------------------------
    def check(self, inputs: Mapping[str, Tensor], availability: Tensor,
              lengths: Mapping[str, Tensor] | None = None) -> None:
        refuse_lengths(lengths, "the dense network")
        if not self.validate_inputs:
            return
        check_inputs(inputs, availability, self.modalities, None,
                     dtype=self.embedding.mu[0].weight.dtype)
        sizes = {m: tuple(x.shape[-2:]) for m, x in inputs.items()}
        for m, x in inputs.items():
            if x.dim() != 4 or x.shape[1] != self.in_channels[m]:
                raise BatchError(f"modality {m!r} must be (B, {self.in_channels[m]}, H, W); got "
                                 f"{tuple(x.shape)}")
        if len(set(sizes.values())) != 1:
            raise BatchError(f"all modalities must share H x W for dense prediction; got {sizes}")

    def encode(self, inputs: Mapping[str, Tensor], availability: Tensor | None = None,
               lengths: Mapping[str, Tensor] | None = None) -> list[list[Tensor]]:
        """Per modality: [stem] for the primary stream, [stem, layer1..layer4] for the others."""
        out: list[list[Tensor]] = []
        for j, m in enumerate(self.modalities):
            net = self.streams[m]
            x = net.stem(inputs[m])
            if j == 0:
                out.append([x])
                continue
            stages = [x]
            for k in range(1, 5):
                x = net.stage(k, x)
                stages.append(x)
            out.append(stages)
        return out

    def encode_absent(self, inputs: Mapping[str, Tensor]) -> None:
        return None  # missingness is applied at feature level at every fusion stage

    def _fused(self, k: int, primary: Tensor, features: Sequence[Sequence[Tensor]],
               avail: Tensor) -> Tensor:
        zero = torch.zeros((), dtype=primary.dtype, device=primary.device)
        total = None
        for j, m in enumerate(self.modalities):
            f = primary if j == 0 else features[j][k]
            g = torch.where(avail[:, j].view(-1, 1, 1, 1), self.fuse[k][m](f), zero)
            total = g if total is None else total + g
        assert total is not None
        return total

    def forward_head(self, features: Sequence[Sequence[Tensor]], availability: Tensor,
                     absent_features: object = None, out_size: tuple[int, int] | None = None
                     ) -> ModelOutput:
        avail = availability.bool()
        net = self.streams[self.modalities[0]]
        x = self._fused(0, features[0][0], features, avail)
        skips = []
        for k in range(1, 5):
            x = self._fused(k, net.stage(k, x), features, avail)
            skips.append(x)
        z, mu, logvar = self.embedding(self.context(x))
        dec_skips = [skips[2], skips[1], skips[0]]  # 1/16, 1/8, 1/4
        size = out_size or tuple(s * 2 for s in features[0][0].shape[-2:])
        logits, sides = self.decoder(z, dec_skips)
        logits = resize_bilinear(logits, size)
        aux = None
        if self.aux is not None and self.training:
            aux = resize_bilinear(self.aux(z, dec_skips)[0], size)
        return ModelOutput(logits=logits, mu=mu, logvar=logvar, z=z, aux_logits=aux,
                           side_logits=sides or None)

    def forward(self, inputs: Mapping[str, Tensor], availability: Tensor,
                lengths: Mapping[str, Tensor] | None = None) -> ModelOutput:
        self.check(inputs, availability, lengths)
        size = tuple(next(iter(inputs.values())).shape[-2:])
        return self.forward_head(self.encode(inputs), availability, out_size=size)

