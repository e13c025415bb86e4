"""What every subcommand shares: output checks before any work, the config overrides, the category set."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def check_output(option: str, path: str | None, inputs: Iterable[str | None]) -> None:
    """One-line OutputError, before any work, if the output file ``path`` is a folder or one of ``inputs``."""
    if path is None:
        return
    from panoptic_deploy.outputs import output_file, refuse_overwriting_inputs

    output_file(path, option)
    refuse_overwriting_inputs([path], inputs)


def input_hw(
    values: Sequence[int] | None,
    config: str,
    image: str,
    opts: Sequence[str],
    buckets: Sequence[tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """``--input-hw`` if given, else the network input of ``image`` under the config's test resize (its
    padded size, or the smallest of ``buckets`` holding it)."""
    from panoptic_deploy.spec import ModelSpec

    if values is not None:
        return int(values[0]), int(values[1])
    return ModelSpec.of(config, opts).input_hw_for(image, buckets)


def add_buckets(parser: argparse.ArgumentParser) -> None:
    """``--bucket H W`` (the config's ``model.input_sizes: {buckets: ...}``), repeatable."""
    parser.add_argument("--bucket", action="append", type=int, nargs=2, metavar=("H", "W"), dest="buckets",
                        help="size bucket (model.input_sizes: {buckets: ...}): each image is padded into the "
                        "smallest (area) holding it, which must be the model's input size; "
                        "repeatable")  # fmt: skip


def buckets(args: argparse.Namespace) -> tuple[tuple[int, int], ...] | None:
    """The ``--bucket`` sizes, None without any."""
    return None if args.buckets is None else tuple((int(h), int(w)) for h, w in args.buckets)


def add_int8_exclusions(parser: argparse.ArgumentParser) -> None:
    """``--exclude-op-type`` / ``--exclude-node`` (the config's ``int8.exclude_op_types`` /
    ``exclude_nodes``), the same on every subcommand that quantizes."""
    parser.add_argument("--exclude-op-type", action="append", default=[], metavar="OP",
                        help="ONNX op type left unquantized (int8.exclude_op_types); repeatable")  # fmt: skip
    parser.add_argument("--exclude-node", action="append", default=[], metavar="REGEX",
                        help="node names (full match) left unquantized (int8.exclude_nodes); "
                        "repeatable")  # fmt: skip


def add_opts(parser: argparse.ArgumentParser) -> None:
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


def add_categories(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--categories",
        default="coco",
        metavar="coco|JSON",
        help="the model's category set: coco (default) or a JSON file with a COCO panoptic 'categories' "
        "list (e.g. a generated dataset's panoptic.json); the config's head sizes must fit it",
    )
