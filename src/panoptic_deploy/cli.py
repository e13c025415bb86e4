"""The ``panoptic-deploy`` command line.

Each subcommand parses its arguments here and calls one package function; heavy modules are imported
inside the handlers so that ``panoptic-deploy --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from panoptic_deploy import __version__
from panoptic_deploy.errors import PanopticDeployError


def _check_output(option: str, path: str | None, inputs: Iterable[str | None]) -> None:
    """One-line OutputError, before any work, if the output file ``path`` is a folder or one of ``inputs``."""
    if path is None:
        return
    from panoptic_deploy.outputs import output_file, refuse_overwriting_inputs

    output_file(path, option)
    refuse_overwriting_inputs([path], inputs)


def _cmd_make_weights(args: argparse.Namespace) -> int:
    from panoptic_deploy.weights import write_synthetic_checkpoint

    _check_output("--output", args.output, [args.config])
    write_synthetic_checkpoint(args.config, args.seed, args.output, opts=args.opts)
    print(f"wrote {args.output}")
    return 0


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from panoptic_deploy.dataset import DEFAULT_SIZE, make_dataset, parse_size

    size = parse_size(args.size) if args.size else DEFAULT_SIZE
    summary = make_dataset(
        args.seed, args.count, args.output, size, image_format=args.image_format, force=args.force
    )
    print(
        f"wrote {summary.output}: {summary.images} scenes of {size[0]}x{size[1]}, {summary.segments} segments"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from panoptic_deploy.predict import predict_files

    failures = predict_files(
        config=args.config,
        weights=args.weights,
        images=args.images,
        output_dir=args.output,
        opts=args.opts,
        threads=args.threads,
        progress=not args.no_progress,
        categories=args.categories,
        coco_json=args.coco_json,
    )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_pq(args: argparse.Namespace) -> int:
    from panoptic_deploy.pq import run_pq_command

    _check_output("--json", args.json, [args.gt_json, args.pred_json])
    return run_pq_command(
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        pred_json=args.pred_json,
        pred_dir=args.pred_dir,
        json_out=args.json,
        workers=args.workers,
    )


def _input_hw(values: Sequence[int] | None, config: str, image: str, opts: Sequence[str]) -> tuple[int, int]:
    from panoptic_deploy.export import input_hw_for

    if values is not None:
        return int(values[0]), int(values[1])
    return input_hw_for(config, image, opts)


def _cmd_export(args: argparse.Namespace) -> int:
    from panoptic_deploy.compare import Tolerance
    from panoptic_deploy.export import DEFAULT_EXPORT_TOLERANCE, export_onnx

    _check_output("--output", args.output, [args.config, args.weights, args.image])
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
        _input_hw(args.input_hw, args.config, args.image, args.opts),
        args.image,
        opts=args.opts,
        opset=args.opset,
        exporter=args.exporter,
        deform_conv=args.deform_conv,
        tolerance=tolerance,
        threads=args.threads,
    )
    print(report.summary())
    return 0


def _cmd_simplify(args: argparse.Namespace) -> int:
    from panoptic_deploy.export import onnx_input_hw, prepare_verify_inputs, simplify_onnx

    _check_output("--output", args.output, [args.input, args.config, *args.images])
    hw = onnx_input_hw(args.input)
    inputs = prepare_verify_inputs(args.config, args.images, hw, args.opts)
    report = simplify_onnx(args.input, args.output, inputs, simplifier=args.simplifier, threads=args.threads)
    print(report.summary())
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from panoptic_deploy.bench import write_reference
    from panoptic_deploy.categories import load_category_set

    _check_output("--output", args.output, [args.config, args.weights, args.categories, *args.images])
    reference = write_reference(
        args.config,
        args.weights,
        args.images,
        args.output,
        _input_hw(args.input_hw, args.config, args.images[0], args.opts),
        opts=args.opts,
        model_name=args.model,
        threads=args.threads,
        categories=load_category_set(args.categories),
    )
    print(
        f"wrote {args.output}: torch FP32 reference of {reference.model} on {len(reference.images)} image(s)"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from panoptic_deploy.bench import run_bench

    sidecar = args.sidecar or (f"{args.engine}.json" if args.engine else None)  # run_bench's default
    inputs = [args.config, args.reference, args.weights, args.engine, sidecar, args.gt_json]
    _check_output("--output", args.output, [*inputs, *args.images])
    result = run_bench(
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
        threads=args.threads,
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        cuda_graph=args.cuda_graph,
        compile_mode=args.compile_mode,
        allow_tf32=None if args.tf32 is None else args.tf32 == "on",
    )
    net = result.latency.network
    pan = result.accuracy.panoptic
    print(
        f"{result.model} {result.backend} {result.precision} on {result.device_name}: network p50 "
        f"{net.p50_ms:.1f} ms (p90 {net.p90_ms:.1f}, p99 {net.p99_ms:.1f}), "
        f"{result.throughput_ips:.2f} img/s; "
        f"PQ vs torch FP32 {100 * pan.pq:.2f}, pixel agreement {100 * pan.pixel_agreement:.2f}%"
    )
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from panoptic_deploy.bench import BenchError
    from panoptic_deploy.outputs import output_folder, refuse_overwriting_inputs
    from panoptic_deploy.report import PLOT_ACCURACY_SPEED, PLOT_LATENCY, skipped_from_json, write_report

    inputs = [*args.bench, args.skipped, *args.trtexec]
    _check_output("--output", args.output, inputs)
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


def _cmd_trtexec(args: argparse.Namespace) -> int:
    from panoptic_deploy.engines.trtexec import run_trtexec, write_trtexec_check

    _check_output("--output", args.output, [args.engine])
    check, _ = run_trtexec(args.engine, iterations=args.iterations, cuda_graph=args.cuda_graph)
    write_trtexec_check(check, args.output)
    print(f"{args.engine}: trtexec GPU compute median {check.gpu_compute_median_ms} ms -> {args.output}")
    for warning in check.warnings:
        print(f"{args.engine}: trtexec warned: {warning}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from panoptic_deploy.training.train import TrainOptions, train

    work_dir = args.work_dir if args.work_dir is not None else f"{args.output}.work"
    result = train(
        args.config,
        args.dataset,
        args.output,
        work_dir,
        opts=args.opts,
        options=TrainOptions(
            device=args.device,
            workers=args.workers,
            max_minutes=args.max_minutes,
            seed=args.seed,
            half_output=args.half,
            progress=not args.no_progress,
        ),
    )
    state = "finished" if result.finished else "stopped (run the same command again to resume)"
    print(f"iteration {result.iteration}: {state}; wrote {args.output}; work folder {work_dir}")
    return 0


def _add_opts(parser: argparse.ArgumentParser) -> None:
    """detectron2-style ``KEY VALUE`` config overrides, the same on every subcommand."""
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        # nargs="*" also takes positional image paths that follow; say how to end the list.
        help="config overrides; they take every word up to the next option, so end them with -- or put "
        "another option between them and positional arguments",
    )


def _add_categories(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--categories",
        default="coco",
        metavar="coco|JSON",
        help="the model's category set: coco (default) or a JSON file with a COCO panoptic 'categories' "
        "list (e.g. a generated dataset's panoptic.json); the config's head sizes must fit it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panoptic-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-weights", help="write deterministic synthetic weights for a config")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--seed", type=int, required=True, help="recipe seed (the parity references use 1 and 3)")
    p.add_argument("--output", required=True, help="output checkpoint (.pth, detectron2 format)")
    _add_opts(p)
    p.set_defaults(func=_cmd_make_weights)

    p = sub.add_parser(
        "make-dataset", help="generate a deterministic panoptic dataset (COCO panoptic layout)"
    )
    p.add_argument(
        "--seed", type=int, required=True, help="dataset seed (scene i depends on seed and i only)"
    )
    p.add_argument("--count", type=int, required=True, help="number of scenes")
    p.add_argument("--output", required=True, help="output folder (images/, panoptic/, panoptic.json)")
    p.add_argument("--size", default=None, metavar="HxW", help="scene size (default 256x320)")
    p.add_argument("--image-format", choices=["png", "jpg"], default="png",
                   help="scene files: png (default; lossless) or jpg (quality 95, smaller)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace a dataset already in --output")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("train", help="train PanopticFCN on a COCO-panoptic folder (resumable)")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument(
        "--dataset", required=True, nargs="+", help="COCO panoptic folder (images/, panoptic/, panoptic.json)"
    )
    p.add_argument("--output", required=True, help="folded detectron2-format checkpoint written at the end")
    p.add_argument(
        "--work-dir", default=None, help="checkpoints + loss log; resumes from it (default OUTPUT.work)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=4, help="data-loader worker processes")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (checkpoint + output) after this")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    p.add_argument("--half", action="store_true", help="store the output checkpoint as float16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_opts(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="panoptic prediction to COCO panoptic PNG + JSON per image")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output folder for NAME.png and NAME.json")
    _add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_categories(p)
    p.add_argument("--coco-json", default=None, metavar="FILE",
                   help="also write one COCO panoptic predictions JSON for all images (dataset category ids; "
                   "'pq --pred-json FILE --pred-dir OUTPUT' reads it)")  # fmt: skip
    p.add_argument("images", nargs="+", help="input images")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("pq", help="panoptic quality (PQ/SQ/RQ) as the COCO panoptic API computes it")
    p.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth PNGs")
    p.add_argument("--pred-json", required=True, help="prediction COCO panoptic JSON")
    p.add_argument("--pred-dir", required=True, help="folder of prediction PNGs")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.set_defaults(func=_cmd_pq)

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
    _add_opts(p)
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], default="auto",
                   help="auto: dynamo, legacy TorchScript exporter if dynamo raises")  # fmt: skip
    p.add_argument("--deform-conv", choices=["grid_sample", "onnx_deformconv"], default="grid_sample",
                   help="how DCNv2 layers are written (onnx_deformconv needs opset >= 19)")  # fmt: skip
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-3)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default 1e-3)")
    p.add_argument("--max-flips", type=int, default=None, help="allowed bool/int mismatches (default 0)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for the check")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "simplify", help="simplify an exported ONNX model with onnxsim or onnxslim, checked numerically"
    )
    p.add_argument("--input", required=True, help="exported .onnx")
    p.add_argument("--output", required=True, help="simplified .onnx")
    p.add_argument("--simplifier", choices=["onnxsim", "onnxslim"], default="onnxsim",
                   help="the simplifier (default onnxsim); recorded in the model's metadata")  # fmt: skip
    p.add_argument("--config", required=True, help="config of the model (pre-processing of the check images)")
    _add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for the check")
    p.add_argument("images", nargs="+", help="images to check on (must pad to the model's input size)")
    p.set_defaults(func=_cmd_simplify)

    p = sub.add_parser("reference", help="torch FP32 reference outputs of the evaluation images (.npz)")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output .npz")
    p.add_argument(
        "--input-hw", type=int, nargs=2, metavar=("H", "W"), help="network input (default: first image's)"
    )
    p.add_argument("--model", default=None, help="model name to record (default: the output file stem)")
    _add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    _add_categories(p)
    p.add_argument("images", nargs="+", help="evaluation images (all must pad to the same size)")
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser("bench", help="benchmark one backend x precision against the torch FP32 reference")
    p.add_argument("--backend", required=True, choices=["torch", "torch_compile", "onnxruntime", "tensorrt"])
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8"])
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--reference", required=True, help="reference .npz from 'panoptic-deploy reference'")
    p.add_argument("--output", default=None, help="result JSON (validated against the schema)")
    p.add_argument("--weights", default=None, help="checkpoint (torch backends)")
    p.add_argument("--engine", default=None, help="engine file (onnxruntime, tensorrt)")
    p.add_argument("--sidecar", default=None, help="engine sidecar (default: ENGINE.json)")
    p.add_argument("--model", default=None, help="model name (default: the reference's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda where it applies")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs (default 1)")
    p.add_argument("--iterations", type=int, default=10, help="timed runs (default 10)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (torch and ONNX Runtime)")
    p.add_argument("--gt-json", default=None, help="COCO panoptic ground-truth JSON (optional)")
    p.add_argument("--gt-dir", default=None, help="folder of ground-truth PNGs (with --gt-json)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay a CUDA graph")
    p.add_argument("--compile-mode", default="default",
                   help="torch_compile: torch.compile mode: default, reduce-overhead (CUDA graphs), "
                   "max-autotune, max-autotune-no-cudagraphs")  # fmt: skip
    p.add_argument("--tf32", choices=["on", "off"], default=None,
                   help="torch on CUDA: TF32 convolutions/matmuls (default: PyTorch's settings)")  # fmt: skip
    _add_opts(p)
    p.add_argument("images", nargs="*", help="evaluation images (default: the reference's)")
    p.set_defaults(func=_cmd_bench)

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

    p = sub.add_parser("trtexec", help="time a TensorRT engine with NVIDIA trtexec (must be on PATH)")
    p.add_argument("engine", help="TensorRT engine (plan) file")
    p.add_argument("--output", required=True, help="cross-check .json (for report --trtexec)")
    p.add_argument("--iterations", type=int, default=200, help="minimum timed inferences (default 200)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay a CUDA graph (trtexec 10.x: --useCudaGraph; 11.x: default)")  # fmt: skip
    p.set_defaults(func=_cmd_trtexec)
    return parser


def _output_folders(args: argparse.Namespace) -> list[Path]:
    """The folders a command writes into: ``--output``'s (predict: the folder itself), report's plot folder
    and pq's ``--json``'s."""
    folders: list[Path] = []
    output = getattr(args, "output", None)
    if output:
        folders.append(Path(output) if args.command == "predict" else Path(output).parent)
    if args.command == "report":
        folders.append(Path(args.plots_dir) if args.plots_dir else Path(args.output).with_suffix(""))
    if getattr(args, "json", None):
        folders.append(Path(args.json).parent)
    return folders


def sweep_output_folders(args: argparse.Namespace) -> None:
    """Remove what killed runs left in the command's output folders: the package's temporary files whose
    writer no longer runs (:func:`panoptic_deploy.fileio.sweep_stale_temps`; a live writer's are kept)."""
    from panoptic_deploy.fileio import sweep_stale_temps

    for folder in dict.fromkeys(_output_folders(args)):
        removed = sweep_stale_temps(folder, recursive=False)
        if removed:
            print(
                f"note: removed {len(removed)} temporary file(s) left in {folder} by killed runs",
                file=sys.stderr,
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep_output_folders(args)
        return int(args.func(args))
    except PanopticDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system problem with a path the user gave (permissions, disk full, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
