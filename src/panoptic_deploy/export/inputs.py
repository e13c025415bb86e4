"""Input sizes and check images of the export stage: the static size a model is exported at, its artefact
name, and the prepared images the export and simplification are checked on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy.errors import ExportError, PanopticDeployError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.geometry import Size, image_header_size
from panoptic_deploy.modeling.panoptic_fcn import input_params_from_config
from panoptic_deploy.onnx_utils import summarize_onnx
from panoptic_deploy.preprocess import network_input_shape, prepare_at_size
from panoptic_deploy.spec import ModelSpec


def input_hw_for(cfg: Any, image_path: PathLike, opts: Sequence[str] = ()) -> tuple[int, int]:
    """Padded network input (H, W) of ``image_path`` under the config's test resize.

    ``cfg``: a :class:`ModelSpec`, a loaded config (:func:`panoptic_deploy.config.load_config`) or a config
    file path (then ``opts`` are its overrides).
    """
    if isinstance(cfg, (str, os.PathLike, ModelSpec)):
        return ModelSpec.of(cfg, opts).input_hw_for(image_path)
    return network_input_shape(*image_header_size(image_path), input_params_from_config(cfg))


def model_name(base: str, input_hw: Sequence[int]) -> str:
    """Artefact name of a model at one input size: ``<base>_<H>x<W>`` (e.g. ``demo_416x544``)."""
    height, width = (int(v) for v in input_hw)
    return f"{base}_{height}x{width}"


def prepare_verify_inputs(
    config: ModelSpec | PathLike,
    images: Sequence[PathLike],
    input_hw: Sequence[int],
    opts: Sequence[str] = (),
    buckets: Sequence[Size] | None = None,
) -> list[NDArray[np.float32]]:
    """Network inputs (1×3×H×W float32) of ``images`` for :func:`simplify_onnx`; each must pad to
    ``input_hw`` (with ``buckets``: have it as its smallest bucket). ``config``: a :class:`ModelSpec` or a
    config file with ``opts``."""
    params = ModelSpec.of(config, opts).input_params
    return [prepare_at_size(p, params, input_hw, buckets).tensor.numpy() for p in images]


def onnx_input_hw(path: PathLike) -> tuple[int, int]:
    """(H, W) of the static 1×3×H×W input of an exported model (weights are not loaded)."""
    try:
        shape = summarize_onnx(path).static_input_shape
    except PanopticDeployError as exc:
        raise ExportError(str(exc)) from exc
    if len(shape) != 4:
        raise ExportError(f"{path}: input shape {list(shape)} is not 1x3xHxW")
    return shape[2], shape[3]
