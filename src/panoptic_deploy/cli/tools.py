"""Subcommands around the deployment pipeline: synthetic weights and datasets, training, prediction, PQ,
INT8 debugging."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from panoptic_deploy.cli.common import add_categories, add_int8_exclusions, add_opts, check_output
from panoptic_deploy.defaults import config_schema, schema_default

if TYPE_CHECKING:
    from panoptic_deploy.cli.common import Subparsers


def _cmd_make_weights(args: argparse.Namespace) -> int:
    from panoptic_deploy.weights import write_synthetic_checkpoint

    check_output("--output", args.output, [args.config])
    write_synthetic_checkpoint(args.config, args.seed, args.output, opts=args.opts)
    print(f"wrote {args.output}")
    return 0


def _add_make_weights(sub: Subparsers) -> None:
    p = sub.add_parser("make-weights", help="write deterministic synthetic weights for a config")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--seed", type=int, required=True, help="recipe seed (the parity references use 1 and 3)")
    p.add_argument("--output", required=True, help="output checkpoint (.pth, detectron2 format)")
    add_opts(p)
    p.set_defaults(func=_cmd_make_weights)


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


def _add_make_dataset(sub: Subparsers) -> None:
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


def _add_train(sub: Subparsers) -> None:
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
    add_opts(p)
    p.set_defaults(func=_cmd_train)


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


def _add_predict(sub: Subparsers) -> None:
    p = sub.add_parser("predict", help="panoptic prediction to COCO panoptic PNG + JSON per image")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output folder for NAME.png and NAME.json")
    add_opts(p)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_categories(p)
    p.add_argument("--coco-json", default=None, metavar="FILE",
                   help="also write one COCO panoptic predictions JSON for all images (dataset category ids; "
                   "'pq --pred-json FILE --pred-dir OUTPUT' reads it)")  # fmt: skip
    p.add_argument("images", nargs="+", help="input images")
    p.set_defaults(func=_cmd_predict)


def run_pq_command(
    *,
    gt_json: str,
    gt_dir: str,
    pred_json: str,
    pred_dir: str,
    json_out: str | None = None,
    workers: int | None = None,
) -> int:
    """``panoptic-deploy pq``: print the table, optionally write the JSON result; returns the exit code."""
    import json

    from panoptic_deploy.fileio import write_text_atomic
    from panoptic_deploy.pq import compute_pq

    result = compute_pq(gt_json, gt_dir, pred_json, pred_dir, workers=workers)
    print(result.format_table())
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {json_out}", file=sys.stderr)
    return 0


def _cmd_pq(args: argparse.Namespace) -> int:
    check_output("--json", args.json, [args.gt_json, args.pred_json])
    return run_pq_command(
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        pred_json=args.pred_json,
        pred_dir=args.pred_dir,
        json_out=args.json,
        workers=args.workers,
    )


def _add_pq(sub: Subparsers) -> None:
    p = sub.add_parser("pq", help="panoptic quality (PQ/SQ/RQ) as the COCO panoptic API computes it")
    p.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth PNGs")
    p.add_argument("--pred-json", required=True, help="prediction COCO panoptic JSON")
    p.add_argument("--pred-dir", required=True, help="folder of prediction PNGs")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.set_defaults(func=_cmd_pq)


def _cmd_int8_debug(args: argparse.Namespace) -> int:
    from panoptic_deploy.export import onnx_input_hw
    from panoptic_deploy.int8_debug import debug_int8, write_int8_debug
    from panoptic_deploy.int8_search import panoptic_fidelity_evaluator, sensitivity_search
    from panoptic_deploy.precision import calibration_batches

    if args.max_evaluations > 0 and args.reference is None:
        sys.exit("int8-debug: the sensitivity search needs --reference (or pass --max-evaluations 0)")
    check_output("--output", args.output, [args.fp32, args.int8, args.cache, args.reference, args.config])
    images = args.images[: args.count]
    batches = calibration_batches(args.config, images, onnx_input_hw(args.fp32), args.opts)
    result = debug_int8(args.fp32, args.int8, batches, threads=args.threads)
    print("\n".join(result.worst_lines(args.top)))
    if args.max_evaluations > 0:
        evaluate = panoptic_fidelity_evaluator(
            args.reference, args.config, args.opts, args.threads, args.search_images
        )
        search = sensitivity_search(
            args.fp32, args.cache, args.int8, evaluate, args.budget, max_nodes=args.max_nodes,
            max_evaluations=args.max_evaluations, exclude_op_types=args.exclude_op_type,
            exclude_nodes=args.exclude_node,
        )  # fmt: skip
        result = replace(result, search=search)
        print(f"PQ points lost vs torch FP32: {search.initial_loss:.2f} -> {search.final_loss:.2f} "
              f"(budget {search.budget}; {'passed' if search.passed else 'not passed'})")  # fmt: skip
        print(search.config_snippet(), end="")
    write_int8_debug(result, args.output)
    print(f"wrote {args.output}")
    return 0


def _add_int8_debug(sub: Subparsers) -> None:
    p = sub.add_parser(
        "int8-debug",
        help="FP32 vs INT8 tensor by tensor (SQNR per Q/DQ pair, module names), then a sensitivity search",
    )
    p.add_argument("--fp32", required=True, help="FP32 .onnx the INT8 model was quantized from (simplified)")
    p.add_argument("--int8", required=True, help="INT8 Q/DQ .onnx to debug (--high-precision fp32 on a CPU)")
    p.add_argument("--cache", required=True, help="the calibration cache the INT8 model was made with")
    p.add_argument("--reference", default=None,
                   help="torch FP32 reference .npz, needed by the search (its image paths are relative "
                   "to the folder it was made in: run from there)")  # fmt: skip
    p.add_argument("--config", required=True, help="config of the model (pre- and post-processing)")
    p.add_argument("--output", required=True, help="result JSON (tensors worst first, the search's steps)")
    p.add_argument("--count", type=int, default=4, help="images of IMAGES to compare on (default 4)")
    p.add_argument("--top", type=int, default=10, help="worst tensors to print (default 10)")
    # The INT8 gate's default (gates.int8.max_pq_drop in the schema): the search aims at what the gate checks.
    int8_gate = config_schema()["properties"]["gates"]["properties"]["int8"]
    budget = int8_gate["properties"]["max_pq_drop"]["default"]
    p.add_argument("--budget", type=float, default=budget,
                   help=f"PQ points lost vs torch FP32 the search stops at (default {budget})")  # fmt: skip
    p.add_argument("--max-nodes", type=int, default=None,
                   help="nodes the search may exclude (default: half the quantized nodes)")  # fmt: skip
    evaluations = schema_default("int8", "search_evaluations")
    p.add_argument(
        "--max-evaluations",
        type=int,
        default=evaluations,
        help="model evaluations the search may spend (0: no search; default %(default)s)",
    )
    p.add_argument("--search-images", type=int, default=None,
                   help="reference images each search evaluation runs on (default: all)")  # fmt: skip
    add_int8_exclusions(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    add_opts(p)
    p.add_argument("images", nargs="+", help="calibration images (the first --count are compared)")
    p.set_defaults(func=_cmd_int8_debug)


def _cmd_compare_timings(args: argparse.Namespace) -> int:
    from panoptic_deploy.report.stability import bench_files, compare_runs

    comparison = compare_runs(bench_files(args.run_a), bench_files(args.run_b), args.tolerance)
    print("\n".join(comparison.lines()))
    return 1 if comparison.failures else 0


def _add_compare_timings(sub: Subparsers) -> None:
    from panoptic_deploy.report.stability import DEFAULT_TOLERANCE

    p = sub.add_parser(
        "compare-timings",
        help="compare the network p50 of two runs' benchmark files, row by row (exit 1: an unflagged row "
        "differs by more than the tolerance)",
    )
    p.add_argument("run_a", help="folder of run A's benchmark JSONs (e.g. a copy of results/bench)")
    p.add_argument("run_b", help="folder of run B's benchmark JSONs")
    tolerance = DEFAULT_TOLERANCE
    p.add_argument("--tolerance", type=float, default=tolerance,
                   help=f"largest relative p50 change of an unflagged row (default {tolerance})")  # fmt: skip
    p.set_defaults(func=_cmd_compare_timings)


def add_parsers(sub: Subparsers) -> None:
    """Register the subcommands of this module, in help order."""
    _add_make_weights(sub)
    _add_make_dataset(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_pq(sub)
    _add_int8_debug(sub)
    _add_compare_timings(sub)
