"""The ``panoptic-deploy`` command line.

Each subcommand parses its arguments and calls one package function: :mod:`~panoptic_deploy.cli.stages` has
one per pipeline stage (the rules of the workflow), :mod:`~panoptic_deploy.cli.tools` the tools around it
(weights, datasets, training, prediction, PQ). Heavy modules are imported inside the handlers so that
``panoptic-deploy --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from panoptic_deploy import __version__
from panoptic_deploy.cli import stages, tools
from panoptic_deploy.errors import PanopticDeployError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panoptic-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tools.add_parsers(sub)
    stages.add_parsers(sub)
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
