"""One subcommand per pipeline stage, each a thin wrapper over the package function the workflow script of
the same rule calls: export, simplify, fp16, calibrate, int8, engine, reference, bench, report (and trtexec,
the independent TensorRT check). So the package runs the whole pipeline without Snakemake."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from panoptic_deploy.cli.common import (
    add_buckets,
    add_categories,
    add_int8_exclusions,
    add_opts,
    buckets,
    check_output,
    input_hw,
)
from panoptic_deploy.defaults import schema_default
from panoptic_deploy.timing import TimingPolicy, format_cov, format_ms
from panoptic_deploy.vocab import (
    BENCH_BACKENDS,
    CALIBRATION_METHODS,
    COMPILE_MODES,
    ENGINE_BACKENDS,
    HIGH_PRECISION_DTYPES,
    INPUT_NAME,
    PRECISIONS,
    SIMPLIFIERS,
)

if TYPE_CHECKING:
    from panoptic_deploy.cli.common import Subparsers


def _cmd_export(args: argparse.Namespace) -> int:
    from panoptic_deploy.compare import Tolerance
    from panoptic_deploy.export import DEFAULT_EXPORT_TOLERANCE, export_onnx

    check_output("--output", args.output, [args.config, args.weights, args.image])
    default = DEFAULT_EXPORT_TOLERANCE
    tolerance = Tolerance(
        default.atol if args.atol is None else args.atol,
        default.rtol if args.rtol is None else args.rtol,
        default.max_flips if args.max_flips is None else args.max_flips,
    )
    report = export_onnx(
        args.config,
        args.weights,
        args.output,
        input_hw(args.input_hw, args.config, args.image, args.opts, buckets(args)),
        args.image,
        opts=args.opts,
        opset=args.opset,
        exporter=args.exporter,
        deform_conv=args.deform_conv,
        tolerance=tolerance,
        threads=args.threads,
        buckets=buckets(args),
    )
    print(report.summary())
    return 0


def _add_export(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export", help="export the network to ONNX at one static size, checked against PyTorch"
    )
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output .onnx")
    p.add_argument("--image", required=True, help="real image to check the export on (must pad to the size)")
    p.add_argument(
        "--input-hw", type=int, nargs=2, metavar=("H", "W"), help="network input (default: --image's)"
    )
    add_buckets(p)
    add_opts(p)
    opset = schema_default("export", "opset")
    p.add_argument("--opset", type=int, default=opset, help=f"ONNX opset (default {opset})")
    p.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], default="auto",
                   help="auto: dynamo, legacy TorchScript exporter if dynamo raises")  # fmt: skip
    p.add_argument("--deform-conv", choices=["grid_sample", "onnx_deformconv"], default="grid_sample",
                   help="how DCNv2 layers are written (onnx_deformconv needs opset >= 19)")  # fmt: skip
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-3)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default 1e-3)")
    p.add_argument("--max-flips", type=int, default=None, help="allowed bool/int mismatches (default 0)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for the check")
    p.set_defaults(func=_cmd_export)


def _cmd_simplify(args: argparse.Namespace) -> int:
    from panoptic_deploy.export import onnx_input_hw, prepare_verify_inputs, simplify_onnx

    check_output("--output", args.output, [args.input, args.config, *args.images])
    hw = onnx_input_hw(args.input)
    inputs = prepare_verify_inputs(args.config, args.images, hw, args.opts, buckets(args))
    report = simplify_onnx(args.input, args.output, inputs, simplifier=args.simplifier, threads=args.threads)
    print(report.summary())
    return 0


def _add_simplify(sub: Subparsers) -> None:
    p = sub.add_parser(
        "simplify", help="simplify an exported ONNX model with onnxsim or onnxslim, checked numerically"
    )
    p.add_argument("--input", required=True, help="exported .onnx")
    p.add_argument("--output", required=True, help="simplified .onnx")
    simplifier = schema_default("export", "simplifier")
    p.add_argument("--simplifier", choices=SIMPLIFIERS, default=simplifier,
                   help=f"the simplifier (default {simplifier}); recorded in the model metadata")  # fmt: skip
    p.add_argument("--config", required=True, help="config of the model (pre-processing of the check images)")
    add_buckets(p)
    add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for the check")
    p.add_argument("images", nargs="+", help="images to check on (must pad to the model's input size)")
    p.set_defaults(func=_cmd_simplify)


def _cmd_fp16(args: argparse.Namespace) -> int:
    from panoptic_deploy.export import onnx_input_hw, prepare_verify_inputs
    from panoptic_deploy.precision import convert_fp16

    check_output("--output", args.output, [args.input, args.config, args.image])
    hw = onnx_input_hw(args.input)
    (image,) = prepare_verify_inputs(args.config, [args.image], hw, args.opts, buckets(args))
    report = convert_fp16(
        args.input,
        args.output,
        {INPUT_NAME: image},
        data_max=args.data_max,
        keep_fp32_op_types=args.keep_fp32_op_type,
        keep_fp32_nodes=args.keep_fp32_node,
    )
    print(report)
    return 0


def _add_fp16(sub: Subparsers) -> None:
    p = sub.add_parser("fp16", help="mixed FP16 model (FP32 I/O) by ModelOpt AutoCast")
    p.add_argument("--input", required=True, help="FP32 .onnx (simplified export)")
    p.add_argument("--output", required=True, help="FP16 .onnx")
    p.add_argument("--config", required=True, help="config of the model (pre-processing of --image)")
    p.add_argument("--image", required=True, help="evaluation image whose value ranges decide FP32 nodes")
    data_max = schema_default("fp16", "data_max")
    p.add_argument("--data-max", type=float, default=data_max,
                   help=f"nodes with values beyond this magnitude stay FP32 ({data_max})")  # fmt: skip
    p.add_argument("--keep-fp32-op-type", action="append", default=[], metavar="OP",
                   help="ONNX op type always kept FP32; repeatable")  # fmt: skip
    p.add_argument("--keep-fp32-node", action="append", default=[], metavar="REGEX",
                   help="node names (full match) kept FP32; repeatable")  # fmt: skip
    add_buckets(p)
    add_opts(p)
    p.set_defaults(func=_cmd_fp16)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from panoptic_deploy.export import onnx_input_hw
    from panoptic_deploy.precision import calibrate, calibration_batches

    check_output("--output", args.output, [args.input, args.config, *args.images])
    batches = calibration_batches(args.config, args.images, onnx_input_hw(args.input), args.opts)
    report = calibrate(
        args.input, batches, args.method, args.output, percentile=args.percentile, num_bins=args.num_bins
    )
    print(report)
    return 0


def _add_calibrate(sub: Subparsers) -> None:
    percentile, num_bins = (
        schema_default("calibration", "percentile"),
        schema_default("calibration", "num_bins"),
    )
    p = sub.add_parser("calibrate", help="INT8 calibration cache (activation ranges) of an FP32 model")
    p.add_argument("--input", required=True, help="FP32 .onnx (simplified export)")
    p.add_argument("--output", required=True, help="calibration cache (text)")
    p.add_argument("--config", required=True, help="config of the model (pre-processing of the images)")
    method = schema_default("calibration", "method")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default=method, help=f"default {method}")
    p.add_argument("--percentile", type=float, default=percentile,
                   help=f"percentile of |x| for --method percentile (default {percentile})")  # fmt: skip
    p.add_argument("--num-bins", type=int, default=num_bins,
                   help=f"histogram bins for entropy/percentile (default {num_bins})")  # fmt: skip
    add_opts(p)
    p.add_argument("images", nargs="+", help="calibration images (fitted to the model's input size)")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_int8(args: argparse.Namespace) -> int:
    from panoptic_deploy.precision import quantize_int8

    check_output("--output", args.output, [args.input, args.cache])
    report = quantize_int8(
        args.input,
        args.cache,
        args.output,
        high_precision=args.high_precision,
        exclude_op_types=args.exclude_op_type,
        exclude_nodes=args.exclude_node,
    )
    print(report)
    return 0


def _add_int8(sub: Subparsers) -> None:
    p = sub.add_parser("int8", help="explicit Q/DQ INT8 model from an FP32 model and a calibration cache")
    p.add_argument("--input", required=True, help="FP32 .onnx (simplified export)")
    p.add_argument("--cache", required=True, help="calibration cache from 'panoptic-deploy calibrate'")
    p.add_argument("--output", required=True, help="INT8 .onnx")
    p.add_argument("--high-precision", choices=HIGH_PRECISION_DTYPES, default="fp16",
                   help="non-quantized part: fp16 (TensorRT; default), fp32 (CPU twin), bf16")  # fmt: skip
    add_int8_exclusions(p)
    p.set_defaults(func=_cmd_int8)


def _cmd_engine(args: argparse.Namespace) -> int:
    from panoptic_deploy.onnx_utils import summarize_onnx

    check_output("--output", args.output, [args.input])
    precision = args.precision or summarize_onnx(args.input).precision
    if args.backend == "onnxruntime":
        from panoptic_deploy.engines.onnxruntime import build_ort_engine

        sidecar = build_ort_engine(args.input, args.output, precision=precision, threads=args.threads)
    else:
        from panoptic_deploy.engines.tensorrt import build_trt_engine

        sidecar = build_trt_engine(
            args.input,
            args.output,
            workspace_bytes=args.workspace_mb * 2**20,
            optimization_level=args.optimization_level,
            timing_cache_path=args.timing_cache,
            input_shape=summarize_onnx(args.input).static_input_shape,
            precision=precision,
        )
    print(f"built {args.output} ({sidecar.backend} {sidecar.precision}) in {sidecar.build_seconds} s")
    return 0


def _add_engine(sub: Subparsers) -> None:
    p = sub.add_parser("engine", help="build an engine (and its sidecar ENGINE.json) from an ONNX model")
    p.add_argument("--backend", required=True, choices=ENGINE_BACKENDS)
    p.add_argument("--input", required=True, help=".onnx (fp32, fp16 or int8)")
    p.add_argument("--output", required=True, help="engine file (the sidecar is written next to it)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="must match the graph (default: read from the graph)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="onnxruntime: intra-op threads while writing")
    workspace, level = (
        schema_default("tensorrt", "workspace_mb"),
        schema_default("tensorrt", "optimization_level"),
    )
    p.add_argument("--workspace-mb", type=int, default=workspace,
                   help=f"tensorrt: builder workspace in MiB (default {workspace})")  # fmt: skip
    p.add_argument("--optimization-level", type=int, default=level,
                   help=f"tensorrt: builder optimization level 0..5 (default {level})")  # fmt: skip
    p.add_argument("--timing-cache", default=None, help="tensorrt: timing cache file, shared between builds")
    p.set_defaults(func=_cmd_engine)


def _cmd_reference(args: argparse.Namespace) -> int:
    from panoptic_deploy.bench.reference import reference_panoptic_dir, write_reference
    from panoptic_deploy.categories import load_category_set

    check_output("--output", args.output, [args.config, args.weights, args.categories, *args.images])
    reference = write_reference(
        args.config,
        args.weights,
        args.images,
        args.output,
        input_hw(args.input_hw, args.config, args.images[0], args.opts, buckets(args)),
        opts=args.opts,
        model_name=args.model,
        threads=args.threads,
        categories=load_category_set(args.categories),
        buckets=buckets(args),
        fidelity_images=None if args.fidelity_images == 0 else args.fidelity_images,
    )
    kept = sum(1 for image in reference.images if image.outputs is not None)
    print(
        f"wrote {args.output}: torch FP32 reference of {reference.model} on {len(reference.images)} "
        f"image(s), raw outputs of {kept}; panoptic maps in {reference_panoptic_dir(args.output)}"
    )
    return 0


def _add_reference(sub: Subparsers) -> None:
    p = sub.add_parser("reference", help="torch FP32 reference outputs of the evaluation images (.npz)")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output .npz")
    p.add_argument(
        "--input-hw", type=int, nargs=2, metavar=("H", "W"), help="network input (default: first image's)"
    )
    p.add_argument("--model", default=None, help="model name to record (default: the output file stem)")
    add_buckets(p)
    fidelity = schema_default("evaluation", "fidelity_images")
    p.add_argument("--fidelity-images", type=int, default=fidelity,
                   help=f"raw outputs of the first N images only (default {fidelity}; 0: all)")  # fmt: skip
    add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    add_categories(p)
    p.add_argument("images", nargs="+", help="evaluation images (all must pad to the same size)")
    p.set_defaults(func=_cmd_reference)


def _cmd_bench(args: argparse.Namespace) -> int:
    from panoptic_deploy.bench.run import BenchSpec, run_bench

    sidecar = args.sidecar or (f"{args.engine}.json" if args.engine else None)  # run_bench's default
    inputs = [args.config, args.reference, args.weights, args.engine, sidecar, args.gt_json]
    check_output("--output", args.output, [*inputs, *args.images])
    spec = BenchSpec(
        args.backend,
        args.precision,
        config=args.config,
        reference=args.reference,
        output=args.output,
        images=args.images or None,
        weights=args.weights,
        engine=args.engine,
        sidecar=args.sidecar,
        opts=args.opts,
        model=args.model,
        device=args.device,
        warmup=args.warmup,
        iterations=args.iterations,
        min_seconds=args.min_seconds,
        cov_threshold=args.cov_threshold,
        threads=args.threads,
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        cuda_graph=args.cuda_graph,
        compile_mode=args.compile_mode,
        allow_tf32=None if args.tf32 is None else args.tf32 == "on",
        panoptic_dir=args.panoptic_dir,
        example_image=args.example_image,
    )
    result = run_bench(spec)
    net = result.latency.network
    pan = result.accuracy.panoptic
    print(
        f"{result.model} {result.backend} {result.precision} on {result.device_name}: network p50 "
        f"{net.p50_ms:.1f} ms (p90 {format_ms(net.p90_ms)}, p99 {format_ms(net.p99_ms)}, "
        f"CoV {format_cov(net.cov)} over {net.count} runs), {result.throughput_ips:.2f} img/s; "
        f"PQ vs torch FP32 {100 * pan.pq:.2f}, pixel agreement {100 * pan.pixel_agreement:.2f}%"
    )
    note = net.note()
    if note:
        print(f"warning: {note}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _add_bench(sub: Subparsers) -> None:
    p = sub.add_parser("bench", help="benchmark one backend x precision against the torch FP32 reference")
    p.add_argument("--backend", required=True, choices=BENCH_BACKENDS)
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--reference", required=True, help="reference .npz from 'panoptic-deploy reference'")
    p.add_argument("--output", default=None, help="result JSON (validated against the schema)")
    p.add_argument("--panoptic-dir", default=None,
                   help="write every image's panoptic result there (COCO panoptic PNG + JSON)")  # fmt: skip
    p.add_argument("--example-image", default=None,
                   help="the image whose panoptic result the JSON carries (default: the first)")  # fmt: skip
    p.add_argument("--weights", default=None, help="checkpoint (torch backends)")
    p.add_argument("--engine", default=None, help="engine file (onnxruntime, tensorrt)")
    p.add_argument("--sidecar", default=None, help="engine sidecar (default: ENGINE.json)")
    p.add_argument("--model", default=None, help="model name (default: the reference's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda where it applies")
    policy = TimingPolicy()  # the workflow config schema's bench defaults
    warmup = policy.warmup
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs (default {warmup})")
    p.add_argument(
        "--iterations",
        type=int,
        default=policy.min_iterations,
        help=f"minimum timed runs (default {policy.min_iterations}), with --min-seconds",
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        default=policy.min_seconds,
        help=f"minimum seconds of timed runs (default {policy.min_seconds:g})",
    )
    p.add_argument(
        "--cov-threshold",
        type=float,
        default=policy.cov_threshold,
        help=f"flag the row as unstable above this network latency CoV (default {policy.cov_threshold:g})",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (torch and ONNX Runtime)")
    p.add_argument("--gt-json", default=None, help="COCO panoptic ground-truth JSON (optional)")
    p.add_argument("--gt-dir", default=None, help="folder of ground-truth PNGs (with --gt-json)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay a CUDA graph")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch_compile: torch.compile mode: default, reduce-overhead (CUDA graphs), "
                   "max-autotune, max-autotune-no-cudagraphs")  # fmt: skip
    p.add_argument("--tf32", choices=["on", "off"], default=None,
                   help="torch on CUDA: TF32 convolutions/matmuls (default: PyTorch's settings)")  # fmt: skip
    add_opts(p)
    p.add_argument("images", nargs="*", help="evaluation images (default: the reference's)")
    p.set_defaults(func=_cmd_bench)


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from panoptic_deploy.errors import BenchError
    from panoptic_deploy.outputs import output_folder, refuse_overwriting_inputs
    from panoptic_deploy.report import PLOT_ACCURACY_SPEED, PLOT_LATENCY, skipped_from_json, write_report

    inputs = [*args.bench, args.skipped, *args.trtexec]
    check_output("--output", args.output, inputs)
    plots = Path(args.plots_dir) if args.plots_dir else Path(args.output).with_suffix("")
    output_folder(plots, "--plots-dir")
    refuse_overwriting_inputs([plots / PLOT_LATENCY, plots / PLOT_ACCURACY_SPEED], inputs)
    skipped = []
    if args.skipped:
        try:
            data = json.loads(Path(args.skipped).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"{args.skipped}: cannot read the skipped-combination list ({exc})") from exc
        skipped = skipped_from_json(data["skipped"] if isinstance(data, dict) else data)
    summary = write_report(
        args.bench,
        args.output,
        plots_dir=args.plots_dir,
        skipped=skipped,
        example_image=args.example_image,
        trtexec_files=args.trtexec,
    )
    print(
        f"wrote {summary.report} ({summary.rows} rows, {summary.skipped} skipped) "
        f"and {len(summary.plots)} plots"
    )
    return 0


def _add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="Markdown report and plots from benchmark JSON files")
    p.add_argument("--output", required=True, help="report .md")
    p.add_argument("--plots-dir", default=None, help="folder for the PNGs (default: OUTPUT without .md)")
    p.add_argument("--skipped", default=None,
                   help="JSON list of {backend, precision, reason} that did not run here")  # fmt: skip
    p.add_argument("--example-image", default=None, help="evaluation image to show (default: the first)")
    p.add_argument("--trtexec", action="append", default=[], metavar="JSON",
                   help="a trtexec cross-check (panoptic-deploy trtexec) to show; repeatable")  # fmt: skip
    p.add_argument("bench", nargs="+", help="benchmark JSON files")
    p.set_defaults(func=_cmd_report)


def _cmd_trtexec(args: argparse.Namespace) -> int:
    from panoptic_deploy.engines.trtexec import run_trtexec, write_trtexec_check

    check_output("--output", args.output, [args.engine])
    check, _ = run_trtexec(args.engine, iterations=args.iterations, cuda_graph=args.cuda_graph)
    write_trtexec_check(check, args.output)
    print(f"{args.engine}: trtexec GPU compute median {check.gpu_compute_median_ms} ms -> {args.output}")
    for warning in check.warnings:
        print(f"{args.engine}: trtexec warned: {warning}")
    return 0


def _add_trtexec(sub: Subparsers) -> None:
    p = sub.add_parser("trtexec", help="time a TensorRT engine with NVIDIA trtexec (must be on PATH)")
    p.add_argument("engine", help="TensorRT engine (plan) file")
    p.add_argument("--output", required=True, help="cross-check .json (for report --trtexec)")
    p.add_argument("--iterations", type=int, default=200, help="minimum timed inferences (default 200)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay a CUDA graph (trtexec 10.x: --useCudaGraph; 11.x: default)")  # fmt: skip
    p.set_defaults(func=_cmd_trtexec)


def add_parsers(sub: Subparsers) -> None:
    """Register the stage subcommands, in pipeline order (the README's stage list)."""
    _add_export(sub)
    _add_simplify(sub)
    _add_fp16(sub)
    _add_calibrate(sub)
    _add_int8(sub)
    _add_engine(sub)
    _add_reference(sub)
    _add_bench(sub)
    _add_report(sub)
    _add_trtexec(sub)
