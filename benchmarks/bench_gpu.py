"""GPU baselines of our PanopticFCN in PyTorch, and the distance of each to the hardware floor.

Run on a CUDA machine from the repository root (no install needed):

    PYTHONPATH=src python3 benchmarks/bench_gpu.py --json gpu.json --markdown gpu.md

What it measures, per reference photo (nodeform R50-400-3x-FAST, synthetic weights SEED=1, as the
official GPU anchor in docs/benchmarks.md):
- ``predictor``: the whole call on a decoded BGR uint8 image (resize + normalise on the host, network,
  host-side post-processing on the GPU), wall clock with ``torch.cuda.synchronize``;
- ``network``: ``PanopticFCN.forward`` on the padded input already on the GPU, CUDA events, for eager
  FP32 (TF32 convolutions, PyTorch's default), eager FP32 strict (TF32 off), FP16 autocast, FP16 weights
  (``model.half()``) and ``torch.compile`` of the convolutional part (mode ``reduce-overhead``);
- ``postprocess``: the host-side step alone;
- fidelity of each reduced-precision row: PQ of its panoptic output against eager FP32 strict;
- the floor: FLOPs of the network (``torch.utils.flop_counter``: convolutions and matrix products;
  element-wise work not counted), minimum bytes (every weight read once + input + outputs written once),
  the GPU's measured matrix rate (TF32, FP32 and FP16 GEMM 8192³) and device-to-device copy bandwidth;
  floor = max(FLOPs / rate, bytes / bandwidth); each row's distance = measured / floor;
- ONNX Runtime on the machine's CPU cores (the exported network, CPU provider) as the CPU peer.

Every figure is the median of ``--iters`` timed calls after ``--warmup`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptic_deploy.config import load_config
from panoptic_deploy.modeling import NetworkOutputs, PanopticFCN, build_model
from panoptic_deploy.panoptic_format import segments_from_model_output
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.pq import pq_between
from panoptic_deploy.predict import segments_info
from panoptic_deploy.preprocess import prepare_image, read_image
from panoptic_deploy.weights import synthetic_state_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
IMAGES = [
    ROOT / "tests" / "fixtures" / "images" / f"{n}.png" for n in ("astronaut", "chelsea", "coffee", "rocket")
]


def median_ms(fn: Callable[[], object], warmup: int, iters: int, events: bool) -> float:
    """Median milliseconds of ``fn`` (CUDA events around each call, or wall clock after a synchronize)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gemm_tflops(dtype: torch.dtype, tf32: bool, n: int = 8192, reps: int = 10) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = median_ms(lambda: a @ b, 3, reps, events=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy, counting bytes read and written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 3, 10, events=True)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def count_flops(model: PanopticFCN, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def min_bytes(
    model: PanopticFCN, x: torch.Tensor, outputs: NetworkOutputs, weight_bytes_per_value: int
) -> int:
    weights = sum(p.numel() for p in model.state_dict().values()) * weight_bytes_per_value
    return weights + x.numel() * x.element_size() + sum(t.numel() * t.element_size() for t in outputs)


def panoptic_pairs(results: list[PanopticResult]) -> list[tuple[np.ndarray, Any]]:
    return [(r.panoptic_seg, segments_from_model_output(segments_info(r))) for r in results]


def ort_cpu_ms(model: PanopticFCN, x: torch.Tensor, warmup: int, iters: int) -> dict[str, Any]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        t0 = time.perf_counter()
        torch.onnx.export(model.cpu(), (x.cpu(),), str(path), dynamo=True, input_names=["image"])
        export_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        for _ in range(warmup):
            session.run(None, feed)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
    model.cuda()
    return {
        "ms": statistics.median(times),
        "threads": options.intra_op_num_threads,
        "export_s": export_s,
        "ort_version": ort.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-ort", action="store_true")
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "needs a CUDA GPU"

    model = build_model(load_config(CONFIG))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state_dict(shapes, 1).items()})
    model = model.cuda().eval()
    half = build_model(load_config(CONFIG))
    half.load_state_dict(model.state_dict())
    half = half.cuda().half().eval()

    env = {
        "gpu": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "warmup": args.warmup,
        "iters": args.iters,
    }
    print(json.dumps(env), flush=True)
    floor = {
        "tf32_gemm_tflops": gemm_tflops(torch.float32, tf32=True),
        "fp32_gemm_tflops": gemm_tflops(torch.float32, tf32=False),
        "fp16_gemm_tflops": gemm_tflops(torch.float16, tf32=False),
        "copy_gbps": copy_gbps(),
    }
    print(json.dumps(floor), flush=True)

    rows: list[dict[str, Any]] = []
    references: list[PanopticResult] = []
    variant_results: dict[str, list[PanopticResult]] = {}
    compiled: dict[str, Any] = {}
    if not args.no_compile:
        # max-autotune spent > 9 minutes autotuning on the H100; the default inductor mode with CUDA graphs
        # ("reduce-overhead") is what a latency-bound batch-1 user would pick.
        # Only the convolutional part is compiled: inductor (torch 2.11) fails in its scheduler on the
        # fixed-size kernel fusion ("list indices must be integers or slices, not NoneType"), which is
        # cheap tensor algebra that stays eager here.
        compiled_heads = torch.compile(model.forward_heads, mode="reduce-overhead")
        compiled["compile heads (reduce-overhead)"] = lambda x: model.decode(compiled_heads(x))

    for image_path in IMAGES:
        image = read_image(image_path)
        prepared = prepare_image(image, model.input_params)
        x = prepared.tensor.cuda()
        size, orig = prepared.image_size, prepared.orig_size
        inference = model.inference
        row: dict[str, Any] = {"image": image_path.name, "input": list(x.shape[-2:])}

        def run_predictor() -> PanopticResult:
            p = prepare_image(image, model.input_params)
            with torch.no_grad():
                out = model(p.tensor.cuda(non_blocking=True))
            return postprocess(out, p.image_size, p.orig_size, inference)

        variants: dict[str, Callable[[], NetworkOutputs]] = {}

        def eager() -> NetworkOutputs:
            with torch.no_grad():
                return model(x)

        def autocast() -> NetworkOutputs:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                return model(x)

        def fp16_weights() -> NetworkOutputs:
            with torch.no_grad():
                return half(x.half())

        variants["fp32 (tf32 conv)"] = eager
        variants["fp16 autocast"] = autocast
        variants["fp16 weights"] = fp16_weights
        for name, fn in compiled.items():

            def run_compiled(fn: Any = fn) -> NetworkOutputs:
                with torch.no_grad():
                    return fn(x)  # type: ignore[no-any-return]

            t0 = time.perf_counter()
            run_compiled()
            torch.cuda.synchronize()
            row[f"{name} first call s"] = time.perf_counter() - t0
            variants[name] = run_compiled

        torch.backends.cudnn.allow_tf32 = False
        row["network fp32 strict ms"] = median_ms(eager, args.warmup, args.iters, events=True)
        with torch.no_grad():
            strict_out = model(x)
        references.append(postprocess(strict_out, size, orig, inference))
        torch.backends.cudnn.allow_tf32 = True
        for name, fn in variants.items():
            row[f"network {name} ms"] = median_ms(fn, args.warmup, args.iters, events=True)
            with torch.no_grad():
                out = fn()
            variant_results.setdefault(name, []).append(postprocess(out, size, orig, inference))
        with torch.no_grad():
            out = model(x)
        row["postprocess ms"] = median_ms(
            lambda: postprocess(out, size, orig, inference), 3, 20, events=False
        )
        row["predictor fp32 ms"] = median_ms(run_predictor, args.warmup, args.iters, events=False)
        torch.cuda.reset_peak_memory_stats()
        run_predictor()
        row["predictor peak GPU MiB"] = torch.cuda.max_memory_allocated() / 2**20
        row["segments"] = len(references[-1].segments)
        with torch.no_grad():
            row["flops"] = count_flops(model, x)
            row["min_bytes_fp32"] = min_bytes(model, x, out, 4)
            row["min_bytes_fp16"] = min_bytes(model, x, out, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.json.write_text(
            json.dumps({"env": env, "floor": floor, "rows": rows, "partial": True}, indent=1)
        )

    fidelity = {
        name: pq_between(panoptic_pairs(results), panoptic_pairs(references)).all.pq
        for name, results in variant_results.items()
    }
    ort_row: dict[str, Any] = {}
    if not args.no_ort:
        prepared = prepare_image(read_image(IMAGES[2]), model.input_params)  # coffee, 416×608
        try:
            ort_row = ort_cpu_ms(model, prepared.tensor, 2, 10)
            ort_row["image"] = IMAGES[2].name
        except Exception as exc:  # report the failure next to the numbers rather than lose the run
            ort_row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    result = {
        "env": env,
        "floor": floor,
        "rows": rows,
        "fidelity_pq_vs_fp32_strict": fidelity,
        "ort_cpu": ort_row,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    args.markdown.write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    env, floor, rows = result["env"], result["floor"], result["rows"]
    names = [
        k[len("network ") : -len(" ms")]
        for k in rows[0]
        if k.startswith("network ") and k.endswith(" ms") and k != "network fp32 strict ms"
    ]
    lines = [
        f"GPU: {env['gpu']} (sm {env['capability']}), torch {env['torch']}, CUDA {env['cuda']}, cuDNN "
        f"{env['cudnn']}, Python {env['python']}; median of {env['iters']} calls after {env['warmup']} "
        "warm-up.",
        f"Measured in the same call: GEMM 8192³ TF32 {floor['tf32_gemm_tflops']:.0f} TFLOP/s, FP32 "
        f"{floor['fp32_gemm_tflops']:.0f}, FP16 {floor['fp16_gemm_tflops']:.0f}; device copy "
        f"{floor['copy_gbps']:.0f} GB/s (read + write).",
        "",
        "| image | input | predictor FP32 (ms) | post-process (ms) | network fp32 strict (ms) | "
        + " | ".join(f"network {n} (ms)" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r[f'network {n} ms']:.2f}" for n in names]
        lines.append(
            f"| {r['image']} | {r['input'][0]}×{r['input'][1]} | {r['predictor fp32 ms']:.1f} | "
            f"{r['postprocess ms']:.1f} | {r['network fp32 strict ms']:.2f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Distance to the floor (coffee.png, 416×608):",
        "",
        "| row | measured (ms) | GFLOP | floor (ms) | bound | measured / floor | PQ vs FP32 strict |",
        "|---|---|---|---|---|---|---|",
    ]
    r = next(r for r in rows if r["image"] == "coffee.png")
    gflop = r["flops"] / 1e9
    for n in ["fp32 strict", *names]:
        fp16 = "fp16" in n
        rate = (
            floor["fp16_gemm_tflops"]
            if fp16
            else (floor["fp32_gemm_tflops"] if n == "fp32 strict" else floor["tf32_gemm_tflops"])
        )
        nbytes = r["min_bytes_fp16"] if n == "fp16 weights" else r["min_bytes_fp32"]
        compute_ms = r["flops"] / (rate * 1e12) * 1e3
        memory_ms = nbytes / (floor["copy_gbps"] * 1e9) * 1e3
        floor_ms = max(compute_ms, memory_ms)
        measured = r[f"network {n} ms"]
        pq = result["fidelity_pq_vs_fp32_strict"].get(n)
        lines.append(
            f"| network {n} | {measured:.2f} | {gflop:.1f} | {floor_ms:.3f} | "
            f"{'compute' if compute_ms >= memory_ms else 'memory'} | {measured / floor_ms:.1f}× | "
            f"{'' if pq is None else f'{pq:.4f}'} |"
        )
    if result["ort_cpu"].get("error"):
        lines += ["", f"ONNX Runtime CPU row failed: {result['ort_cpu']['error']}"]
    elif result["ort_cpu"]:
        o = result["ort_cpu"]
        lines += [
            "",
            f"ONNX Runtime {o['ort_version']} CPU provider, {o['threads']} threads, {o['image']}: "
            f"{o['ms']:.0f} ms (median of 10).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":  # re-render the table from a saved JSON
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit(0)
    sys.exit(main())
