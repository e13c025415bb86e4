"""Test-time pre-processing exactly as the official pipeline (spec §2), and the fitting of images to a
model's static input size.

Decode with PIL (EXIF orientation applied) -> BGR uint8 -> ResizeShortestEdge with PIL bilinear on uint8
-> float CHW -> (x - mean) / std per channel in tensor order -> zero-pad bottom/right to a multiple of 32.

An exported model has one static input size: :func:`prepare_at_size` refuses an image whose network input
is another size (evaluation and verification images), :func:`fit_to_size` centre-crops or pads one to it
(calibration images, which need not share the evaluation images' aspect ratio). With size buckets
(config ``model.input_sizes: {buckets: ...}``) an image's network input is the smallest bucket holding its
padded size, and the image is zero-padded into it. An image's size from its header and the resize geometry
(the image -> network input rule) live in :mod:`panoptic_deploy.geometry` (torch-free, for the plan).

:func:`prepare_on_device` is the same pipeline in torch ops on any device (one host-to-device copy of the
uint8 image, fixed shapes): it differs from the host path by its resampling only (docs/pipeline.md,
"Device pre- and post-processing").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from panoptic_deploy.errors import ImageError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.geometry import Size, padded_input_size
from panoptic_deploy.geometry import padded_shape as padded_shape  # noqa: PLC0414  (re-exported)
from panoptic_deploy.geometry import resized_shape as resized_shape  # noqa: PLC0414
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


# Modes that Pillow's own conversion to RGB handles exactly as detectron2's ``read_image`` does (its
# ``convert("RGB")``): 8-bit colour or grey, palettes (their colours; transparency is dropped, as there),
# alpha dropped, 1-bit as 0/255, CMYK / YCbCr / LAB / HSV through Pillow's formulas.
_PIL_RGB_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
# 16-bit grey (PNG, TIFF, PGM): Pillow's ``convert("RGB")`` clips these to 255, i.e. all white.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any supported mode -> H×W×3 uint8 RGB, scaled, never clipped.

    * 8-bit modes, palettes, alpha, 1-bit, CMYK, YCbCr, LAB, HSV: Pillow's ``convert("RGB")`` (what the
      official pipeline feeds the network; an alpha channel is dropped, not composited).
    * 16-bit grey (``I;16*``) and 32-bit integer grey (``I``) with values in 0..65535: the high byte
      (``v >> 8``), so 65535 -> 255 and an 8-bit value stored as 16 bits (``257 v``) -> ``v``.
    * 32-bit float grey (``F``) with values in [0, 1]: ``round(255 v)``.

    Anything else (``I``/``F`` outside those ranges, NaN, other modes) raises :class:`ImageError` naming the
    mode: guessing its scale would give the network a silently wrong image.
    """
    mode = image.mode
    if mode in _PIL_RGB_MODES:
        if mode == "La":  # premultiplied alpha: Pillow converts it to RGB only through RGBA
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))
    if mode in _UINT16_MODES or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (int(values.min()) < 0 or int(values.max()) > 0xFFFF):
            raise ImageError(
                f"unsupported image mode 'I' (32-bit integer) with values {int(values.min())}..."
                f"{int(values.max())}: only 0..65535 (16-bit) is understood; convert it to 8 or 16 bits"
            )
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
    elif mode == "F":
        values = np.asarray(image)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            raise ImageError(
                f"unsupported image mode 'F' (32-bit float) with values {lo:g}..{hi:g}"
                f"{' and NaN/Inf' if not np.isfinite(values).all() else ''}: only [0, 1] is understood; "
                "convert it to 8 bits"
            )
        grey = np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image mode {mode!r}; convert it to 8-bit RGB or greyscale")
    return np.repeat(grey[:, :, None], 3, axis=2)


def read_image(path: str | os.PathLike[str], input_format: str = "BGR") -> np.ndarray:
    """Decode an image file to H×W×3 uint8 in ``input_format`` channel order (EXIF orientation applied).

    The one image reader of the package (prediction, evaluation, calibration, the workflow's start-time
    check): the whole file is decoded, so a truncated file fails here. Every failure is an
    :class:`ImageError` of one line naming the file; modes are converted by :func:`to_rgb`. Images over
    Pillow's decompression-bomb limit (``2 * Image.MAX_IMAGE_PIXELS``, about 179 Mpx) are refused before
    decoding.
    """
    try:
        with Image.open(path) as opened:
            rgb = to_rgb(ImageOps.exif_transpose(opened))
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such image file") from exc
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused: {_one_line(exc)}") from exc
    # UnidentifiedImageError, OSError (truncated), ValueError, and what else Pillow's decoders raise on
    # corrupt files (SyntaxError, struct.error, ...).
    except Exception as exc:
        raise ImageError(f"{path}: cannot decode image ({exc.__class__.__name__}: {_one_line(exc)})") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1]) if input_format == "BGR" else rgb


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def network_input_shape(
    height: int, width: int, params: InputParams, buckets: Sequence[Size] | None = None
) -> tuple[int, int]:
    """Network input (H_in, W_in) for an original image of ``height`` × ``width``: its padded size, or the
    smallest of ``buckets`` holding it (:func:`panoptic_deploy.geometry.padded_input_size`)."""
    return padded_input_size(
        height, width, params.min_size, params.max_size, buckets, params.size_divisibility
    )


def resize_image(image: np.ndarray, params: InputParams) -> np.ndarray:
    """Resize H×W×3 uint8 with PIL bilinear (antialiased when shrinking), as detectron2 does."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], params.min_size, params.max_size)
    if (new_h, new_w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalize_and_pad(
    resized: np.ndarray, params: InputParams, pad_hw: Sequence[int] | None = None
) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H_in×W_in float32: per-channel (x - mean) / std, then zero padding bottom/right
    to ``pad_hw`` (default: the next multiple of the size divisibility), which must hold the image."""
    x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(torch.float32)
    mean = torch.tensor(params.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(params.pixel_std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean) / std
    height, width = x.shape[-2:]
    pad_h, pad_w = padded_shape(height, width, params.size_divisibility) if pad_hw is None else pad_hw
    out = torch.zeros(1, 3, pad_h, pad_w, dtype=torch.float32)
    out[0, :, :height, :width] = x
    return out


def prepare_image(
    image: np.ndarray, params: InputParams, buckets: Sequence[Size] | None = None
) -> PreparedImage:
    """Decoded H×W×3 uint8 (in the model's channel order) -> :class:`PreparedImage`, padded to its
    :func:`network_input_shape` (with ``buckets``: into the smallest bucket holding it)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"expected an H×W×3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    resized = resize_image(image, params)
    pad_hw = None if buckets is None else network_input_shape(image.shape[0], image.shape[1], params, buckets)
    return PreparedImage(
        normalize_and_pad(resized, params, pad_hw),
        (resized.shape[0], resized.shape[1]),
        (image.shape[0], image.shape[1]),
    )


def prepare_at_size(
    path: PathLike, params: InputParams, input_hw: Sequence[int], buckets: Sequence[Size] | None = None
) -> PreparedImage:
    """Read and pre-process ``path``; :class:`ImageError` unless its network input (its padded size, or
    with ``buckets`` the smallest bucket holding that) equals ``input_hw``."""
    image = read_image(path, params.input_format)
    try:
        prepared = prepare_image(image, params, buckets)
    except ImageError as exc:  # no bucket holds it: name the file
        raise type(exc)(f"{path}: {exc}") from None
    got = tuple(prepared.tensor.shape[-2:])
    want = tuple(int(v) for v in input_hw)
    if got != want:
        raise ImageError(
            f"{path}: pads to network input {got[0]}x{got[1]} (H x W), the model is exported for "
            f"{want[0]}x{want[1]}"
        )
    return prepared


def fit_to_size(image: np.ndarray, params: InputParams, input_hw: Sequence[int]) -> np.ndarray:
    """1×3×H×W float32 network input of a decoded ``image`` at exactly ``input_hw``.

    The image gets the model's test resize and normalisation, as an evaluation image does; a result larger
    than the static input is centre-cropped to it, a smaller one zero-padded bottom/right.
    """
    height, width = (int(v) for v in input_hw)
    resized = resize_image(image, params)
    top = max(0, (resized.shape[0] - height) // 2)
    left = max(0, (resized.shape[1] - width) // 2)
    tensor = normalize_and_pad(resized[top : top + height, left : left + width], params).numpy()
    batch = np.zeros((1, 3, height, width), dtype=np.float32)
    batch[:, :, : tensor.shape[2], : tensor.shape[3]] = tensor
    return batch


def prepare_on_device(
    image: np.ndarray | torch.Tensor,
    params: InputParams,
    device: torch.device,
    pad_hw: Sequence[int] | None = None,
) -> torch.Tensor:
    """H×W×3 uint8 (numpy or a tensor on any device) -> 1×3×H_in×W_in float32 network input on ``device``,
    zero-padded bottom/right to ``pad_hw`` (default: the next multiple of the size divisibility; a size
    bucket must hold the resized image).

    The uint8 image is copied to ``device`` once; resize, normalise and pad run there with fixed shapes (a
    CUDA graph can capture them). The resize follows PIL's: torch's antialiased bilinear (PIL's triangle
    filter) horizontally, then vertically, each pass rounded half up and clipped to 0..255 as PIL's uint8
    passes are; PIL's fixed-point weights make the only difference (at most 2 grey levels, on 0-9% of the
    values of the demo images, docs/pipeline.md).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, torch.uint8):
        raise ImageError(f"expected an H×W×3 uint8 image, got shape {tuple(image.shape)} dtype {image.dtype}")
    pixels = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    x = pixels.to(device, non_blocking=True).permute(2, 0, 1)[None].to(torch.float32)
    height, width = int(image.shape[0]), int(image.shape[1])
    new_h, new_w = resized_shape(height, width, params.min_size, params.max_size)
    for size in ((height, new_w), (new_h, new_w)):
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            x = (x + 0.5).floor_().clamp_(0.0, 255.0)
    mean, std = _channel_constants(params.pixel_mean, params.pixel_std, x.device)
    x = (x - mean) / std
    pad_h, pad_w = padded_shape(new_h, new_w, params.size_divisibility) if pad_hw is None else pad_hw
    if pad_h < new_h or pad_w < new_w:
        raise ImageError(
            f"resized image {new_h}x{new_w} (H x W) does not fit the network input {pad_h}x{pad_w}"
        )
    return F.pad(x, (0, pad_w - new_w, 0, pad_h - new_h))


@functools.lru_cache(maxsize=8)
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """1×3×1×1 mean and std on ``device``, made once: a host-to-device copy cannot run inside a CUDA graph
    capture, so a captured :func:`prepare_on_device` must find them here from its warm-up call."""
    def channels(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    return channels(mean), channels(std)
