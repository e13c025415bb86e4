"""Modulated deformable convolution (DCNv2) in plain PyTorch, exportable to ONNX.

Layout (detectron2 / torchvision / ONNX ``DeformConv``): for kernel tap ``k = i*kw + j``,
``offset[:, 2k]`` is the row offset ``dy`` and ``offset[:, 2k+1]`` the column offset ``dx``;
``mask[:, k]`` scales that tap. Output pixel (y, x) samples the input at
``py = y*stride - pad + i*dil + dy``, ``px = x*stride - pad + j*dil + dx`` (pixel centres at
integers), bilinearly, with every pixel outside the map counting as zero.

Two graph forms are available when exporting (see ``deform_conv_export_mode``):

- ``"grid_sample"`` (default): Pad + one GridSample for all taps + Mul + one 1×1 Conv. Runs
  everywhere that has GridSample (ONNX opset ≥ 16; TensorRT ≥ 8.5; ONNX Runtime).
- ``"onnx_deformconv"``: one ONNX ``DeformConv`` node (opset ≥ 19). ONNX Runtime ≥ 1.32 CPU and
  TensorRT ≥ 10.1 (through its bundled plugin) run it. Exporting it needs
  ``onnx_deformconv_translation_table()`` (dynamo) or ``register_onnx_deformconv_symbolic()``
  (legacy TorchScript exporter).

Eager PyTorch always computes the grid_sample form; the mode only changes what export records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ExportMode",
    "ModulatedDeformConv",
    "ModulatedDeformConvWithOff",
    "deform_conv_export_mode",
    "get_deform_conv_export_mode",
    "grid_sample_fp32_node_names",
    "modulated_deform_conv2d",
    "onnx_deformconv_translation_table",
    "register_onnx_deformconv_symbolic",
]

ExportMode = Literal["grid_sample", "onnx_deformconv"]
_EXPORT_MODES: tuple[ExportMode, ...] = ("grid_sample", "onnx_deformconv")
_export_mode: ExportMode = "grid_sample"

# Smallest opset with the ONNX DeformConv operator.
DEFORMCONV_MIN_OPSET = 19


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (int(v[0]), int(v[1]))


def _check_shapes(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """Validate shapes (these are programming errors, not user input) and return (Ho, Wo)."""
    n, c, h, w = x.shape
    _, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight has {c_w} input channels, x has {c} (groups=1 only)")
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if tuple(offset.shape) != (n, 2 * kh * kw, ho, wo):
        raise ValueError(f"offset shape {tuple(offset.shape)} != {(n, 2 * kh * kw, ho, wo)}")
    if tuple(mask.shape) != (n, kh * kw, ho, wo):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {(n, kh * kw, ho, wo)}")
    return ho, wo


def _deform_conv_grid_sample(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """DCNv2 as Pad → GridSample (all taps at once) → Mul(mask) → 1×1 Conv.

    x N×C×H×W, offset N×2K×Ho×Wo, mask N×K×Ho×Wo, weight O×C×kh×kw → N×O×Ho×Wo (K = kh·kw).
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = _check_shapes(x, offset, mask, weight, stride, padding, dilation)
    k = kh * kw
    # Zero-pad by one pixel: bilinear sampling of the padded map with align_corners=True is exactly
    # the "zeros outside" rule (a point in (-1, 0) fades linearly to 0, a point <= -1 is 0), and the
    # padded map is at least 3 px, so maps with H or W == 1 (p6/p7 of small images) work too.
    x_pad = F.pad(x, (1, 1, 1, 1))
    # Normalised grid coordinate g = 2*p'/(size_pad - 1) - 1 with p' = p + 1 and size_pad = size + 2.
    scale_y = 2.0 / (h + 1)
    scale_x = 2.0 / (w + 1)
    # Base point of output (y, x) and tap k = i*kw + j is (y*stride - pad + i*dil, x*stride - pad + j*dil)
    # in the unpadded map, +1 in the padded one. Built from Python floats so that both exporters
    # record it as a constant (no Range/Tile/Expand in the graph) and it is exact before the cast.
    base_gy = torch.tensor(
        [
            [(yo * stride[0] - padding[0] + i * dilation[0] + 1) * scale_y - 1.0 for yo in range(ho)]
            for i in range(kh)
            for _ in range(kw)
        ],
        dtype=offset.dtype,
        device=offset.device,
    )  # K×Ho
    base_gx = torch.tensor(
        [
            [(xo * stride[1] - padding[1] + j * dilation[1] + 1) * scale_x - 1.0 for xo in range(wo)]
            for _ in range(kh)
            for j in range(kw)
        ],
        dtype=offset.dtype,
        device=offset.device,
    )  # K×Wo
    off = offset.reshape(n, k, 2, ho, wo)
    gy = off[:, :, 0] * scale_y + base_gy[None, :, :, None]  # N×K×Ho×Wo
    gx = off[:, :, 1] * scale_x + base_gx[None, :, None, :]  # N×K×Ho×Wo
    # grid_sample wants (x, y) in the last axis; stacking all taps along the output height gives one
    # call producing N×C×(K·Ho)×Wo, which reshapes to N×C×K×Ho×Wo without a transpose.
    grid = torch.stack((gx, gy), dim=-1).reshape(n, k * ho, wo, 2)
    cols = F.grid_sample(x_pad, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    cols = cols.reshape(n, c, k, ho, wo) * mask.reshape(n, 1, k, ho, wo)
    # Channel index c*K + k matches weight.reshape(O, C*K): one 1×1 conv does the weighted sum.
    return F.conv2d(cols.reshape(n, c * k, ho, wo), weight.reshape(o, c * k, 1, 1), bias)


# Custom op used only in "onnx_deformconv" mode: eager/fake execution is the grid_sample form, and the
# exporters replace it by one ONNX DeformConv node.
@torch.library.custom_op("panoptic_deploy::modulated_deform_conv2d", mutates_args=())
def _deform_conv_op(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> Tensor:
    return _deform_conv_grid_sample(
        x,
        offset,
        mask,
        weight,
        bias,
        (stride[0], stride[1]),
        (padding[0], padding[1]),
        (dilation[0], dilation[1]),
    )


@_deform_conv_op.register_fake
def _deform_conv_op_fake(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Modulated deformable conv (DCNv2), groups = deformable_groups = 1.

    x N×C×H×W, offset N×(2·kh·kw)×Ho×Wo interleaved (dy, dx) per tap, mask N×(kh·kw)×Ho×Wo
    (already sigmoid-ed), weight O×C×kh×kw, bias O or None → N×O×Ho×Wo.
    """
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if _export_mode == "onnx_deformconv":
        _check_shapes(x, offset, mask, weight, s, p, d)
        out: Tensor = torch.ops.panoptic_deploy.modulated_deform_conv2d(
            x, offset, mask, weight, bias, list(s), list(p), list(d)
        )
        return out
    return _deform_conv_grid_sample(x, offset, mask, weight, bias, s, p, d)


def get_deform_conv_export_mode() -> ExportMode:
    """The graph form ``modulated_deform_conv2d`` records when traced for export."""
    return _export_mode


@contextlib.contextmanager
def deform_conv_export_mode(mode: ExportMode) -> Iterator[None]:
    """Select the exported form of every DCNv2 inside the block (restored on exit).

    ``"onnx_deformconv"`` needs opset ≥ 19 and the translation table / symbolic of this module.
    """
    global _export_mode  # noqa: PLW0603 -- a process-wide switch is the point of this context manager
    if mode not in _EXPORT_MODES:
        raise ValueError(f"deform conv export mode must be one of {_EXPORT_MODES}, got {mode!r}")
    previous = _export_mode
    _export_mode = mode
    try:
        yield
    finally:
        _export_mode = previous


def onnx_deformconv_translation_table() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True, opset_version>=19)``."""
    # Imported here: onnxscript is needed only for a dynamo export.
    from onnxscript import opset19 as op

    def deform_conv(
        x: Any,
        offset: Any,
        mask: Any,
        weight: Any,
        bias: Any,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
    ) -> Any:
        kh, kw = weight.shape[2], weight.shape[3]
        return op.DeformConv(
            x,
            weight,
            offset,
            bias,
            mask,
            dilations=list(dilation),
            group=1,
            kernel_shape=[int(kh), int(kw)],
            offset_group=1,
            pads=[padding[0], padding[1], padding[0], padding[1]],
            strides=list(stride),
        )

    return {torch.ops.panoptic_deploy.modulated_deform_conv2d.default: deform_conv}


def register_onnx_deformconv_symbolic(opset_version: int = DEFORMCONV_MIN_OPSET) -> None:
    """Register the DeformConv symbolic for the legacy exporter (``dynamo=False``, opset ≥ 19)."""
    # Legacy-exporter API: still present in torch 2.13 but no longer listed in torch.onnx.__all__.
    from torch.onnx import (  # type: ignore[attr-defined]
        register_custom_op_symbolic,
        symbolic_helper,
    )

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "is", "is", "is")
    def symbolic(
        g: Any,
        x: Any,
        offset: Any,
        mask: Any,
        weight: Any,
        bias: Any,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
    ) -> Any:
        kernel = symbolic_helper._get_tensor_sizes(weight)[2:]
        if symbolic_helper._is_none(bias):
            # An omitted optional input cannot be expressed here; a zero bias is the same thing.
            out_channels = symbolic_helper._get_tensor_sizes(weight)[0]
            bias = g.op("Constant", value_t=torch.zeros(out_channels))
        return g.op(
            "DeformConv",
            x,
            weight,
            offset,
            bias,
            mask,
            dilations_i=dilation,
            group_i=1,
            kernel_shape_i=kernel,
            offset_group_i=1,
            pads_i=[padding[0], padding[1], padding[0], padding[1]],
            strides_i=stride,
        )

    register_custom_op_symbolic("panoptic_deploy::modulated_deform_conv2d", symbolic, opset_version)


def grid_sample_fp32_node_names(model: Any) -> list[str]:
    """Names of the nodes that must stay FP32 in an FP16 model: every GridSample and its grid's producers.

    ``model`` is an ``onnx.ModelProto``. The grid holds normalised coordinates in [-1, 1]; in FP16 they
    carry only ~2^-11 absolute precision, i.e. (W+1)/2 · 2^-11 px of position error (0.02 px at W = 76),
    which moved DCN outputs by up to 7% of their std on a 52×76 map in a test (FP16 input or offsets: ≤ 0.6%).
    The walk goes from each GridSample's grid input back to, not including, the Conv that predicts the
    offsets (or a graph input / initializer). Pass the result to the FP16 converter's node block list.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    seen: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "GridSample":
            continue
        stack = [node]
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            names.append(current.name)
            inputs = current.input[1:2] if current.op_type == "GridSample" else current.input
            for tensor in inputs:
                parent = producer.get(tensor)
                if parent is not None and parent.op_type != "Conv":
                    stack.append(parent)
    return names


class ModulatedDeformConv(nn.Module):
    """DCNv2 layer with detectron2 Conv2d-wrapper semantics: conv → ``norm`` → ``activation``.

    forward(x N×C×H×W, offset N×2K×Ho×Wo, mask N×K×Ho×Wo) → N×O×Ho×Wo. Parameters: ``weight``
    (O×C×kh×kw), optional ``bias`` (O); optional child ``norm`` (e.g. ``nn.GroupNorm(32, O)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Registered as a child only when given, so the state_dict has ``norm.*`` keys only then.
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, a=1)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        out = modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out


class ModulatedDeformConvWithOff(nn.Module):
    """PanopticFCN's DCNv2 unit: a plain conv predicts offsets and masks, then ``dcnv2`` applies.

    ``t = offset_mask_conv(x)`` (3K channels), ``offset = t[:, :2K]`` (interleaved (dy, dx) per tap;
    the official chunk-into-3 then cat of the first two chunks is this identity),
    ``mask = sigmoid(t[:, 2K:])``. x N×C×H×W → N×O×Ho×Wo. state_dict keys:
    ``offset_mask_conv.{weight,bias}``, ``dcnv2.weight`` (+ ``dcnv2.bias``, ``dcnv2.norm.*``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        self.num_taps = kh * kw
        self.offset_mask_conv = nn.Conv2d(
            in_channels,
            3 * self.num_taps,
            (kh, kw),
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        self.dcnv2 = ModulatedDeformConv(
            in_channels, out_channels, (kh, kw), stride, padding, dilation, bias, norm, activation
        )

    def forward(self, x: Tensor) -> Tensor:
        t = self.offset_mask_conv(x)
        offset = t[:, : 2 * self.num_taps]
        mask = torch.sigmoid(t[:, 2 * self.num_taps :])
        out: Tensor = self.dcnv2(x, offset, mask)
        return out
