"""Precision-stage candidates on a mid-size model: time, peak memory, Q/DQ count and accuracy vs FP32.

Model: a ResNet-50-depth, half-width backbone (bottlenecks [3, 4, 6, 3], widths 128..1024, residual gain
0.2, BN folded by the export), a 3-level FPN to stride 8, and PanopticFCN-like heads on P3: 2× conv +
GroupNorm + ReLU; 54-class semantic logits bilinearly resized to the input; center heatmap Sigmoid ->
TopK(100) -> GatherElements of kernels -> MatMul with mask features -> Sigmoid; ArgMax, CumSum, bool outputs.
Input 1×3×416×608, normalised BGR crops of the 4 fixture photos; 8 calibration and 4 held-out evaluation
crops. Random weights, BN statistics warmed on the calibration crops.

Each step runs in its own Python process (so peak RSS is that step's); time is the wall time of the call
itself, library imports excluded (reported once as ``import``). Steps:
- fp16: ``convert_fp16`` (ModelOpt AutoCast) vs onnxconverter-common (default block list, and
  ``op_block_list=[]``);
- calibration: ``calibrate`` minmax / entropy / percentile vs ORT's own Entropy calibrator (128 bins default);
- int8: ``quantize_int8`` (ModelOpt, from the cache) fp16/fp32 high precision; ModelOpt calibrating itself
  (``max``, one-shot); ORT ``quantize_static`` from the same ranges (TensorRT-style options, no calibration);
- accuracy of every model vs FP32 on the held-out crops, ORT CPU with ``make_ort_session`` options
  (``ORT_DISABLE_ALL`` for Q/DQ/FP16) and, for contrast, ORT default optimisations.

Usage: python benchmarks/bench_precision.py [--workdir DIR] [--threads 2] [--repeats 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "images"
H, W = 416, 608
PIXEL_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
OUTPUTS = ["sem", "sem_argmax", "scores", "indices", "masks", "keep", "rank"]
TOPK = 100


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------------------
# Model and data


def build_model() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            # Residual-branch gain 0.2 (as trained ResNets / zero-init-residual): with gain 1 this random
            # net is chaotic (FP16 rounding of the input alone moved the logits by 2% rel. L2).
            nn.init.constant_(self.body[-1].weight, 0.2)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.body(x) + self.short(x))

    def stage(cin: int, mid: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(cin, mid, cout, stride)]
        layers += [Bottleneck(cout, mid, cout, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def conv_gn(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.GroupNorm(32, cout), nn.ReLU())

    class MidPanoptic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
            self.res2 = stage(32, 32, 128, 3, 1)
            self.res3 = stage(128, 64, 256, 4, 2)
            self.res4 = stage(256, 128, 512, 6, 2)
            self.res5 = stage(512, 256, 1024, 3, 2)
            self.lat3, self.lat4, self.lat5 = (nn.Conv2d(c, 128, 1) for c in (256, 512, 1024))
            self.out3 = nn.Conv2d(128, 128, 3, 1, 1)
            self.tower = nn.Sequential(conv_gn(128, 128), conv_gn(128, 128))
            self.sem = nn.Conv2d(128, 54, 1)
            self.center = nn.Conv2d(128, 1, 1)
            self.kernel = nn.Conv2d(128, 64, 1)
            self.mask_feat = conv_gn(128, 64)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            c2 = self.res2(self.stem(image))
            c3 = self.res3(c2)
            c4 = self.res4(c3)
            c5 = self.res5(c4)
            p5 = self.lat5(c5)
            p4 = self.lat4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
            p3 = self.out3(self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest"))
            f = self.tower(p3)
            sem = F.interpolate(self.sem(f), size=image.shape[-2:], mode="bilinear", align_corners=False)
            heat = torch.sigmoid(self.center(f)).flatten(1)
            scores, indices = torch.topk(heat, TOPK, dim=1)
            kernels = self.kernel(f).flatten(2)
            kernels = torch.gather(kernels, 2, indices[:, None, :].expand(-1, kernels.shape[1], -1))
            masks = torch.sigmoid(torch.matmul(kernels.transpose(1, 2), self.mask_feat(p3).flatten(2)))
            keep = scores > 0.5
            return sem, sem.argmax(1), scores, indices, masks, keep, torch.cumsum(keep.to(torch.int64), 1)

    return MidPanoptic()


def make_crops(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count``×1×3×416×608 normalised BGR crops of the fixture photos (random photo, scale, place, flip)."""
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.png"))]
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        cover = max(H / photo.height, W / photo.width) * float(rng.uniform(1.0, 1.6))
        size = (max(W, round(photo.width * cover)), max(H, round(photo.height * cover)))
        rgb = np.asarray(photo.resize(size, Image.BILINEAR), dtype=np.float32)
        y, x = int(rng.integers(size[1] - H + 1)), int(rng.integers(size[0] - W + 1))
        bgr = rgb[y : y + H, x : x + W, ::-1] - PIXEL_MEAN_BGR
        if rng.random() < 0.5:
            bgr = bgr[:, ::-1]
        crops.append(np.ascontiguousarray(bgr.transpose(2, 0, 1))[None])
    return np.stack(crops).astype(np.float32)


def step_build(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import onnx
    import onnxslim
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    calib = make_crops(np.random.default_rng(1), args.calib)
    evals = make_crops(np.random.default_rng(2), args.eval)
    np.save(work / "calib.npy", calib)
    np.save(work / "eval.npy", evals)
    model = build_model()
    # Warm BN running statistics on the calibration crops (cumulative average), then freeze.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in calib:
            model(torch.from_numpy(x))
    model.eval()
    t = time.perf_counter()
    torch.onnx.export(
        model,
        (torch.from_numpy(calib[0]),),
        str(work / "mid.onnx"),
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=OUTPUTS,
    )
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    onnx.save(onnxslim.slim(onnx.load(str(work / "mid.onnx"))), str(work / "mid.sim.onnx"))
    sim = onnx.load(str(work / "mid.sim.onnx"))
    params = sum(p.numel() for p in model.parameters())
    return {
        "export_s": export_s,
        "slim_s": time.perf_counter() - t,
        "nodes": len(sim.graph.node),
        "params": params,
        "ops": sorted({n.op_type for n in sim.graph.node}),
    }


# ----------------------------------------------------------------------------------------------------------
# Steps (each in its own process)


def _batches(work: Path) -> list[dict[str, np.ndarray]]:
    return [{"image": x} for x in np.load(work / "calib.npy")]


def run_step(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    import onnx
    import onnxruntime  # noqa: F401

    from panoptic_deploy import onnx_utils
    from panoptic_deploy import precision as P
    from panoptic_deploy.engines.onnxruntime import make_ort_session
    from panoptic_deploy.precision import calibration, int8

    if name.startswith(("fp16_autocast", "int8_", "modelopt_")):
        import modelopt.onnx.autocast
        import modelopt.onnx.quantization  # noqa: F401
    result: dict[str, Any] = {"import_s": time.perf_counter() - t}
    sim = work / "mid.sim.onnx"
    t = time.perf_counter()
    if name == "fp16_autocast":
        report = P.convert_fp16(sim, work / "mid.fp16.onnx", _batches(work)[0])
        result |= {"casts_added": report.casts_added, "kept_fp32": list(report.nodes_kept_fp32)}
    elif name.startswith("fp16_occ"):
        from onnxconverter_common import float16

        model = onnx.load(str(sim))
        kwargs: dict[str, Any] = {"keep_io_types": True}
        if name == "fp16_occ_noblock":
            kwargs["op_block_list"] = []
        converted = float16.convert_float_to_float16(model, **kwargs)
        out = work / f"mid.{name}.onnx"
        onnx.save(converted, str(out))
        result["io_dtypes_kept"] = onnx_utils.io_types(model) == onnx_utils.io_types(converted)
        try:
            make_ort_session(out, args.threads)
            result["ort_loads"] = True
        except Exception as exc:
            result["ort_loads"] = False
            result["ort_error"] = str(exc).splitlines()[0][:200]
    elif name.startswith("cal_") and name != "cal_ort_entropy":
        method = name.removeprefix("cal_")
        report = P.calibrate(sim, _batches(work), method, work / f"mid.{method}.cache")
        result |= {"tensors": report.num_tensors}
    elif name == "cal_ort_entropy":
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        cal = create_calibrator(
            sim,
            [],
            augmented_model_path=str(work / "aug.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            providers=["CPUExecutionProvider"],
            extra_options={"symmetric": True},
        )
        with onnx_utils.quiet_converters():
            for batch in _batches(work):
                cal.collect_data(calibration._OneBatch(batch))
            ranges = cal.compute_data()
        amax = {
            k: float(np.abs(np.asarray(v.range_value, dtype=np.float64)).max())
            for k, v in ranges.data.items()
        }
        minmax = P.read_calibration_cache(work / "mid.minmax.cache")
        ratio = [amax[k] / minmax[k] for k in minmax if minmax[k] > 0]
        result |= {"amax_over_minmax_median": statistics.median(ratio), "amax_over_minmax_min": min(ratio)}
    elif name.startswith("int8_") and not name.startswith("int8_ort"):
        _, method, hp = name.split("_")
        report = P.quantize_int8(sim, work / f"mid.{method}.cache", work / f"mid.int8.{method}.{hp}.onnx", hp)
        result |= {"qdq_pairs": report.qdq_pairs, "nodes_out": report.nodes_out}
    elif name == "modelopt_selfcal_max":
        from modelopt.onnx.quantization import quantize

        with onnx_utils.quiet_converters():
            quantize(
                str(work / "copy" / "mid.sim.onnx"),
                quantize_mode="int8",
                calibration_data={"image": np.load(work / "calib.npy")[:, 0]},
                calibration_method="max",
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
                output_path=str(work / "mid.int8.selfcal.fp32.onnx"),
                log_level="WARNING",
            )
        model = onnx.load(str(work / "mid.int8.selfcal.fp32.onnx"))
        own = dict(int8._activation_q_scales(model, {}))
        cached = P.read_calibration_cache(work / "mid.minmax.cache")
        diffs = [
            abs(s - P.trt_scale(cached[k])) / P.trt_scale(cached[k]) for k, s in own.items() if k in cached
        ]
        result |= {
            "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "max_rel_scale_diff_vs_minmax_cache": max(diffs),
        }
    elif name == "int8_ort_static":
        result |= ort_static_from_cache(work, P)
    else:
        raise SystemExit(f"unknown step {name}")
    result["seconds"] = time.perf_counter() - t
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def ort_static_from_cache(work: Path, P: Any) -> dict[str, Any]:
    """ORT quantize_static, TensorRT-style QDQ, ranges from the minmax cache (ORT's JSON range cache)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    amax = P.read_calibration_cache(work / "mid.minmax.cache")
    data = {k: TensorData(lowest=np.float32(-v), highest=np.float32(v)) for k, v in amax.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), work / "ort_ranges.json")
    out = work / "mid.int8.ort.fp32.onnx"
    quantize_static(
        str(work / "mid.sim.onnx"),
        str(out),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(work / "ort_ranges.json"),
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "AddQDQPairToWeight": True,
            "DedicatedQDQPair": True,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "QuantizeBias": False,
        },
    )
    model = onnx.load(str(out))
    return {"qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node)}


# ----------------------------------------------------------------------------------------------------------
# Accuracy


def accuracy(work: Path, models: list[str], threads: int) -> dict[str, Any]:
    from panoptic_deploy.engines.onnxruntime import make_ort_session

    evals = np.load(work / "eval.npy")
    ref_session = make_ort_session(work / "mid.sim.onnx", threads)
    refs = [ref_session.run(None, {"image": x}) for x in evals]
    table: dict[str, Any] = {}
    for name in models:
        path = work / name
        if not path.is_file():
            continue
        for optimize in (None, True):
            try:
                session = make_ort_session(path, threads, optimize=optimize)
            except Exception as exc:
                table[f"{name} opt={optimize}"] = {"error": str(exc).splitlines()[0][:160]}
                continue
            rows = []
            t = time.perf_counter()
            for x, ref in zip(evals, refs, strict=True):
                got = session.run(None, {"image": x})
                ref_rows = {int(i): k for k, i in enumerate(ref[3][0])}
                common = [(k, ref_rows[int(i)]) for k, i in enumerate(got[3][0]) if int(i) in ref_rows]
                mask_cos = [_cos(got[4][0, a], ref[4][0, b]) for a, b in common]
                rows.append(
                    {
                        "sem_argmax_agree": float(np.mean(got[1] == ref[1])),
                        "sem_cos": _cos(got[0], ref[0]),
                        "sem_rel_l2": float(np.linalg.norm(got[0] - ref[0]) / np.linalg.norm(ref[0])),
                        "topk_overlap": len(common) / TOPK,
                        "mask_cos_min": min(mask_cos) if mask_cos else float("nan"),
                        "scores_max_abs": float(np.abs(got[2] - ref[2]).max()),
                        "dtypes_ok": [g.dtype for g in got] == [r.dtype for r in ref],
                    }
                )
            entry = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "dtypes_ok"}
            entry["dtypes_ok"] = all(r["dtypes_ok"] for r in rows)
            entry["s_per_image"] = (time.perf_counter() - t) / len(evals)
            table[f"{name} {'default-opt' if optimize else 'make_ort_session'}"] = entry
    return table


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


# ----------------------------------------------------------------------------------------------------------

STEPS = [
    "fp16_autocast",
    "fp16_occ_default",
    "fp16_occ_noblock",
    "cal_minmax",
    "cal_entropy",
    "cal_percentile",
    "cal_ort_entropy",
    "int8_minmax_fp16",
    "int8_minmax_fp32",
    "int8_entropy_fp16",
    "int8_entropy_fp32",
    "int8_percentile_fp32",
    "modelopt_selfcal_max",
    "int8_ort_static",
]
MODELS = [
    "mid.fp16.onnx",
    "mid.fp16_occ_default.onnx",
    "mid.fp16_occ_noblock.onnx",
    "mid.int8.minmax.fp16.onnx",
    "mid.int8.minmax.fp32.onnx",
    "mid.int8.entropy.fp16.onnx",
    "mid.int8.entropy.fp32.onnx",
    "mid.int8.percentile.fp32.onnx",
    "mid.int8.selfcal.fp32.onnx",
    "mid.int8.ort.fp32.onnx",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_precision"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--eval", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each step (median reported)")
    parser.add_argument("--steps", nargs="*", default=None, help="subset of steps (default: all)")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.step:  # child process
        result = step_build(work, args) if args.step == "build" else run_step(args.step, work, args)
        result.setdefault("peak_rss_mb", _peak_rss_mb())
        print("RESULT " + json.dumps(result))
        return 0

    import onnx
    import onnxruntime

    env = {
        "machine": platform.machine(),
        "cpu_count": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "modelopt": __import__("importlib.metadata").metadata.version("nvidia-modelopt"),
        "threads": args.threads,
    }
    results: dict[str, Any] = {"env": env, "steps": {}}

    def child(step: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--workdir", str(work), "--threads", str(args.threads)]
        cmd += ["--calib", str(args.calib), "--eval", str(args.eval), "--step", step]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        return dict(json.loads(lines[-1][7:]))

    if not (work / "mid.sim.onnx").is_file():
        results["steps"]["build"] = child("build")
        print("build", results["steps"]["build"], flush=True)
    (work / "copy").mkdir(exist_ok=True)  # ModelOpt writes intermediates next to its input
    (work / "copy" / "mid.sim.onnx").write_bytes((work / "mid.sim.onnx").read_bytes())
    for step in args.steps or STEPS:
        runs = [child(step) for _ in range(args.repeats)]
        ok = [r for r in runs if "error" not in r]
        entry = dict(ok[-1] if ok else runs[-1])
        if len(ok) > 1:
            entry["seconds_runs"] = [r["seconds"] for r in ok]
            entry["seconds"] = statistics.median(entry["seconds_runs"])
            entry["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in ok)
        results["steps"][step] = entry
        print(step, json.dumps(entry), flush=True)
    results["accuracy"] = accuracy(work, MODELS, args.threads)
    for name, entry in results["accuracy"].items():
        print(name, json.dumps(entry), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
