"""INT8 calibration: activation ranges of the FP32 model on calibration images, in a deterministic cache.

:func:`calibrate` runs calibration images through the FP32 model (ONNX Runtime CPU) and writes the activation
ranges (``amax`` per tensor) to a small, human-readable text cache; :func:`calibration_batches` fits the
images to the model's static input. Methods: ``minmax``, ``entropy`` (TensorRT's KL-divergence search on a
2048-bin |x| histogram) and ``percentile``.

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
``name: <hex of amax/127>``) is written to a temporary file only when ModelOpt needs it
(:func:`format_tensorrt_cache`).
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import PrecisionError
from panoptic_deploy.fileio import PathLike, file_sha256, temp_dir_near, write_text_atomic
from panoptic_deploy.host import dist_version, peak_rss_mb
from panoptic_deploy.onnx_utils import load_onnx, quiet_converters
from panoptic_deploy.spec import ModelSpec
from panoptic_deploy.vocab import CALIBRATION_METHODS, INPUT_NAME

if TYPE_CHECKING:
    import onnx

CACHE_MAGIC = "# panoptic-deploy int8 calibration cache v1"
# Histogram size for entropy/percentile: TensorRT's and ModelOpt's default.
DEFAULT_NUM_BINS: int = schema_default("calibration", "num_bins")
DEFAULT_PERCENTILE: float = schema_default("calibration", "percentile")
# TensorRT's EntropyCalibration2: 128 quantized levels (positive half of INT8), search starts at bin 128.
_ENTROPY_QUANTIZED_BINS = 128
_ENTROPY_START_BIN = 128


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


def _format_amax(value: float) -> str:
    # Shortest decimal that round-trips to the same float32 (numpy's Dragon4 "unique" mode).
    return str(np.float32(value))


def check_batch(
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


def _calibrator(model_path: Path, augmented: Path, method: str, num_bins: int, percentile: float) -> Any:
    """ONNX Runtime's calibrator for ``method`` on ORT CPU, FP32."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if method == "minmax":
        return create_calibrator(
            model_path,
            [],
            augmented_model_path=str(augmented),
            calibrate_method=CalibrationMethod.MinMax,
            providers=["CPUExecutionProvider"],
            extra_options={"symmetric": False},
        )
    # One |x| histogram collector serves both: ORT's percentile collector with symmetric=True.
    return create_calibrator(
        model_path,
        [],
        augmented_model_path=str(augmented),
        calibrate_method=CalibrationMethod.Percentile,
        providers=["CPUExecutionProvider"],
        extra_options={"symmetric": True, "num_bins": num_bins, "percentile": percentile},
    )


def _ranges(calibrator: Any, method: str) -> dict[str, float]:
    """Tensor -> amax from what ``calibrator`` collected: the entropy threshold of each |x| histogram, or the
    collector's own range (minmax: max |x|; percentile: the percentile of |x|)."""
    amax: dict[str, float] = {}
    if method == "entropy":
        for name, histogram in calibrator.collector.histogram_dict.items():
            amax[name] = entropy_amax(histogram[0], histogram[1])
    else:
        for name, data in calibrator.compute_data().data.items():
            lo, hi = (np.asarray(v, dtype=np.float64).reshape(-1) for v in data.range_value)
            amax[name] = float(max(np.abs(lo).max(), np.abs(hi).max()))
    return amax


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
    if method not in CALIBRATION_METHODS:
        raise PrecisionError(
            f"{cache_out}: unknown calibration method {method!r}, use one of {CALIBRATION_METHODS}"
        )
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise PrecisionError(f"{cache_out}: percentile must be in (0, 100], got {percentile}")
    started = time.perf_counter()
    model_path = Path(onnx_in)
    model = load_onnx(model_path, PrecisionError)
    digest = hashlib.sha256()
    count = 0
    with temp_dir_near(cache_out) as tmp, quiet_converters():
        calibrator = _calibrator(model_path, Path(tmp) / "augmented.onnx", method, num_bins, percentile)
        for batch in batches:
            check_batch(model, batch, model_path, count)
            _inputs_digest(digest, batch)
            calibrator.collect_data(_OneBatch(batch))
            count += 1
        if count == 0:
            raise PrecisionError(f"{cache_out}: no calibration inputs given for {model_path}")
        amax = _ranges(calibrator, method)
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
        "onnxruntime": dist_version("onnxruntime") or "not installed",
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
        peak_rss_mb=peak_rss_mb(),
    )


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


def calibration_batches(
    config: ModelSpec | PathLike,
    images: Sequence[PathLike],
    input_hw: Sequence[int],
    opts: Sequence[str] = (),
) -> Iterator[dict[str, npt.NDArray[np.float32]]]:
    """Yield ``{"image": 1×3×H×W float32}`` per calibration image at the static size ``input_hw``.

    Each image gets the model's test resize and normalisation, as an evaluation image does, and is then
    fitted to the static input (:func:`panoptic_deploy.preprocess.fit_to_size`: centre-cropped when larger,
    zero-padded bottom/right when smaller; calibration images need not share the evaluation images' aspect
    ratio). ``config``: a :class:`ModelSpec` or a config file with ``opts``.
    """
    from panoptic_deploy.preprocess import fit_to_size, read_image

    params = ModelSpec.of(config, opts).input_params
    for path in images:
        yield {INPUT_NAME: fit_to_size(read_image(path, params.input_format), params, input_hw)}
