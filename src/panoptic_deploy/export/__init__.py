"""Export stage: the network part to ONNX at one static input size, and simplified; both checked numerically.

* :mod:`~panoptic_deploy.export.inputs`: the static input size, artefact names, the check images.
* :mod:`~panoptic_deploy.export.onnx_export`: :func:`export_onnx` (dynamo exporter, legacy fallback), kept
  only if ONNX Runtime reproduces PyTorch on a real image.
* :mod:`~panoptic_deploy.export.simplify`: :func:`simplify_onnx` (onnxsim or onnxslim), kept only if it
  reproduces the export.

Every artefact is written through :func:`panoptic_deploy.fileio.atomic_path`: on any failure no file is left.
This package re-exports each module's public API.
"""

from panoptic_deploy.export.inputs import input_hw_for, model_name, onnx_input_hw, prepare_verify_inputs
from panoptic_deploy.export.onnx_export import (
    DEFAULT_EXPORT_TOLERANCE,
    DEFAULT_OPSET,
    Exporter,
    ExportReport,
    export_onnx,
)
from panoptic_deploy.export.simplify import (
    DEFAULT_SIMPLIFIER,
    DEFAULT_SIMPLIFY_TOLERANCE,
    SIMPLIFIER_METADATA_KEY,
    Simplifier,
    SimplifyReport,
    read_simplifier,
    simplify_onnx,
)
from panoptic_deploy.vocab import SIMPLIFIERS

__all__ = [
    "DEFAULT_EXPORT_TOLERANCE",
    "DEFAULT_OPSET",
    "DEFAULT_SIMPLIFIER",
    "DEFAULT_SIMPLIFY_TOLERANCE",
    "SIMPLIFIERS",
    "SIMPLIFIER_METADATA_KEY",
    "ExportReport",
    "Exporter",
    "Simplifier",
    "SimplifyReport",
    "export_onnx",
    "input_hw_for",
    "model_name",
    "onnx_input_hw",
    "prepare_verify_inputs",
    "read_simplifier",
    "simplify_onnx",
]
