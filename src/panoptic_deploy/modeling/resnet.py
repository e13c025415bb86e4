"""ResNet-50 in detectron2's MSRA flavour: FrozenBN, stride in the first 1×1 conv, no classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.modeling.layers import Conv2d, FrozenBatchNorm2d


class BasicStem(nn.Module):
    """conv 7×7/2 (3→64) + FrozenBN + ReLU + max-pool 3×3/2: N×3×H×W -> N×64×H/4×W/4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            7,
            stride=2,
            padding=3,
            bias=False,
            norm=FrozenBatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1×1 (stride s) → 3×3 → 1×1 with a projection shortcut when the width changes.

    N×Cin×H×W -> N×Cout×H/s×W/s; output = ReLU(conv3 + shortcut).
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut: Conv2d | None = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, stride=stride, bias=False, norm=FrozenBatchNorm2d(out_channels)
            )
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            1,
            stride=stride,
            bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            3,
            padding=1,
            bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, 1, bias=False, norm=FrozenBatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem + stages res2..res5; returns ``{"res2": /4, "res3": /8, "res4": /16, "res5": /32}``.

    Channel widths for depth 50: res2 256, res3 512, res4 1024, res5 2048.
    """

    def __init__(
        self,
        stage_blocks: tuple[int, ...] = (3, 4, 6, 3),
        stem_channels: int = 64,
        res2_channels: int = 256,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.stem = BasicStem(3, stem_channels)
        self.stage_names: list[str] = []
        self.out_channels: dict[str, int] = {}
        in_channels = stem_channels
        out_channels = res2_channels
        bottleneck = width_per_group
        for index, num_blocks in enumerate(stage_blocks):
            name = f"res{index + 2}"
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                blocks.append(BottleneckBlock(in_channels, bottleneck, out_channels, stride))
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.out_channels[name] = out_channels
            out_channels *= 2
            bottleneck *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        return features


RESNET_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
