"""Precision stage: FP16 mixed precision, INT8 calibration cache and explicit Q/DQ, all in the ONNX domain.

TensorRT 11 builds engines strongly typed (no FP16/INT8 builder flags, no calibrators), so the precision of
every tensor must already be in the ONNX file:

- ``convert_fp16``: NVIDIA ModelOpt AutoCast turns a FP32 model into FP16 with FP32 I/O, keeping nodes in FP32
  whose values (measured on a calibration input) or initializers do not fit FP16.
- ``calibrate``: runs calibration images through the FP32 model (ONNX Runtime CPU) and writes the activation
  ranges (``amax`` per tensor) to a small, human-readable, deterministic text cache. Methods: ``minmax``,
  ``entropy`` (TensorRT's KL-divergence search on a 2048-bin |x| histogram) and ``percentile``.
- ``quantize_int8``: ModelOpt INT8 PTQ places Q/DQ by TensorRT's fusion rules and takes every activation scale
  from that cache (``amax / 127``); the rest of the graph is FP16 (TensorRT artefact) or FP32 (CPU twin).
- ``make_ort_session``: an ONNX Runtime CPU session with the options each kind of model needs to be evaluated
  correctly (graph optimisations off for Q/DQ and FP16 models).

Cache format (``read_calibration_cache`` / ``write_calibration_cache``), UTF-8 text::

    # panoptic-deploy int8 calibration cache v1
    # method: entropy
    # num_bins: 2048
    # inputs: 32
    # inputs_sha256: 5c1e...
    # model_sha256: 9a0b...
    # onnxruntime: 1.32.0
    # numpy: 2.4.6
    # scale = amax / 127 (symmetric INT8); one '<tensor>: <amax>' line per tensor, sorted by name
    conv2d: 181.69295
    relu: 5.4131155

``amax`` is printed as the shortest decimal that round-trips to the same float32. No timestamps, sorted
lines: identical inputs give a byte-identical file. TensorRT's own cache form (``TRT-...`` header,
``name: <hex of amax/127>``) is written to a temporary file only when ModelOpt needs it.

Heavy libraries (onnx, onnxruntime, modelopt) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import resource
import shutil
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import atomic_path, file_sha256, temp_dir_near, write_text_atomic

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

PathLike = str | os.PathLike[str]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
HIGH_PRECISION_DTYPES = ("fp16", "bf16", "fp32")
CACHE_MAGIC = "# panoptic-deploy int8 calibration cache v1"
# Histogram size for entropy/percentile: TensorRT's and ModelOpt's default.
DEFAULT_NUM_BINS = 2048
DEFAULT_PERCENTILE = 99.99
# TensorRT's EntropyCalibration2: 128 quantized levels (positive half of INT8), search starts at bin 128.
_ENTROPY_QUANTIZED_BINS = 128
_ENTROPY_START_BIN = 128
# AutoCast keeps a node in FP32 when a value it reads or writes exceeds this magnitude (its CLI default).
DEFAULT_FP16_DATA_MAX = 512.0
# Normalisations ``convert_fp16(normalization_fp32=True)`` keeps in FP32.
NORMALIZATION_OP_TYPES = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_ONNX_FLOAT = 1
_ONNX_FLOAT16 = 10
_ONNX_BFLOAT16 = 16


class PrecisionError(PanopticDeployError):
    """A model, calibration input or calibration cache cannot be used for precision conversion."""


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_fp16`` / ``quantize_int8`` did to a model."""

    onnx_in: str
    onnx_out: str
    precision: str  # "fp16", "int8+fp16", "int8+fp32", "int8+bf16"
    nodes_in: int
    nodes_out: int
    casts_added: int
    qdq_pairs: int  # QuantizeLinear nodes (each feeds a DequantizeLinear)
    nodes_kept_fp32: tuple[str, ...]  # compute nodes whose float I/O all stayed FP32 (empty for fp32 twin)
    opset_out: int
    seconds: float
    peak_rss_mb: float  # high-water mark of this process so far (ru_maxrss), not of this step alone
    # INT8 only: nodes left unquantized because they only rank or select (``selection_only_nodes``), and
    # the selection-op inputs rewired around a Q/DQ shared with a quantized reader.
    selection_nodes: tuple[str, ...] = ()
    selection_inputs_rewired: int = 0


@dataclass(frozen=True)
class CalibrationReport:
    """What ``calibrate`` measured and wrote."""

    onnx_in: str
    cache_out: str
    method: str
    percentile: float | None
    num_bins: int | None
    num_inputs: int
    num_tensors: int
    inputs_sha256: str
    seconds: float
    peak_rss_mb: float  # high-water mark of this process so far (ru_maxrss)


@dataclass(frozen=True)
class CalibrationCache:
    """A parsed cache: header fields and the activation range (amax) of each tensor."""

    header: dict[str, str]
    amax: dict[str, float]


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _format_amax(value: float) -> str:
    # Shortest decimal that round-trips to the same float32 (numpy's Dragon4 "unique" mode).
    return str(np.float32(value))


def _load_model(path: PathLike) -> onnx.ModelProto:
    import onnx

    p = Path(path)
    if not p.is_file():
        raise PrecisionError(f"{p}: ONNX model not found")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError/ValueError/OSError depending on the damage
        raise PrecisionError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from exc


def _io_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each graph input and output, by name."""
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}


def _check_io_types(before: onnx.ModelProto, after: onnx.ModelProto, out_name: str) -> None:
    want, got = _io_types(before), _io_types(after)
    changed = {name: (want[name], got.get(name)) for name in want if got.get(name) != want[name]}
    if changed:
        raise PrecisionError(f"{out_name}: conversion changed graph I/O element types {changed}")


def _tensor_float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference), for float-precision bookkeeping."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def _nodes_kept_fp32(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of non-Cast, non-Q/DQ nodes whose float inputs and outputs are all FP32."""
    types = _tensor_float_types(model)
    low = {_ONNX_FLOAT16, _ONNX_BFLOAT16}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Cast" or node.op_type in _QDQ_OPS:
            continue
        float_types = [types[t] for t in [*node.input, *node.output] if t and types.get(t) in (1, *low)]
        if float_types and all(t == _ONNX_FLOAT for t in float_types):
            kept.append(node.name)
    return tuple(kept)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """Silence ModelOpt's INFO logging and ORT calibrators' print() progress lines for one call."""
    # ModelOpt sets levels on both loggers itself (AutoCast copies the parent's), so set and restore both.
    loggers = [logging.getLogger(name) for name in ("modelopt.onnx", "modelopt.onnx.autocast")]
    old = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, old, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _ort_quantization_restored() -> Iterator[None]:
    """Undo, on exit, ModelOpt's process-wide patches of ONNX Runtime's calibrator classes.

    ModelOpt's ``quantize`` replaces methods of ORT's calibrators and quantizers for the whole process
    (``modelopt.onnx.quantization.ort_patching.patch_ort_modules``); a later ``calibrate`` in the same
    process then collects nothing ("calibration cache lists no tensors"). Measured: test_precision.py's
    calibration tests failed when run after any ``quantize_int8`` in one pytest process.
    """
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer

    owners: list[Any] = [
        calibrate,
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, attributes in saved:
            for name, value in attributes.items():
                if vars(owner).get(name) is not value:
                    setattr(owner, name, value)


# ----------------------------------------------------------------------------------------------------------
# ORT sessions for evaluation


def needs_unoptimized_session(model: onnx.ModelProto) -> bool:
    """True for models ORT CPU mis-evaluates with graph optimisations on: any Q/DQ node or any FP16 tensor.

    Measured (docs/precision.md, notes/toolchain.md): ORT's fused INT8 path on AVX2 (``QDQS8ToU8Transformer``)
    distorts symmetric S8 Q/DQ models, and INT8+FP16 models give wrong results under default optimisations.
    With ``ORT_DISABLE_ALL`` every Q/DQ pair is a plain fake-quant, the closest CPU proxy for TensorRT.
    """
    if any(n.op_type in _QDQ_OPS for n in model.graph.node):
        return True
    if any(init.data_type in (_ONNX_FLOAT16, _ONNX_BFLOAT16) for init in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in (_ONNX_FLOAT16, _ONNX_BFLOAT16):
                return True
    return any(t in (_ONNX_FLOAT16, _ONNX_BFLOAT16) for t in _io_types(model).values())


def make_ort_session(
    path: PathLike, threads: int | None = None, *, optimize: bool | None = None
) -> ort.InferenceSession:
    """ONNX Runtime CPU session for ``path`` with the options its precision needs.

    ``optimize=None`` decides from the model (``needs_unoptimized_session``): FP32 models get ORT's default
    optimisations, Q/DQ and FP16 models ``ORT_DISABLE_ALL``. ``threads`` sets intra-op threads (None: ORT's).
    """
    import onnxruntime as ort

    from panoptic_deploy.engines.onnxruntime import ort_session_options

    model = _load_model(path)
    if optimize is None:
        optimize = not needs_unoptimized_session(model)
    options = ort_session_options("ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL", threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------------------
# FP16


def convert_fp16(
    onnx_in: PathLike,
    onnx_out: PathLike,
    calibration_inputs: Mapping[str, npt.NDArray[Any]] | None = None,
    *,
    data_max: float = DEFAULT_FP16_DATA_MAX,
    keep_fp32_op_types: Sequence[str] = (),
    keep_fp32_nodes: Sequence[str] = (),
    normalization_fp32: bool = True,
) -> ConversionReport:
    """Mixed FP16 model with the original I/O dtypes, by ModelOpt AutoCast.

    ``calibration_inputs`` (one batch, e.g. ``{"image": 1×3×H×W float32}``) is run through the FP32 model;
    nodes reading or writing values beyond ``data_max`` stay FP32 (FP16 max is 65504; the margin covers
    accumulations). Without it AutoCast uses random inputs, which miss image-scale ranges: pass a real image.
    ``keep_fp32_op_types`` / ``keep_fp32_nodes`` (regular expressions, full match on node names) force more
    nodes to stay FP32; each must match a node of ``onnx_in``.

    ``normalization_fp32`` keeps the normalisation ops (``NORMALIZATION_OP_TYPES``: the decomposed GroupNorms
    are InstanceNormalization over up to 126,464 values per group) in FP32 with explicit Casts, so that a
    strongly typed TensorRT engine computes them in FP32 whatever its kernels do with FP16 statistics
    (docs/precision.md, "GroupNorm in the FP16 model").
    """
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    started = time.perf_counter()
    src = _load_model(onnx_in)
    keep_patterns = _check_exclusions(src, keep_fp32_op_types, keep_fp32_nodes, f"{onnx_in}: keep FP32")
    present = {node.op_type for node in src.graph.node}
    normalization = [
        op
        for op in NORMALIZATION_OP_TYPES
        if normalization_fp32 and op in present and op not in keep_fp32_op_types
    ]
    with temp_dir_near(onnx_out) as tmp:
        calib_path = None
        if calibration_inputs is not None:
            _check_batch(src, calibration_inputs, Path(onnx_in), 0)
            calib_path = str(Path(tmp) / "calibration.npz")
            arrays: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in calibration_inputs.items()}
            np.savez(calib_path, **arrays)
        with _quiet_modelopt():
            model = convert_to_mixed_precision(
                onnx_path=str(onnx_in),
                low_precision_type="fp16",
                keep_io_types=True,
                calibration_data=calib_path,
                data_max=data_max,
                op_types_to_exclude=list(keep_fp32_op_types) + normalization or None,
                nodes_to_exclude=keep_patterns or None,
                providers=["cpu"],
            )
    _check_io_types(src, model, str(onnx_out))
    with atomic_path(onnx_out) as out:
        onnx.save(model, str(out))
    return ConversionReport(
        onnx_in=str(onnx_in),
        onnx_out=str(onnx_out),
        precision="fp16",
        nodes_in=len(src.graph.node),
        nodes_out=len(model.graph.node),
        casts_added=_count(model, "Cast") - _count(src, "Cast"),
        qdq_pairs=_count(model, "QuantizeLinear"),
        nodes_kept_fp32=_nodes_kept_fp32(model),
        opset_out=_opset(model),
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
    )


# ----------------------------------------------------------------------------------------------------------
# Calibration


def _check_batch(
    model: onnx.ModelProto, batch: Mapping[str, npt.NDArray[Any]], model_path: Path, index: int
) -> None:
    """Raise PrecisionError unless ``batch`` has exactly the model's inputs, float32, right rank, finite."""
    expected = {v.name: v for v in model.graph.input}
    if set(batch) != set(expected):
        raise PrecisionError(
            f"{model_path}: calibration batch {index} has keys {sorted(batch)}, "
            f"model inputs are {sorted(expected)}"
        )
    for name, value in batch.items():
        arr = np.asarray(value)
        rank = len(expected[name].type.tensor_type.shape.dim)
        if arr.dtype != np.float32 or arr.ndim != rank:
            raise PrecisionError(
                f"{model_path}: calibration batch {index} input {name!r} is {arr.dtype} rank {arr.ndim}, "
                f"expected float32 rank {rank}"
            )
        if not np.isfinite(arr).all():
            raise PrecisionError(f"{model_path}: calibration batch {index} input {name!r} has NaN/inf values")


class _OneBatch:
    """ORT CalibrationDataReader over one batch (the calibrators accept repeated collect_data calls)."""

    def __init__(self, batch: Mapping[str, npt.NDArray[Any]]) -> None:
        self._batch: dict[str, npt.NDArray[Any]] | None = {k: np.asarray(v) for k, v in batch.items()}

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        batch, self._batch = self._batch, None
        return batch


def entropy_amax(hist: npt.NDArray[Any], edges: npt.NDArray[Any]) -> float:
    """TensorRT EntropyCalibration2 threshold for a histogram of |x| (``hist`` n bins, ``edges`` n+1).

    For each candidate i >= 128 bins, the first i bins (outliers folded into the last) are the reference P;
    Q merges them into 128 levels and spreads each level evenly over its non-empty bins. The result is the
    right edge of the i with the smallest KL(P||Q) (the largest such i on ties). The zero bin gets bin 1's
    count first, as in TensorRT/ModelOpt, so that ReLU zeros do not dominate. Same algorithm as
    ``modelopt.torch.quantization.calib.histogram._compute_amax_entropy``, vectorised over i.
    """
    bins = np.asarray(hist, dtype=np.float64).copy()
    n = bins.size
    if n <= _ENTROPY_START_BIN:
        return float(edges[-1])
    bins[0] = bins[1]
    levels = _ENTROPY_QUANTIZED_BINS
    # Prefix sums over bins: counts C, non-empty bins N, and sum of b*log(b), so that each candidate i costs
    # O(levels) instead of O(i).
    c = np.concatenate([[0.0], np.cumsum(bins)])
    nonempty = np.concatenate([[0.0], np.cumsum(bins != 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        blogb = np.where(bins > 0, bins * np.log(bins), 0.0)
    d = np.concatenate([[0.0], np.cumsum(blogb)])
    total = c[-1]
    i = np.arange(_ENTROPY_START_BIN, n + 1)[:, None]  # candidates, one per row
    # Level k of candidate i holds bins j with (j * levels) // i == k, i.e. j in [ceil(k*i/levels), ...).
    bounds = (np.arange(levels + 1)[None, :] * i + levels - 1) // levels
    level_sum = np.diff(c[bounds], axis=1)
    level_count = np.diff(nonempty[bounds], axis=1)
    i = i[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        # Q spreads each level's mass evenly over its non-empty bins: q_j = level_sum / level_count.
        log_avg = np.where(level_count > 0, np.log(level_sum / np.maximum(level_count, 1.0)), 0.0)
        tail = total - c[i]  # mass beyond the candidate, folded into P's last bin
        last = bins[i - 1]
        p_last = last + tail
        p_log_p = d[i - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        p_log_q = np.sum(level_sum * log_avg, axis=1) + tail * log_avg[:, -1]
        # KL(P||Q) with P = p/total, Q = q/C[i] (sum of q over kept bins equals their count mass C[i]).
        divergence = (p_log_p - p_log_q) / total - np.log(total) + np.log(c[i])
    # Q has no mass where P has some: infinite divergence (empty last bin with outliers, or nothing kept).
    divergence[((last == 0) & (tail > 0)) | (c[i] == 0) | ~np.isfinite(divergence)] = np.inf
    best = divergence.size - 1 - int(np.argmin(divergence[::-1]))
    return float(edges[best + _ENTROPY_START_BIN])


def _inputs_digest(digest: Any, batch: Mapping[str, npt.NDArray[Any]]) -> None:
    for name in sorted(batch):
        arr = np.ascontiguousarray(batch[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())


def calibrate(
    onnx_in: PathLike,
    batches: Iterable[Mapping[str, npt.NDArray[Any]]],
    method: str,
    cache_out: PathLike,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    num_bins: int = DEFAULT_NUM_BINS,
) -> CalibrationReport:
    """Measure activation ranges of every float tensor of ``onnx_in`` on ``batches`` and write the cache.

    Each batch maps the model's input names to arrays (e.g. ``{"image": 1×3×H×W float32}``); batches are
    streamed one at a time, so memory holds one batch's activations plus the statistics. ``method``:
    ``minmax`` (amax = max |x|), ``percentile`` (the ``percentile``-th percentile of |x| from a ``num_bins``
    histogram) or ``entropy`` (``entropy_amax`` on the same histogram). Runs on ORT CPU, FP32.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if method not in CALIBRATION_METHODS:
        raise PrecisionError(
            f"{cache_out}: unknown calibration method {method!r}, use one of {CALIBRATION_METHODS}"
        )
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise PrecisionError(f"{cache_out}: percentile must be in (0, 100], got {percentile}")
    started = time.perf_counter()
    model_path = Path(onnx_in)
    model = _load_model(model_path)
    digest = hashlib.sha256()
    count = 0
    with temp_dir_near(cache_out) as tmp, _quiet_modelopt():
        if method == "minmax":
            calibrator = create_calibrator(
                model_path,
                [],
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.MinMax,
                providers=["CPUExecutionProvider"],
                extra_options={"symmetric": False},
            )
        else:
            # One |x| histogram collector serves both: ORT's percentile collector with symmetric=True.
            calibrator = create_calibrator(
                model_path,
                [],
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Percentile,
                providers=["CPUExecutionProvider"],
                extra_options={"symmetric": True, "num_bins": num_bins, "percentile": percentile},
            )
        for batch in batches:
            _check_batch(model, batch, model_path, count)
            _inputs_digest(digest, batch)
            calibrator.collect_data(_OneBatch(batch))
            count += 1
        if count == 0:
            raise PrecisionError(f"{cache_out}: no calibration inputs given for {model_path}")
        amax: dict[str, float] = {}
        if method == "entropy":
            for name, histogram in calibrator.collector.histogram_dict.items():
                amax[name] = entropy_amax(histogram[0], histogram[1])
        else:
            for name, data in calibrator.compute_data().data.items():
                lo, hi = (np.asarray(v, dtype=np.float64).reshape(-1) for v in data.range_value)
                amax[name] = float(max(np.abs(lo).max(), np.abs(hi).max()))
    for name, value in amax.items():
        if not math.isfinite(value):
            raise PrecisionError(
                f"{model_path}: tensor {name!r} has a non-finite range ({value}) on calibration"
            )
    header = {
        "method": method,
        **({"percentile": repr(percentile)} if method == "percentile" else {}),
        **({"num_bins": str(num_bins)} if method != "minmax" else {}),
        "inputs": str(count),
        "inputs_sha256": digest.hexdigest(),
        "model_sha256": file_sha256(model_path),
        "onnxruntime": _version("onnxruntime"),
        "numpy": np.__version__,
    }
    write_calibration_cache(cache_out, amax, header)
    return CalibrationReport(
        onnx_in=str(onnx_in),
        cache_out=str(cache_out),
        method=method,
        percentile=percentile if method == "percentile" else None,
        num_bins=num_bins if method != "minmax" else None,
        num_inputs=count,
        num_tensors=len(amax),
        inputs_sha256=digest.hexdigest(),
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
    )


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------------------------------
# Cache I/O


def format_calibration_cache(amax: Mapping[str, float], header: Mapping[str, str]) -> str:
    """The cache text for ``amax`` (tensor -> absolute max) and ``header`` fields (written in given order)."""
    lines = [CACHE_MAGIC]
    for key, field in header.items():
        if not key or ":" in key or " " in key or "\n" in key or "\n" in field:
            raise ValueError(f"calibration cache header field {key!r}: {field!r} is not one line")
        lines.append(f"# {key}: {field}")
    lines.append(
        "# scale = amax / 127 (symmetric INT8); one '<tensor>: <amax>' line per tensor, sorted by name"
    )
    for name in sorted(amax):
        value = float(amax[name])
        if not name or "\n" in name or "\r" in name or name.startswith("#") or ": " in name:
            raise ValueError(f"tensor name {name!r} cannot be written to a calibration cache")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"tensor {name!r}: amax {value} is not a finite non-negative number")
        lines.append(f"{name}: {_format_amax(value)}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(path: PathLike, amax: Mapping[str, float], header: Mapping[str, str]) -> None:
    """Write the cache atomically (see the module docstring for the format)."""
    write_text_atomic(path, format_calibration_cache(amax, header))


def load_calibration_cache(path: PathLike) -> CalibrationCache:
    """Parse and validate a cache; a missing, empty or garbled file raises PrecisionError naming it."""
    p = Path(path)
    if not p.is_file():
        raise PrecisionError(f"{p}: calibration cache not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PrecisionError(f"{p}: calibration cache unreadable ({type(exc).__name__})") from exc
    if not lines or lines[0] != CACHE_MAGIC:
        raise PrecisionError(f"{p}: not a calibration cache (first line must be {CACHE_MAGIC!r})")
    header: dict[str, str] = {}
    amax: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("#"):
            key, sep, field = line[1:].strip().partition(": ")
            if sep and " " not in key:
                header[key] = field
            continue
        name, sep, text = line.rpartition(": ")
        try:
            value = float(np.float32(text))  # the exact float32 the calibrator measured
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value) or value < 0:
            raise PrecisionError(f"{p}: line {number}: expected '<tensor>: <amax >= 0>', got {line[:80]!r}")
        if name in amax:
            raise PrecisionError(f"{p}: line {number}: tensor {name!r} listed twice")
        amax[name] = value
    if not amax:
        raise PrecisionError(f"{p}: calibration cache lists no tensors")
    return CalibrationCache(header=header, amax=amax)


def read_calibration_cache(path: PathLike) -> dict[str, float]:
    """Tensor name -> amax (absolute range) from a cache written by ``calibrate``."""
    return load_calibration_cache(path).amax


def trt_scale(amax: float) -> float:
    """The float32 INT8 scale for ``amax``; a tensor that was always 0 gets scale 1 as in ORT's quantizer."""
    scale = np.float32(amax) / np.float32(127.0)
    return float(scale) if scale > 0 else 1.0


def format_tensorrt_cache(amax: Mapping[str, float]) -> str:
    """TensorRT's calibration cache text: ``TRT-<ver>-MinMaxCalibration`` then ``name: <hex of scale>``.

    This is the form ModelOpt's ``calibration_cache_path`` reads (big-endian float32 of amax/127).
    """
    lines = ["TRT-100300-MinMaxCalibration"]
    for name in sorted(amax):
        lines.append(f"{name}: {struct.pack('!f', trt_scale(amax[name])).hex()}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# INT8


def quantize_int8(
    onnx_in: PathLike,
    cache: PathLike,
    onnx_out: PathLike,
    high_precision: str = "fp16",
    *,
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    normalization_fp32: bool = True,
) -> ConversionReport:
    """Explicit Q/DQ INT8 model from ``onnx_in`` (FP32) and the calibration ``cache``, by ModelOpt PTQ.

    ModelOpt places Q/DQ where TensorRT fuses them (Conv, MatMul, Add of residuals, pooling...), with
    per-channel weight scales computed from the weights and activation scales ``amax / 127`` from the cache;
    the non-quantized part of the graph becomes ``high_precision`` ("fp16": the TensorRT artefact, to be
    built strongly typed; "fp32": a twin for CPU evaluation). I/O dtypes stay as in ``onnx_in``. Evaluate
    either with ``make_ort_session`` (it turns ORT graph optimisations off for such models).

    ``exclude_op_types`` (e.g. ``["Resize"]``) and ``exclude_nodes`` (regular expressions, full match on node
    names) stay in ``high_precision``: the layers trained weights show to be INT8-sensitive. Each must match
    a node of ``onnx_in`` (a typo would silently quantize everything).

    Ranking and selection always stay in ``high_precision`` (a rule, not an option): the nodes that only
    feed TopK, ArgMax, Gather indices, comparisons or Where conditions (``selection_only_nodes``) are
    excluded, and afterwards neither they nor any ``SELECTION_OP_TYPES`` node read a DequantizeLinear (an
    input shared with a quantized reader is rewired to the unquantized tensor).

    ``normalization_fp32`` keeps the normalisations FP32 in an FP16/BF16 high-precision graph, as
    ``convert_fp16`` does.

    ModelOpt still runs the model once on random data internally (its calibrator always runs); every
    activation scale is then replaced from the cache, which this function verifies on the output.
    """
    import onnx
    from modelopt.onnx.quantization import quantize

    if high_precision not in HIGH_PRECISION_DTYPES:
        raise PrecisionError(
            f"{onnx_out}: high_precision must be one of {HIGH_PRECISION_DTYPES}, got {high_precision!r}"
        )
    started = time.perf_counter()
    amax = read_calibration_cache(cache)
    src = _load_model(onnx_in)
    node_patterns = _check_exclusions(src, exclude_op_types, exclude_nodes, f"{onnx_in}: INT8 exclusion")
    selection = selection_only_nodes(src)
    node_patterns += [f"{re.escape(name)}$" for name in selection if name]
    present = {node.op_type for node in src.graph.node}
    normalization = [op for op in NORMALIZATION_OP_TYPES if normalization_fp32 and op in present]
    with temp_dir_near(onnx_out) as tmp:
        # A private copy: ModelOpt writes '<name>_opset19.onnx' next to its input, which would collide
        # between two quantize runs on the same model (TensorRT artefact and CPU twin).
        model_copy = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_in, model_copy)
        trt_cache = Path(tmp) / "calibration.trt.cache"
        trt_cache.write_text(format_tensorrt_cache(amax), encoding="utf-8")
        quantized = Path(tmp) / "model.int8.onnx"
        with _quiet_modelopt(), _ort_quantization_restored():
            quantize(
                str(model_copy),
                quantize_mode="int8",
                calibration_method="max",  # only for ModelOpt's internal random-data pass (cheapest)
                calibration_cache_path=str(trt_cache),
                calibration_eps=["cpu"],
                high_precision_dtype=high_precision,
                op_types_to_exclude=list(exclude_op_types) or None,
                nodes_to_exclude=node_patterns or None,
                op_types_to_exclude_fp16=normalization or None,
                output_path=str(quantized),
                log_level="WARNING",
            )
        if not quantized.is_file():
            raise PrecisionError(f"{onnx_out}: ModelOpt wrote no quantized model for {onnx_in}")
        model = onnx.load(str(quantized))
    _check_io_types(src, model, str(onnx_out))
    rewired = _bypass_selection_qdq(model, selection)
    qdq_pairs = _count(model, "QuantizeLinear")
    if qdq_pairs == 0:
        excluded = " outside the exclusions" if exclude_op_types or exclude_nodes else ""
        raise PrecisionError(
            f"{onnx_out}: no Q/DQ inserted; {cache} covers no quantizable tensor{excluded} of {onnx_in}"
        )
    _check_activation_scales(model, amax, Path(cache), str(onnx_out))
    with atomic_path(onnx_out) as out:
        onnx.save(model, str(out))
    return ConversionReport(
        onnx_in=str(onnx_in),
        onnx_out=str(onnx_out),
        precision=f"int8+{high_precision}",
        nodes_in=len(src.graph.node),
        nodes_out=len(model.graph.node),
        casts_added=_count(model, "Cast") - _count(src, "Cast"),
        qdq_pairs=qdq_pairs,
        nodes_kept_fp32=_nodes_kept_fp32(model) if high_precision != "fp32" else (),
        opset_out=_opset(model),
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
        selection_nodes=selection,
        selection_inputs_rewired=rewired,
    )


# Ranking and selection: the inputs that decide which candidate is picked or which flag is set. INT8 there
# cuts continuous scores to 256 levels (mass ties before TopK, flipped threshold decisions), and a Q/DQ pair
# in front of such an op cannot fuse in TensorRT (a standalone kernel). Op type -> the input slots that
# select (None: every input). Gather* data inputs only move values and are not selection slots.
_SELECTION_SLOTS: dict[str, tuple[int, ...] | None] = {
    "TopK": (0,),
    "ArgMax": (0,),
    "ArgMin": (0,),
    "Gather": (1,),
    "GatherElements": (1,),
    "GatherND": (1,),
    "Where": (0,),
    "Equal": None,
    "Greater": None,
    "GreaterOrEqual": None,
    "Less": None,
    "LessOrEqual": None,
}
# Ops that read no DequantizeLinear output after quantization, on any input: the selection ops, and the
# gathers (their data input too: a Q/DQ there is a standalone kernel in TensorRT, and the values they move
# are scores, kernels and masks).
SELECTION_OP_TYPES = ("TopK", "ArgMax", "ArgMin", "Gather", "GatherElements", "GatherND", "Equal", "Greater",
                      "GreaterOrEqual", "Less", "LessOrEqual")  # fmt: skip


def _is_selection_slot(node: onnx.NodeProto, slot: int) -> bool:
    if node.op_type not in _SELECTION_SLOTS:
        return False
    slots = _SELECTION_SLOTS[node.op_type]
    return slots is None or slot in slots


def selection_only_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of the nodes whose outputs are used only to rank or select (TopK, ArgMax, Gather indices,
    comparisons, Where conditions), directly or through other such nodes; graph outputs never are.

    These are the nodes INT8 leaves in high precision: e.g. the centre-score path (centre Conv, Sigmoid,
    pooling) into TopK, or the kernel fusion's cosine-similarity MatMul that only feeds a comparison. A
    node whose output is also used as a value (the stuff probabilities feed ArgMax and the score sums) is
    not in the set; ``quantize_int8`` rewires the selection readers of such a tensor around its Q/DQ.
    """
    graph_outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, slot))
    selected: set[int] = set()  # id() of selection-only nodes
    # ONNX graphs are topologically sorted: visit readers before producers.
    for node in reversed(model.graph.node):
        outputs = [o for o in node.output if o]
        if not outputs or node.op_type in _QDQ_OPS:
            continue
        if all(
            name not in graph_outputs
            and all(
                id(user) in selected or _is_selection_slot(user, slot)
                for user, slot in consumers.get(name, [])
            )
            for name in outputs
        ):
            selected.add(id(node))
    return tuple(node.name for node in model.graph.node if id(node) in selected)


def _bypass_selection_qdq(model: onnx.ModelProto, selection_nodes: Iterable[str] = ()) -> int:
    """Rewire every input of a ``SELECTION_OP_TYPES`` node, or of a node named in ``selection_nodes``, that
    reads the DequantizeLinear of an activation to the high-precision tensor its QuantizeLinear quantized,
    and drop Q/DQ pairs left without readers. Returns the number of rewired inputs.

    ModelOpt quantizes a tensor once for all its readers, so a node that shares its input with a quantized
    Conv or MatMul reads the INT8-rounded copy even when it is excluded itself: e.g. the kernel fusion's
    norms read the generated kernels that the fusion MatMul quantizes, and ArgMax the stuff probabilities.
    """
    import onnx

    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    types = _tensor_float_types(model)
    casts: dict[tuple[str, int], str] = {}
    rewired = 0
    selection = set(selection_nodes)
    for node in list(model.graph.node):
        if node.op_type not in SELECTION_OP_TYPES and node.name not in selection:
            continue
        for slot, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            source = str(q.input[0])
            want, have = types.get(name), types.get(source)
            if want is not None and have is not None and want != have:
                if (source, want) not in casts:
                    cast_out = f"{source}_selection_cast{want}"
                    casts[source, want] = cast_out
                    cast = onnx.helper.make_node(
                        "Cast", [source], [cast_out], name=f"{cast_out}_node", to=want
                    )
                    # Right after the source's producer (first for a graph input): the graph stays sorted.
                    nodes = list(model.graph.node)
                    producer = producers.get(source)
                    model.graph.node.insert(0 if producer is None else nodes.index(producer) + 1, cast)
                source = casts[source, want]
            node.input[slot] = source
            rewired += 1
    _drop_unread_qdq(model)
    return rewired


def _drop_unread_qdq(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (repeatedly), and the scale/zero-point initializers
    that only they used."""
    graph_outputs = {o.name for o in model.graph.output}
    removed_inputs: set[str] = set()
    while True:
        read = {name for n in model.graph.node for name in n.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type in _QDQ_OPS and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            removed_inputs.update(n.input)
            model.graph.node.remove(n)
    used = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name in removed_inputs and i.name not in used]:
        model.graph.initializer.remove(init)


def _check_exclusions(
    model: onnx.ModelProto, op_types: Sequence[str], node_patterns: Sequence[str], what: str
) -> list[str]:
    """PrecisionError (prefixed ``what``) unless every op type and node-name pattern matches a node of
    ``model``: a typo would otherwise change nothing, silently. Returns the patterns anchored at the end, so
    that ModelOpt's ``re.match`` (anchored at the start only) matches whole names, as checked here."""
    present_types = {node.op_type for node in model.graph.node}
    for op_type in op_types:
        if op_type not in present_types:
            raise PrecisionError(f"{what}: no node of op type {op_type!r} in the model")
    anchored = []
    for pattern in node_patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise PrecisionError(f"{what}: {pattern!r} is not a regular expression ({exc})") from None
        if not any(regex.fullmatch(node.name) for node in model.graph.node):
            raise PrecisionError(f"{what}: no node name matches {pattern!r}")
        anchored.append(f"(?:{pattern})$")
    return anchored


_HIGH_PRECISION_CAST_SUFFIXES = ("_cast_to_fp16", "_cast_to_bf16")


def _calibrated_name(
    quantize: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto], amax: Mapping[str, float]
) -> str:
    """The calibrated (FP32-graph) tensor a QuantizeLinear quantizes.

    With an FP16/BF16 high-precision graph ModelOpt inserts a Cast before the Q node: either a new Cast of
    the FP32 tensor (the original is its input), or, where the FP32 tensor itself came from a Cast (e.g.
    bool -> float), that Cast retargeted and its output renamed ``<original>_cast_to_fp16``; the Q node
    keeps the name ``<original>_QuantizeLinear``.
    """
    source = str(quantize.input[0])
    candidates = [source]
    producer = producers.get(source)
    if producer is not None and producer.op_type == "Cast":
        candidates.append(str(producer.input[0]))
    candidates += [source.removesuffix(s) for s in _HIGH_PRECISION_CAST_SUFFIXES if source.endswith(s)]
    if quantize.name.endswith("_QuantizeLinear"):
        candidates.append(str(quantize.name).removesuffix("_QuantizeLinear"))
    return next((name for name in candidates if name in amax), source)


def _activation_q_scales(model: onnx.ModelProto, amax: Mapping[str, float]) -> list[tuple[str, float]]:
    """(quantized tensor, scale) for each QuantizeLinear of an activation (weights are initializers)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    result = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        source = _calibrated_name(node, producers, amax)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64).reshape(-1)
        result.append((source, float(scale[0])))
    return result


def _check_activation_scales(
    model: onnx.ModelProto, amax: Mapping[str, float], cache: Path, out: str
) -> None:
    """Every activation Q scale must be the cache's amax/127 (FP16-rounded scales: within 1e-3)."""
    for tensor, scale in _activation_q_scales(model, amax):
        if tensor not in amax:
            raise PrecisionError(f"{out}: Q/DQ on {tensor!r}, which {cache} has no range for")
        want = trt_scale(amax[tensor])
        if not math.isclose(scale, want, rel_tol=1e-3):
            raise PrecisionError(f"{out}: Q scale of {tensor!r} is {scale}, {cache} gives {want}")


def calibration_batches(
    config: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    input_hw: Sequence[int],
    opts: Sequence[str] = (),
) -> Iterator[dict[str, npt.NDArray[np.float32]]]:
    """Yield ``{"image": 1×3×H×W float32}`` per calibration image at the static size ``input_hw``.

    Each image gets the model's test resize and normalisation, as an evaluation image does; a result larger
    than the static input is centre-cropped to it, a smaller one zero-padded bottom/right (calibration images
    need not share the evaluation images' aspect ratio).
    """
    from panoptic_deploy.config import load_config
    from panoptic_deploy.modeling import INPUT_NAME
    from panoptic_deploy.modeling.panoptic_fcn import input_params_from_config
    from panoptic_deploy.preprocess import normalize_and_pad, read_image, resize_image

    params = input_params_from_config(load_config(Path(config), opts))
    height, width = (int(v) for v in input_hw)
    for path in images:
        resized = resize_image(read_image(path, params.input_format), params)
        top = max(0, (resized.shape[0] - height) // 2)
        left = max(0, (resized.shape[1] - width) // 2)
        tensor = normalize_and_pad(resized[top : top + height, left : left + width], params).numpy()
        batch = np.zeros((1, 3, height, width), dtype=np.float32)
        batch[:, :, : tensor.shape[2], : tensor.shape[3]] = tensor
        yield {INPUT_NAME: batch}
