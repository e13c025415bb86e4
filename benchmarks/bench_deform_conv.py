"""Latency of the DCNv2 graph forms on ONNX Runtime CPU (and eager PyTorch), position-head sizes.

Forms, each a 256→256 3×3 modulated deformable conv (stride 1, pad 1, no bias) with inputs
(x, offset, mask):
- ``grid_sample``: the default export of ``modulated_deform_conv2d`` (Pad + one GridSample for all
  9 taps + Mul + one 1×1 Conv);
- ``grid_sample_loop``: the same maths as a Python loop of 9 (GridSample + Mul + 1×1 Conv), summed;
- ``gather``: gather-based bilinear (4 row Gathers from the padded map, weighted sum, one MatMul);
- ``onnx_deformconv``: one ONNX DeformConv node (opset 19);
- ``plain_conv``: a plain 3×3 Conv of the same size (the nodeform tower conv), for scale.

Rounds are interleaved (every form once per round) and the median per form is reported. ONNX Runtime
and eager PyTorch are timed in separate phases: their thread pools spin and would slow each other.
Usage: python benchmarks/bench_deform_conv.py [--rounds 15] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panoptic_deploy.modeling.deform_conv import (
    deform_conv_export_mode,
    modulated_deform_conv2d,
    onnx_deformconv_translation_table,
)

# Position-head input sizes (P3..P7) for a 400×600 image padded to 416×608.
LEVELS = {"p3": (52, 76), "p4": (26, 38), "p5": (13, 19), "p6": (7, 10), "p7": (4, 5)}
CHANNELS = 256


class DeformLayer(nn.Module):
    """One DCNv2 conv, forward(x, offset, mask)."""

    def __init__(self, weight: Tensor, form: str = "grid_sample") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.form = form

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        if self.form == "gather":
            return gather_deform_conv(x, offset, mask, self.weight)
        if self.form != "grid_sample_loop":
            return modulated_deform_conv2d(x, offset, mask, self.weight, None, 1, 1, 1)
        # Same sampling rule, one tap at a time (stride 1, pad 1, dil 1, so Ho = H, Wo = W).
        n, _, h, w = x.shape
        x_pad = F.pad(x, (1, 1, 1, 1))
        ys = torch.arange(h, dtype=x.dtype).view(1, h, 1)
        xs = torch.arange(w, dtype=x.dtype).view(1, 1, w)
        out = x.new_zeros((n, self.weight.shape[0], h, w))
        for i in range(3):
            for j in range(3):
                k = 3 * i + j
                py = ys + i + offset[:, 2 * k]  # padded-map row: y - 1 + i + dy + 1
                px = xs + j + offset[:, 2 * k + 1]
                grid = torch.stack((px * (2.0 / (w + 1)) - 1.0, py * (2.0 / (h + 1)) - 1.0), dim=-1)
                tap = F.grid_sample(x_pad, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
                out = out + F.conv2d(tap * mask[:, k : k + 1], self.weight[:, :, i : i + 1, j : j + 1])
        return out


def gather_deform_conv(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """Gather-based bilinear DCNv2 (stride 1, pad 1, dil 1, 3×3), positions-major layout."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    hp, wp = h + 2, w + 2
    # Base point in the 1-px zero-padded map for (y, x, k): (y + i, x + j).
    base_y = torch.tensor([[[float(y + i) for i in range(3) for _ in range(3)]] for y in range(h)])  # H×1×9
    base_x = torch.tensor([[[float(x_ + j) for _ in range(3) for j in range(3)] for x_ in range(w)]])  # 1×W×9
    off = offset.reshape(n, 9, 2, h, w).permute(0, 3, 4, 1, 2)  # N×H×W×9×2
    # Clamping to the padded border is exact: the border rows/columns are zero.
    py = (off[..., 0] + base_y).clamp(0, hp - 1)
    px = (off[..., 1] + base_x).clamp(0, wp - 1)
    y0 = py.floor().clamp(max=hp - 2)
    x0 = px.floor().clamp(max=wp - 2)
    fy, fx = py - y0, px - x0
    idx = (y0 * wp + x0).to(torch.int64) + (torch.arange(n) * (hp * wp)).view(n, 1, 1, 1)
    idx = idx.reshape(-1)
    table = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(n * hp * wp, c)
    m = mask.permute(0, 2, 3, 1)  # N×H×W×9
    cols = (
        table[idx] * ((1 - fy) * (1 - fx) * m).reshape(-1, 1)
        + table[idx + 1] * ((1 - fy) * fx * m).reshape(-1, 1)
        + table[idx + wp] * (fy * (1 - fx) * m).reshape(-1, 1)
        + table[idx + wp + 1] * (fy * fx * m).reshape(-1, 1)
    ).reshape(n, h * w, 9 * c)
    out = torch.matmul(cols, weight.permute(0, 2, 3, 1).reshape(o, 9 * c).t())  # N×HW×O
    return out.transpose(1, 2).reshape(n, o, h, w)


class PlainConv(nn.Module):
    """Plain 3×3 conv with the same weight; ignores offset and mask (kept as inputs for uniformity)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, 1, 1) + 0.0 * (offset.sum() + mask.sum())


def export(module: nn.Module, inputs: tuple[Tensor, ...], path: Path, mode: str) -> None:
    kwargs: dict[str, Any] = {}
    if mode == "onnx_deformconv":
        kwargs["custom_translation_table"] = onnx_deformconv_translation_table()
    with (
        warnings.catch_warnings(),
        deform_conv_export_mode("onnx_deformconv" if mode == "onnx_deformconv" else "grid_sample"),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=True,
            opset_version=19,
            input_names=["x", "offset", "mask"],
            output_names=["y"],
            verbose=False,
            **kwargs,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    weight = torch.from_numpy(rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.02)
    forms = {
        "grid_sample": DeformLayer(weight),
        "grid_sample_loop": DeformLayer(weight, "grid_sample_loop"),
        "gather": DeformLayer(weight, "gather"),
        "onnx_deformconv": DeformLayer(weight),
        "plain_conv": PlainConv(weight),
    }
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels.split(","):
            h, w = LEVELS[level]
            x = torch.from_numpy(rng.standard_normal((1, CHANNELS, h, w)).astype(np.float32))
            offset = torch.from_numpy((rng.standard_normal((1, 18, h, w)) * 1.5).astype(np.float32))
            mask = torch.from_numpy(rng.uniform(0.2, 0.9, (1, 9, h, w)).astype(np.float32))
            feeds = {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()}
            sessions: dict[str, ort.InferenceSession] = {}
            reference = forms["grid_sample"](x, offset, mask).detach().numpy()
            nodes: dict[str, list[str]] = {}
            for name, module in forms.items():
                path = Path(tmp) / f"{level}_{name}.onnx"
                export(module.eval(), (x, offset, mask), path, name)
                nodes[name] = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                so.inter_op_num_threads = 1
                sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                sessions[name].run(None, feeds)  # warm-up
            torch_forms = ("grid_sample", "grid_sample_loop", "gather", "plain_conv")
            times: dict[str, list[float]] = {f"ort_{n}": [] for n in forms}
            times.update({f"torch_{n}": [] for n in torch_forms})
            max_diff: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, sess in sessions.items():
                    t0 = time.perf_counter()
                    y = sess.run(None, feeds)[0]
                    times[f"ort_{name}"].append(time.perf_counter() - t0)
                    if name != "plain_conv":
                        max_diff[name] = float(np.abs(y - reference).max())
            with torch.inference_mode():
                for name in torch_forms:
                    forms[name](x, offset, mask)  # warm-up
                for _ in range(args.rounds):
                    for name in torch_forms:
                        t0 = time.perf_counter()
                        forms[name](x, offset, mask)
                        times[f"torch_{name}"].append(time.perf_counter() - t0)
            median_ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
            results[level] = {
                "input": [1, CHANNELS, h, w],
                "median_ms": median_ms,
                "max_abs_diff_vs_torch_grid_sample": max_diff,
                "onnx_ops": nodes,
            }
            print(level, (h, w), {k: round(v, 2) for k, v in median_ms.items()}, max_diff, flush=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "rounds": args.rounds,
    }
    if args.out is not None:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
