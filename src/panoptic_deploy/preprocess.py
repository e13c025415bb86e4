"""Test-time pre-processing exactly as the official pipeline (spec §2).

Decode with PIL (EXIF orientation applied) -> BGR uint8 -> ResizeShortestEdge with PIL bilinear on uint8
-> float CHW -> (x - mean) / std per channel in tensor order -> zero-pad bottom/right to a multiple of 32.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from panoptic_deploy.errors import ImageError
from panoptic_deploy.modeling.panoptic_fcn import InputParams


@dataclass(frozen=True)
class PreparedImage:
    """A network input and the sizes post-processing needs.

    tensor: 1×3×H_in×W_in float32; image_size: (h, w) after resize, before padding; orig_size: (h, w) of
    the decoded image.
    """

    tensor: torch.Tensor
    image_size: tuple[int, int]
    orig_size: tuple[int, int]


def read_image(path: str | os.PathLike[str], input_format: str = "BGR") -> np.ndarray:
    """Decode an image file to H×W×3 uint8 in ``input_format`` channel order (EXIF orientation applied)."""
    try:
        with Image.open(path) as opened:
            rgb = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such image file") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1]) if input_format == "BGR" else rgb


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """ResizeShortestEdge's output (h, w): short side ``min_size``, long side at most ``max_size``."""
    scale = min_size / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def padded_shape(height: int, width: int, divisibility: int = 32) -> tuple[int, int]:
    """Smallest multiple of ``divisibility`` at or above each side."""
    return math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility


def network_input_shape(height: int, width: int, params: InputParams) -> tuple[int, int]:
    """Padded network input (H_in, W_in) for an original image of ``height`` × ``width``."""
    return padded_shape(
        *resized_shape(height, width, params.min_size, params.max_size), params.size_divisibility
    )


def resize_image(image: np.ndarray, params: InputParams) -> np.ndarray:
    """Resize H×W×3 uint8 with PIL bilinear (antialiased when shrinking), as detectron2 does."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], params.min_size, params.max_size)
    if (new_h, new_w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalize_and_pad(resized: np.ndarray, params: InputParams) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H_in×W_in float32: per-channel (x - mean) / std, then zero padding."""
    x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(torch.float32)
    mean = torch.tensor(params.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(params.pixel_std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean) / std
    height, width = x.shape[-2:]
    pad_h, pad_w = padded_shape(height, width, params.size_divisibility)
    out = torch.zeros(1, 3, pad_h, pad_w, dtype=torch.float32)
    out[0, :, :height, :width] = x
    return out


def prepare_image(image: np.ndarray, params: InputParams) -> PreparedImage:
    """Decoded H×W×3 uint8 (in the model's channel order) -> :class:`PreparedImage`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"expected an H×W×3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    resized = resize_image(image, params)
    return PreparedImage(
        normalize_and_pad(resized, params),
        (resized.shape[0], resized.shape[1]),
        (image.shape[0], image.shape[1]),
    )
