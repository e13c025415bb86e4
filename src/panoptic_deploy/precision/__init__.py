"""Precision stage: FP16 mixed precision, INT8 calibration cache and explicit Q/DQ, all in the ONNX domain.

TensorRT 11 builds engines strongly typed (no FP16/INT8 builder flags, no calibrators), so the precision of
every tensor must already be in the ONNX file. One module per step, in pipeline order:

- :mod:`~panoptic_deploy.precision.fp16`: ``convert_fp16``, ModelOpt AutoCast from FP32 to FP16 with FP32
  I/O, keeping nodes in FP32 whose values (measured on a calibration input) or initializers do not fit FP16.
- :mod:`~panoptic_deploy.precision.calibration`: ``calibrate``, activation ranges (``amax`` per tensor) of
  the FP32 model on calibration images, in a small, human-readable, deterministic text cache.
- :mod:`~panoptic_deploy.precision.int8`: ``quantize_int8``, ModelOpt INT8 PTQ with Q/DQ placed by
  TensorRT's fusion rules and every activation scale from that cache (``amax / 127``).

Evaluate the results with :func:`panoptic_deploy.engines.onnxruntime.make_ort_session` (graph optimisations
off for Q/DQ and FP16 models). Heavy libraries (onnx, onnxruntime, modelopt) are imported inside the
functions; this package re-exports each step's public API.
"""

from panoptic_deploy.errors import PrecisionError
from panoptic_deploy.precision.calibration import (
    CACHE_MAGIC,
    DEFAULT_NUM_BINS,
    DEFAULT_PERCENTILE,
    CalibrationCache,
    CalibrationReport,
    calibrate,
    calibration_batches,
    entropy_amax,
    format_calibration_cache,
    format_tensorrt_cache,
    load_calibration_cache,
    read_calibration_cache,
    trt_scale,
    write_calibration_cache,
)
from panoptic_deploy.precision.fp16 import (
    DEFAULT_FP16_DATA_MAX,
    NORMALIZATION_OP_TYPES,
    ConversionReport,
    convert_fp16,
)
from panoptic_deploy.precision.int8 import (
    SELECTION_OP_TYPES,
    quantize_int8,
    selection_only_nodes,
)
from panoptic_deploy.vocab import CALIBRATION_METHODS, HIGH_PRECISION_DTYPES

__all__ = [
    "CACHE_MAGIC",
    "CALIBRATION_METHODS",
    "DEFAULT_FP16_DATA_MAX",
    "DEFAULT_NUM_BINS",
    "DEFAULT_PERCENTILE",
    "HIGH_PRECISION_DTYPES",
    "NORMALIZATION_OP_TYPES",
    "SELECTION_OP_TYPES",
    "CalibrationCache",
    "CalibrationReport",
    "ConversionReport",
    "PrecisionError",
    "calibrate",
    "calibration_batches",
    "convert_fp16",
    "entropy_amax",
    "format_calibration_cache",
    "format_tensorrt_cache",
    "load_calibration_cache",
    "quantize_int8",
    "read_calibration_cache",
    "selection_only_nodes",
    "trt_scale",
    "write_calibration_cache",
]
