"""Small building blocks shared by the backbone and the heads (detectron2 conventions)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel; the stored
    ``running_var`` is used as is (detectron2 checkpoints of version >= 3 carry no eps correction).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Folded into one per-channel affine map, as detectron2 does; exports as Mul + Add.
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` child and an optional activation.

    The norm is a child module so that its parameters are named ``<conv>.norm.*`` as in detectron2
    checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def group_norm(channels: int) -> nn.GroupNorm:
    """GN(C) of the PanopticFCN heads: 32 groups, eps 1e-5, affine."""
    return nn.GroupNorm(32, channels, eps=1e-5)


def add_coords(x: torch.Tensor) -> torch.Tensor:
    """Append CoordConv channels: N×C×H×W -> N×(C+2)×H×W.

    Channel C is ``linspace(-1, 1, H)`` along the height (rows), channel C+1 ``linspace(-1, 1, W)``
    along the width, both over the whole (padded) map; the pretrained weights depend on this order.
    """
    n, _, h, w = x.shape
    rows = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
    cols = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
    grid_y = rows.view(1, 1, h, 1).expand(n, 1, h, w)
    grid_x = cols.view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, grid_y, grid_x], dim=1)
