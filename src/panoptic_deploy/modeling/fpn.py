"""Feature pyramid (detectron2 FPN, ``norm=""``, sum fusion) with PanopticFCN's P6/P7-from-P5 top block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.modeling.layers import Conv2d
from panoptic_deploy.modeling.resnet import ResNet


class LastLevelP6P7(nn.Module):
    """P6 = conv3×3/2(P5); P7 = conv3×3/2(ReLU(P6)); P6 is returned without ReLU.

    The input is the FPN output P5 (256 channels), not res5.
    """

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, p5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return p6, p7


class FPN(nn.Module):
    """ResNet ``bottom_up`` + lateral/output convs + top block.

    Input N×3×H×W (H, W multiples of 32); output ``{"p2": /4, ..., "p7": /128}``, all 256 channels.
    Module names (``fpn_lateral{i}``, ``fpn_output{i}``, ``top_block``) equal the checkpoint keys.
    """

    def __init__(self, bottom_up: ResNet, out_channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.in_levels = (2, 3, 4, 5)
        for level in self.in_levels:
            in_channels = bottom_up.out_channels[f"res{level}"]
            self.add_module(f"fpn_lateral{level}", Conv2d(in_channels, out_channels, 1))
            self.add_module(f"fpn_output{level}", Conv2d(out_channels, out_channels, 3, padding=1))
        self.top_block = LastLevelP6P7(out_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        outputs: dict[str, torch.Tensor] = {}
        top_down: torch.Tensor | None = None
        for level in reversed(self.in_levels):
            lateral = getattr(self, f"fpn_lateral{level}")(bottom_up[f"res{level}"])
            # The pre-output-conv sum (not p_i) propagates downwards; sizes match since H, W % 32 == 0.
            top_down = (
                lateral
                if top_down is None
                else lateral + F.interpolate(top_down, scale_factor=2.0, mode="nearest")
            )
            outputs[f"p{level}"] = getattr(self, f"fpn_output{level}")(top_down)
        outputs["p6"], outputs["p7"] = self.top_block(outputs["p5"])
        return {name: outputs[name] for name in ("p2", "p3", "p4", "p5", "p6", "p7")}
