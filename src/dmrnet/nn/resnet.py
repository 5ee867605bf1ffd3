"""ResNets written here (torchvision does not pair with every torch build), trained from scratch.

- :class:`ResNet`: BasicBlock ResNet, any depth list ([2,2,2,2] = ResNet-18, [3,4,6,3] = the
  authors' audio-visual backbone, ResNet-34 layout), any number of input channels, optional
  frame axis: (B, C, H, W) or (B, T, C, H, W) -> pooled (B, 512) (frames averaged).
- :class:`SEResNetStem`: the CASIA-SURF stem (3x3 stride-2 conv1, layer1, layer2 + SE), giving
  a (B, 128, H/8, W/8) map for mid-level fusion.
- :class:`ResNetTrunk`: shared residual stages after mid-level fusion (layer3, layer4).

Weights can be read from a local state dict in torchvision's key layout
(:func:`load_torchvision_state_dict`); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from dmrnet.errors import ConfigError, checkpoint_error, local_checkpoint
from dmrnet.registry import ENCODERS, TRUNKS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block (ResNet-50); output channels = 4 * planes."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_layer(
    inplanes: int, planes: int, blocks: int, stride: int, block: str = "basic"
) -> nn.Sequential:
    cls = BLOCKS[block]
    out = planes * cls.expansion  # type: ignore[attr-defined]
    layers = [cls(inplanes, planes, stride)]
    layers += [cls(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigmoid(W2 relu(W1 avgpool(x)))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x)


class ResNet(nn.Module):
    """BasicBlock ResNet trunk with global pooling; input (B, C, H, W) or (B, T, C, H, W).

    Output (B, 512): with a frame axis, each frame is encoded and the features are averaged over T.
    """

    def __init__(
        self,
        in_channels: int = 3,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"ResNet layers must be four positive block counts; got {layers}")
        if block not in BLOCKS:
            raise ConfigError(f"unknown ResNet block {block!r}; choose from {sorted(BLOCKS)}")
        exp = BLOCKS[block].expansion  # type: ignore[attr-defined]
        w = int(width)
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = make_layer(w, w, layers[0], 1, block)
        self.layer2 = make_layer(w * exp, 2 * w, layers[1], 2, block)
        self.layer3 = make_layer(2 * w * exp, 4 * w, layers[2], 2, block)
        self.layer4 = make_layer(4 * w * exp, 8 * w, layers[3], 2, block)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_channels = in_channels
        self.stage_channels = [w, w * exp, 2 * w * exp, 4 * w * exp, 8 * w * exp]
        """Channels after the stem and after layer1..layer4 (strides 2, 4, 8, 16, 32)."""
        self.out_features = self.stage_channels[-1]
        init_weights(self)

    def stem(self, x: Tensor) -> Tensor:
        """conv1 + BN + ReLU: (N, C, H, W) -> (N, w, H/2, W/2)."""
        return self.relu(self.bn1(self.conv1(x)))

    def stage(self, k: int, x: Tensor) -> Tensor:
        """Stage k = 1..4 (stage 1 includes the max-pool)."""
        if k == 1:
            return self.layer1(self.maxpool(x))
        return getattr(self, f"layer{k}")(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, out_features, H/32, W/32)."""
        x = self.stem(x)
        for k in range(1, 5):
            x = self.stage(k, x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        frames = x.dim() == 5
        if frames:
            b, t = x.shape[:2]
            x = x.flatten(0, 1)
        out = self.pool(self.forward_features(x)).flatten(1)
        if frames:
            out = out.view(b, t, -1).mean(dim=1)
        return out


class SEResNetStem(nn.Module):
    """CASIA-SURF modality stem: 3x3 stride-2 conv1, layer1, layer2, squeeze-and-excitation.

    (B, C, H, W) -> (B, 128, H/8, W/8); 112 x 112 inputs give 14 x 14 maps.
    """

    def __init__(self, in_channels: int = 3, layers: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = make_layer(64, 64, layers[0], 1)
        self.layer2 = make_layer(64, 128, layers[1], 2)
        self.se = SqueezeExcitation(128)
        self.out_features = 128
        self.spatial = True  # gives maps: the model fuses and embeds them as maps
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        return self.se(self.layer2(self.layer1(x)))


class ResNetTrunk(nn.Module):
    """Shared stages after mid-level fusion: layer3 (256) and layer4 (512), with SE after each.

    (B, C_in, H, W) -> (B, 512, H/4, W/4).
    """

    def __init__(self, in_channels: int, layers: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        self.layer3 = nn.Sequential(make_layer(in_channels, 256, layers[0], 2),
                                    SqueezeExcitation(256))
        self.layer4 = nn.Sequential(make_layer(256, 512, layers[1], 2), SqueezeExcitation(512))
        self.out_features = 512
        self.spatial = True
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(x))


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Kaiming (fan-out) convolutions, Xavier linear, BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def load_torchvision_state_dict(model: ResNet, path: str | Path) -> list[str]:
    """Load a local torchvision-layout ResNet state dict (``conv1.weight``, ``layer1.0.conv1...``,
    ``layer1.0.downsample.0.weight``); ``fc.*`` is ignored. A conv1 with another channel count is
    adapted by averaging over input channels (e.g. RGB weights for a 1-channel spectrogram).

    Returns the keys of ``model`` that the file did not provide. Never unpickles code.
    """
    path = Path(local_checkpoint(path, "pretrained weights file"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise checkpoint_error(path, err, "weights") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{str(path)!r} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    if isinstance(w, Tensor) and w.shape[1] != model.in_channels:
        state["conv1.weight"] = w.mean(dim=1, keepdim=True).repeat(1, model.in_channels, 1, 1)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ConfigError(
            f"weights in {str(path)!r} do not fit: {bad[0]} has shape "
            f"{tuple(state[bad[0]].shape)}, the model {tuple(own[bad[0]].shape)}"
        )
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"{str(path)!r} has key {unknown[0]!r}, not a torchvision ResNet key")
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys)


def _channels(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) not in (3, 4):
        raise ConfigError(
            f"a ResNet encoder needs inputs (C, H, W) or (T, C, H, W); got {input_shape}"
        )
    return int(input_shape[-3])


@ENCODERS.register("resnet")
def resnet(
    input_shape: tuple[int, ...],
    layers: Sequence[int] = (2, 2, 2, 2),
    weights: str | None = None,
    block: str = "basic",
    width: int = 64,
) -> ResNet:
    """ResNet (default ResNet-18 layout); ``layers=[3,4,6,3]`` for the authors' AV backbone,
    ``block="bottleneck"`` with [3,4,6,3] for ResNet-50; ``width`` scales every stage."""
    model = ResNet(_channels(input_shape), layers, block, width)
    if weights:
        load_torchvision_state_dict(model, weights)
    return model


@ENCODERS.register("resnet18")
def resnet18(input_shape: tuple[int, ...], weights: str | None = None) -> ResNet:
    return resnet(input_shape, (2, 2, 2, 2), weights)


@ENCODERS.register("resnet34")
def resnet34(input_shape: tuple[int, ...], weights: str | None = None) -> ResNet:
    return resnet(input_shape, (3, 4, 6, 3), weights)


@ENCODERS.register("se_resnet_stem")
def se_resnet_stem(input_shape: tuple[int, ...], layers: Sequence[int] = (2, 2)) -> SEResNetStem:
    """CASIA-SURF stem: a (B, 128, H/8, W/8) map per modality for mid-level fusion."""
    return SEResNetStem(_channels(input_shape), layers)


@TRUNKS.register("resnet_trunk")
def resnet_trunk(in_channels: int, layers: Sequence[int] = (2, 2)) -> ResNetTrunk:
    return ResNetTrunk(in_channels, layers)
