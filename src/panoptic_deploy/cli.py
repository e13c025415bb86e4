"""The ``panoptic-deploy`` command line.

Each subcommand parses its arguments here and calls one package function; heavy modules are imported
inside the handlers so that ``panoptic-deploy --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from panoptic_deploy import __version__
from panoptic_deploy.errors import PanopticDeployError


def _cmd_make_weights(args: argparse.Namespace) -> int:
    from panoptic_deploy.weights import write_synthetic_checkpoint

    write_synthetic_checkpoint(args.config, args.seed, args.output, opts=args.opts)
    print(f"wrote {args.output}")
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
    )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_pq(args: argparse.Namespace) -> int:
    from panoptic_deploy.pq import run_pq_command

    return run_pq_command(
        gt_json=args.gt_json,
        gt_dir=args.gt_dir,
        pred_json=args.pred_json,
        pred_dir=args.pred_dir,
        json_out=args.json,
        workers=args.workers,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panoptic-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-weights", help="write deterministic synthetic weights for a config")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--seed", type=int, required=True, help="recipe seed (the parity references use 1 and 3)")
    p.add_argument("--output", required=True, help="output checkpoint (.pth, detectron2 format)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    p.set_defaults(func=_cmd_make_weights)

    p = sub.add_parser("predict", help="panoptic prediction to COCO panoptic PNG + JSON per image")
    p.add_argument("--config", required=True, help="PanopticFCN/detectron2 YAML config")
    p.add_argument("--weights", required=True, help="checkpoint: detectron2 .pth or model-zoo .pkl")
    p.add_argument("--output", required=True, help="output folder for NAME.png and NAME.json")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PanopticDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
