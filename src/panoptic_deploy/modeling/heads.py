"""PanopticFCN heads: high-resolution fuser, position head, kernel head, feature encoder, generators."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.modeling.layers import Conv2d, add_coords, group_norm


class SemanticFPN(nn.Module):
    """High-resolution fuser: p2..p5 -> one N×C×H/4×W/4 map.

    Each input of stride s gets ``max(1, log2(s) - log2(4))`` units of conv3×3 (no bias) + GN + ReLU,
    each followed by a ×2 bilinear upsample while s != 4; the branch outputs are summed.
    Sequential indices (``p4.0``, ``p4.2``, ...) equal the checkpoint keys.
    """

    def __init__(
        self,
        in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5"),
        in_strides: tuple[int, ...] = (4, 8, 16, 32),
        in_channels: int = 256,
        channels: int = 256,
        common_stride: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        for name, stride in zip(in_features, in_strides, strict=True):
            ops: list[nn.Module] = []
            num_units = max(1, int(math.log2(stride) - math.log2(common_stride)))
            for unit in range(num_units):
                ops.append(
                    Conv2d(
                        in_channels if unit == 0 else channels,
                        channels,
                        3,
                        padding=1,
                        bias=False,
                        norm=group_norm(channels),
                        activation=F.relu,
                    )
                )
                if stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        fused: torch.Tensor | None = None
        for name in self.in_features:
            branch = getattr(self, name)(features[name])
            fused = branch if fused is None else fused + branch
        assert fused is not None
        return fused


def _tower(
    prefix: str, in_channels: int, channels: int, num_convs: int, norm: bool, deform: bool
) -> nn.Sequential:
    """``num_convs`` × (conv3×3 + [GN] + ReLU); children are named ``{prefix}_head_{k}`` (1-based).

    With ``deform`` each conv is a modulated deformable conv v2 with its own offset/mask conv. Convs have a
    bias exactly when there is no norm, as in the official heads.
    """
    convs: OrderedDict[str, nn.Module] = OrderedDict()
    for k in range(num_convs):
        conv_in = in_channels if k == 0 else channels
        conv_norm = group_norm(channels) if norm else None
        if deform:
            from panoptic_deploy.modeling.deform_conv import ModulatedDeformConvWithOff

            convs[f"{prefix}_head_{k + 1}"] = ModulatedDeformConvWithOff(
                conv_in,
                channels,
                kernel_size=3,
                stride=1,
                padding=1,
                dilation=1,
                bias=not norm,
                norm=conv_norm,
                activation=F.relu,
            )
        else:
            convs[f"{prefix}_head_{k + 1}"] = Conv2d(
                conv_in, channels, 3, padding=1, bias=not norm, norm=conv_norm, activation=F.relu
            )
    return nn.Sequential(convs)


class PositionHead(nn.Module):
    """Shared over p3..p7: N×256×h×w -> (centre logits N×80×h×w, region logits N×54×h×w).

    The tower is plain conv (nodeform) or modulated deformable conv v2 (every released checkpoint).
    """

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 256,
        num_convs: int = 3,
        num_thing_classes: int = 80,
        num_stuff_classes: int = 54,
        coord: bool = False,
        norm: bool = True,
        deform: bool = True,
    ) -> None:
        super().__init__()
        self.coord = coord
        self.position_head = _tower(
            "position_head", in_channels + 2 * coord, channels, num_convs, norm=norm, deform=deform
        )
        self.out_inst = nn.Conv2d(channels, num_thing_classes, 3, padding=1)
        self.out_sem = nn.Conv2d(channels, num_stuff_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.position_head(add_coords(x) if self.coord else x)
        return self.out_inst(x), self.out_sem(x)


class KernelHead(nn.Module):
    """Shared over p3..p7: N×256×h×w (+2 coordinate channels) -> kernel features N×256×h×w."""

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 256,
        num_convs: int = 3,
        coord: bool = True,
        norm: bool = True,
        deform: bool = False,
    ) -> None:
        super().__init__()
        self.coord = coord
        self.kernel_head = _tower(
            "kernel_head", in_channels + 2 * coord, channels, num_convs, norm=norm, deform=deform
        )
        self.out_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels: torch.Tensor = self.out_conv(self.kernel_head(add_coords(x) if self.coord else x))
        return kernels


class FeatureEncoder(nn.Module):
    """Fuser output N×256×H/4×W/4 (+2 coordinate channels) -> encoded feature E, N×64×H/4×W/4, E >= 0."""

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 64,
        num_convs: int = 3,
        coord: bool = True,
        norm: bool = False,
        deform: bool = False,
    ) -> None:
        super().__init__()
        self.coord = coord
        self.encode_head = _tower(
            "encode_head", in_channels + 2 * coord, channels, num_convs, norm=norm, deform=deform
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded: torch.Tensor = self.encode_head(add_coords(x) if self.coord else x)
        return encoded


class KernelGenerator(nn.Module):
    """1×1 conv ``embed_extractor`` (256 -> 64) applied to gathered kernel-feature vectors.

    Input N×256 vectors, output N×64 dynamic kernels (an affine map; the conv weight is used as a matrix).
    """

    def __init__(self, in_channels: int = 256, channels: int = 64) -> None:
        super().__init__()
        self.embed_extractor = nn.Conv2d(in_channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.embed_extractor.weight.flatten(1)
        return F.linear(features, weight, self.embed_extractor.bias)
