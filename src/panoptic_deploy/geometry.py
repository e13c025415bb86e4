"""Image sizes and the test-resize geometry, without torch or numpy: what the workflow plan needs to group
images into static-size branches (``panoptic_deploy.plan``) while ``snakemake -n`` stays light.

:func:`padded_input_size` is the one rule that maps an image to its static network input (its branch): the
plan groups images by it and the jobs (through :func:`panoptic_deploy.preprocess.network_input_shape`) pad
and check by it. :mod:`panoptic_deploy.preprocess` re-exports :func:`resized_shape` and :func:`padded_shape`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from panoptic_deploy.errors import ImageError, NoBucketError

Size = tuple[int, int]  # (height, width)

# The network's input must be a multiple of its coarsest FPN stride (p5: 32); test_plan checks it against
# modeling.panoptic_fcn.LEVEL_STRIDES.
SIZE_DIVISIBILITY = 32

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height

# A file cut short (an interrupted copy or download) still has a valid header; its end marker is missing.
# Reading the last bytes finds that without decoding the pixels (the jobs decode them).
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"
_TAIL_BYTES = 64


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """ResizeShortestEdge's output (h, w): short side ``min_size``, long side at most ``max_size``.

    :class:`ImageError` if a side would round to 0 pixels: an aspect ratio above about ``2 * max_size`` : 1
    (1332:1 at the 400/666 test resize) cannot be fed to the network.
    """
    if height < 1 or width < 1:
        raise ImageError(f"image of {width}×{height} pixels (W×H) is empty")
    scale = min_size / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    out_h, out_w = int(new_h + 0.5), int(new_w + 0.5)
    if out_h < 1 or out_w < 1:
        raise ImageError(
            f"image of {width}×{height} pixels (W×H) has too extreme an aspect ratio: the test resize "
            f"(short side {min_size}, long side at most {max_size}) would make it {out_w}×{out_h}; "
            f"at most about {2 * max_size}:1 is possible"
        )
    return out_h, out_w


def padded_shape(height: int, width: int, divisibility: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    """Smallest multiple of ``divisibility`` at or above each side."""
    return math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility


def smallest_bucket(padded: Size, buckets: Sequence[Size]) -> Size | None:
    """The bucket of least area (H·W) with both sides at least ``padded``'s; among equal areas the first
    listed. None if no bucket holds ``padded``."""
    holding = [(int(h), int(w)) for h, w in buckets if h >= padded[0] and w >= padded[1]]
    return min(holding, key=lambda hw: hw[0] * hw[1]) if holding else None  # min keeps the first of ties


def padded_input_size(
    height: int,
    width: int,
    min_size: int,
    max_size: int,
    buckets: Sequence[Size] | None = None,
    divisibility: int = SIZE_DIVISIBILITY,
) -> Size:
    """Static network input (H, W) of an original ``height`` × ``width`` image under the test resize.

    Without ``buckets``: the resized image padded to a multiple of ``divisibility`` (one branch per padded
    size). With ``buckets`` ([H, W] sizes): the :func:`smallest_bucket` holding that padded size, into which
    the image is zero-padded bottom/right; :class:`NoBucketError` if none holds it.
    """
    resized = resized_shape(height, width, min_size, max_size)
    padded = padded_shape(*resized, divisibility)
    if buckets is None:
        return padded
    bucket = smallest_bucket(padded, buckets)
    if bucket is None:
        raise NoBucketError(
            f"image of {width}×{height} pixels (W×H) pads to network input {padded[0]}x{padded[1]} "
            f"(H x W), which none of the size buckets {', '.join(f'{h}x{w}' for h, w in buckets)} holds"
        )
    return bucket


def image_header_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) as ``preprocess.read_image`` decodes it (EXIF orientation applied), from the header.

    :class:`ImageError` for a missing file, a file Pillow cannot identify, and a JPEG or PNG whose end marker
    is missing (cut short): the common ways a folder holds a non-image, caught without decoding pixels.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such image file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused: {' '.join(str(exc).split())}") from exc
    except OSError as exc:  # UnidentifiedImageError is an OSError
        raise ImageError(f"{path}: cannot read image ({' '.join(str(exc).split())})") from exc
    end = {"JPEG": _JPEG_END, "PNG": _PNG_END}.get(kind or "")
    if end is not None:
        with Path(path).open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = file.read()
        if end not in tail:
            # Some writers append data after the end marker: only a full decode tells those from a cut file.
            try:
                with Image.open(path) as image:
                    image.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError(f"{path}: {kind} file is truncated ({' '.join(str(exc).split())})") from exc
    return height, width
