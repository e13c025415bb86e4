"""DCNv2 (modulated deformable conv) against an independent float64 NumPy implementation.

The reference below follows the sampling rule directly (explicit loops over output pixels and taps,
offsets read as interleaved (dy, dx) per tap k = i*kw + j, bilinear with zeros outside the map) and
shares no code with the module under test.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.modeling.deform_conv import (
    ModulatedDeformConv,
    ModulatedDeformConvWithOff,
    deform_conv_export_mode,
    get_deform_conv_export_mode,
    grid_sample_fp32_node_names,
    modulated_deform_conv2d,
    onnx_deformconv_translation_table,
    register_onnx_deformconv_symbolic,
)

Array = np.ndarray


def bilinear_zero_outside(img: Array, py: float, px: float) -> Array:
    """img C×H×W sampled at (py, px); every neighbour outside the map counts as 0."""
    _, h, w = img.shape
    y0, x0 = math.floor(py), math.floor(px)
    value = np.zeros(img.shape[0])
    for yy, wy in ((y0, 1.0 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1.0 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * img[:, yy, xx]
    return value


def numpy_dcn(
    x: Array,
    offset: Array,
    mask: Array,
    weight: Array,
    bias: Array | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Array:
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for y in range(ho):
            for xo in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        py = y * stride[0] - padding[0] + i * dilation[0] + offset[b, 2 * k, y, xo]
                        px = xo * stride[1] - padding[1] + j * dilation[1] + offset[b, 2 * k + 1, y, xo]
                        value = bilinear_zero_outside(x[b], py, px) * mask[b, k, y, xo]
                        out[b, :, y, xo] += weight[:, :, i, j] @ value
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# (n, c, h, w, o, (kh, kw), stride, padding, dilation, offset std, integer offsets)
Case = tuple[
    int, int, int, int, int, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], float, bool
]
CASES: list[Case] = [
    (1, 3, 5, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    (2, 2, 6, 7, 3, (2, 3), (2, 2), (2, 2), (2, 2), 3.0, False),
    (1, 2, 7, 5, 3, (3, 3), (2, 1), (0, 1), (1, 2), 2.0, False),
    (2, 3, 5, 5, 2, (2, 3), (1, 2), (1, 0), (2, 1), 1.5, False),
    (1, 2, 6, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 2.0, True),
    (2, 2, 5, 4, 3, (2, 3), (2, 1), (2, 1), (1, 1), 3.0, True),
    (1, 2, 1, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),  # H == 1 (P7 of a small image)
    (2, 2, 5, 1, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),  # W == 1
    (1, 3, 1, 1, 2, (3, 3), (1, 1), (1, 1), (1, 1), 0.7, False),  # H == W == 1
]


def make_inputs(case: Case, seed: int) -> tuple[Array, Array, Array, Array, Array]:
    n, c, h, w, o, (kh, kw), s, p, d, std, integer = case
    rng = np.random.default_rng(seed)
    ho, wo = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
    x = rng.standard_normal((n, c, h, w))
    offset = rng.standard_normal((n, 2 * kh * kw, ho, wo)) * std
    if integer:
        offset = np.round(offset)
    mask = rng.uniform(0.05, 1.0, (n, kh * kw, ho, wo))
    weight = rng.standard_normal((o, c, kh, kw))
    bias = rng.standard_normal(o)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("index", range(len(CASES)))
def test_matches_numpy_reference(index: int) -> None:
    case = CASES[index]
    *_, s, p, d, _std, _integer = case
    x, offset, mask, weight, bias = make_inputs(case, seed=index)
    expected = numpy_dcn(x, offset, mask, weight, bias, s, p, d)
    t = torch.from_numpy
    got64 = modulated_deform_conv2d(t(x), t(offset), t(mask), t(weight), t(bias), s, p, d)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=0, atol=1e-10)
    # float32 (the deployed precision): the grid normalisation costs a few ulp of position only.
    x32, offset32, mask32, weight32, bias32 = (
        t(a.astype(np.float32)) for a in (x, offset, mask, weight, bias)
    )
    got32 = modulated_deform_conv2d(x32, offset32, mask32, weight32, bias32, s, p, d)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_reading_offsets_as_dx_dy_would_differ() -> None:
    """Guards the (dy, dx) order: swapping the pair changes the result (so the tests above bite)."""
    case = CASES[0]
    x, offset, mask, weight, bias = make_inputs(case, seed=7)
    swapped = offset.reshape(1, 9, 2, *offset.shape[2:])[:, :, ::-1].reshape(offset.shape)
    t = torch.from_numpy
    got = modulated_deform_conv2d(t(x), t(offset), t(mask), t(weight), t(bias), 1, 1, 1).numpy()
    wrong = numpy_dcn(x, np.ascontiguousarray(swapped), mask, weight, bias, (1, 1), (1, 1), (1, 1))
    assert np.abs(got - wrong).max() > 0.1


def test_border_points_hand_computed() -> None:
    """1×1 kernel, weight 1, mask 1: the output is the sampled value itself.

    Map 1×1×3×4 with x[r, c] = 10*(r+1) + (c+1). Sample points (py, px), one per output pixel:
    exactly on the first/last row and column (pixel value), between the last row and outside
    ((H - py) * x[H-1]), between -1 and 0 ((py + 1) * x[0]), and at/after -1 or H (zero).
    """
    h, w = 3, 4
    img = np.array([[10.0 * (r + 1) + (c + 1) for c in range(w)] for r in range(h)])
    points_and_values = [
        ((0.0, 0.0), img[0, 0]),
        ((2.0, 3.0), img[2, 3]),
        ((2.0, 1.5), 0.5 * img[2, 1] + 0.5 * img[2, 2]),
        ((2.25, 1.0), 0.75 * img[2, 1]),  # H-1 < py < H fades to 0
        ((-0.5, 2.0), 0.5 * img[0, 2]),  # -1 < py < 0
        ((1.0, 3.5), 0.5 * img[1, 3]),  # W-1 < px < W
        ((1.0, -0.25), 0.75 * img[1, 0]),  # -1 < px < 0
        ((-1.0, 1.0), 0.0),  # exactly -1: outside
        ((3.0, 1.0), 0.0),  # exactly H: outside
        ((1.0, 4.0), 0.0),  # exactly W: outside
        ((-1.5, -2.0), 0.0),
        ((2.5, 3.5), 0.25 * img[2, 3]),  # both fading
    ]
    x = torch.from_numpy(img[None, None])
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    # 12 points on the 3×4 output grid (1×1 kernel, stride 1, pad 0): base point of output (r, c) is (r, c).
    off = np.zeros((1, 2, h, w))
    expected = np.zeros((h, w))
    for q, ((py, px), value) in enumerate(points_and_values):
        r, c = divmod(q, w)
        off[0, 0, r, c] = py - r
        off[0, 1, r, c] = px - c
        expected[r, c] = value
    got = modulated_deform_conv2d(
        x, torch.from_numpy(off), torch.ones(1, 1, h, w, dtype=torch.float64), weight, None, 1, 0, 1
    )
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        numpy_dcn(
            img[None, None], off, np.ones((1, 1, h, w)), np.ones((1, 1, 1, 1)), None, (1, 1), (0, 0), (1, 1)
        )[0, 0],
        expected,
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [((3, 3), 1, 1, 1), ((2, 3), 2, 2, 1), ((3, 3), (1, 2), 0, 2), ((3, 2), 1, (2, 1), (2, 1))],
)
def test_zero_offsets_and_unit_mask_equal_conv2d(
    kernel: tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 9, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 5, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation)
    kk = kernel[0] * kernel[1]
    ho, wo = expected.shape[2:]
    offset = torch.zeros(2, 2 * kk, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, kk, ho, wo, dtype=torch.float64)
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-11)


def test_shape_errors() -> None:
    x = torch.randn(1, 4, 5, 5)
    weight = torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match="offset shape"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 4, 5), torch.ones(1, 9, 5, 5), weight)
    with pytest.raises(ValueError, match="mask shape"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 18, 5, 5), weight)
    with pytest.raises(ValueError, match="input channels"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5), torch.randn(3, 2, 3, 3))


def test_position_head_unit_state_dict_keys() -> None:
    unit = ModulatedDeformConvWithOff(
        64, 64, 3, 1, 1, 1, bias=False, norm=nn.GroupNorm(32, 64), activation=F.relu
    )
    shapes = {k: tuple(v.shape) for k, v in unit.state_dict().items()}
    assert shapes == {
        "offset_mask_conv.weight": (27, 64, 3, 3),
        "offset_mask_conv.bias": (27,),
        "dcnv2.weight": (64, 64, 3, 3),
        "dcnv2.norm.weight": (64,),
        "dcnv2.norm.bias": (64,),
    }
    with_bias = ModulatedDeformConv(8, 16, (2, 3), bias=True)
    assert {k: tuple(v.shape) for k, v in with_bias.state_dict().items()} == {
        "weight": (16, 8, 2, 3),
        "bias": (16,),
    }


def test_position_head_unit_forward_layout() -> None:
    """Module = offset conv → t[:, :18] as (dy, dx) per tap, sigmoid(t[:, 18:]) → DCN → GN → ReLU."""
    torch.manual_seed(0)
    unit = ModulatedDeformConvWithOff(4, 6, 3, norm=nn.GroupNorm(2, 6), activation=F.relu).double().eval()
    with torch.no_grad():
        unit.offset_mask_conv.weight.mul_(8.0)  # offsets of a few pixels
        assert unit.offset_mask_conv.bias is not None
        unit.offset_mask_conv.bias.normal_()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    t = F.conv2d(x, unit.offset_mask_conv.weight, unit.offset_mask_conv.bias, 1, 1).detach().numpy()
    assert np.abs(t[:, :18]).mean() > 0.5
    mask = 1.0 / (1.0 + np.exp(-t[:, 18:]))
    dcn = numpy_dcn(
        x.numpy(), t[:, :18], mask, unit.dcnv2.weight.detach().numpy(), None, (1, 1), (1, 1), (1, 1)
    )
    assert unit.dcnv2.norm is not None
    expected = F.relu(unit.dcnv2.norm(torch.from_numpy(dcn))).detach().numpy()
    with torch.no_grad():
        got = unit(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_export_mode_switch() -> None:
    assert get_deform_conv_export_mode() == "grid_sample"
    with deform_conv_export_mode("onnx_deformconv"):
        assert get_deform_conv_export_mode() == "onnx_deformconv"
        # Eager execution of the custom op gives the same numbers.
        case = CASES[1]
        x, offset, mask, weight, bias = (torch.from_numpy(a) for a in make_inputs(case, seed=11))
        got = modulated_deform_conv2d(x, offset, mask, weight, bias, (2, 2), (2, 2), (2, 2))
    assert get_deform_conv_export_mode() == "grid_sample"
    expected = numpy_dcn(
        x.numpy(), offset.numpy(), mask.numpy(), weight.numpy(), bias.numpy(), (2, 2), (2, 2), (2, 2)
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="export mode"), deform_conv_export_mode("deform"):  # type: ignore[arg-type]
        pass
    assert get_deform_conv_export_mode() == "grid_sample"


@pytest.mark.parametrize(
    ("mode", "opset", "dynamo", "size"),
    [
        ("grid_sample", 18, True, (7, 9)),
        ("grid_sample", 17, False, (1, 5)),
        ("onnx_deformconv", 19, True, (7, 9)),
        ("onnx_deformconv", 19, False, (1, 5)),
    ],
)
def test_onnx_export_runs_in_onnxruntime(
    tmp_path: Path, mode: str, opset: int, dynamo: bool, size: tuple[int, int]
) -> None:
    torch.manual_seed(1)
    unit = ModulatedDeformConvWithOff(8, 16, 3, norm=nn.GroupNorm(4, 16), activation=F.relu).eval()
    with torch.no_grad():
        unit.offset_mask_conv.weight.mul_(10.0)
    x = torch.randn(1, 8, *size)
    with torch.no_grad():
        expected = unit(x).numpy()
        offsets = unit.offset_mask_conv(x)[:, :18]
    assert offsets.abs().mean() > 0.3  # the sampling is really deformed
    path = tmp_path / f"dcn_{mode}_{opset}.onnx"
    kwargs: dict[str, Any] = {}
    if mode == "onnx_deformconv":
        if dynamo:
            kwargs["custom_translation_table"] = onnx_deformconv_translation_table()
        else:
            register_onnx_deformconv_symbolic(opset)
    with warnings.catch_warnings(), deform_conv_export_mode(mode):  # type: ignore[arg-type]
        warnings.simplefilter("ignore")
        torch.onnx.export(
            unit,
            (x,),
            str(path),
            dynamo=dynamo,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            **kwargs,
        )
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    if mode == "grid_sample":
        assert "GridSample" in ops
        assert "DeformConv" not in ops
        # The FP32 island for FP16 models: GridSample and the grid arithmetic, nothing of the convs/norm.
        by_name = {node.name: node for node in model.graph.node}
        kept = {by_name[name].op_type for name in grid_sample_fp32_node_names(model)}
        assert {"GridSample", "Mul", "Add"} <= kept
        assert not kept & {"Conv", "Pad", "Sigmoid", "InstanceNormalization", "Relu"}
    else:
        assert "DeformConv" in ops
        assert "GridSample" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
