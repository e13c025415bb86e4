"""FP16 mixed precision in the ONNX domain: NVIDIA ModelOpt AutoCast with FP32 I/O.

TensorRT 11 builds engines strongly typed (no FP16 builder flag), so the precision of every tensor must
already be in the ONNX file. :func:`convert_fp16` keeps nodes in FP32 whose values (measured on a calibration
input) or initializers do not fit FP16, and the normalisations. The conversion checks shared with INT8
(:mod:`panoptic_deploy.precision.int8`) live here: I/O types unchanged, exclusions that match, the report.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import PrecisionError
from panoptic_deploy.fileio import PathLike, atomic_path, temp_dir_near
from panoptic_deploy.host import peak_rss_mb
from panoptic_deploy.onnx_utils import (
    ONNX_BFLOAT16,
    ONNX_FLOAT,
    ONNX_FLOAT16,
    QDQ_OPS,
    count_ops,
    io_types,
    load_onnx,
    opset,
    quiet_converters,
    tensor_float_types,
)
from panoptic_deploy.precision.calibration import check_batch

if TYPE_CHECKING:
    import onnx

# AutoCast keeps a node in FP32 when a value it reads or writes exceeds this magnitude (its CLI default).
DEFAULT_FP16_DATA_MAX: float = schema_default("fp16", "data_max")
# Normalisations ``convert_fp16(normalization_fp32=True)`` keeps in FP32.
NORMALIZATION_OP_TYPES = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")


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


def check_io_types(before: onnx.ModelProto, after: onnx.ModelProto, out_name: str) -> None:
    """PrecisionError unless a conversion kept the graph's I/O element types (FP32 in, FP32 out)."""
    want, got = io_types(before), io_types(after)
    changed = {name: (want[name], got.get(name)) for name in want if got.get(name) != want[name]}
    if changed:
        raise PrecisionError(f"{out_name}: conversion changed graph I/O element types {changed}")


def nodes_kept_fp32(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of non-Cast, non-Q/DQ nodes whose float inputs and outputs are all FP32."""
    types = tensor_float_types(model)
    low = {ONNX_FLOAT16, ONNX_BFLOAT16}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Cast" or node.op_type in QDQ_OPS:
            continue
        float_types = [types[t] for t in [*node.input, *node.output] if t and types.get(t) in (1, *low)]
        if float_types and all(t == ONNX_FLOAT for t in float_types):
            kept.append(node.name)
    return tuple(kept)


def check_exclusions(
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
    src = load_onnx(onnx_in, PrecisionError)
    keep_patterns = check_exclusions(src, keep_fp32_op_types, keep_fp32_nodes, f"{onnx_in}: keep FP32")
    present = {node.op_type for node in src.graph.node}
    normalization = [
        op
        for op in NORMALIZATION_OP_TYPES
        if normalization_fp32 and op in present and op not in keep_fp32_op_types
    ]
    with temp_dir_near(onnx_out) as tmp:
        calib_path = None
        if calibration_inputs is not None:
            check_batch(src, calibration_inputs, Path(onnx_in), 0)
            calib_path = str(Path(tmp) / "calibration.npz")
            arrays: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in calibration_inputs.items()}
            np.savez(calib_path, **arrays)
        with quiet_converters():
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
    check_io_types(src, model, str(onnx_out))
    with atomic_path(onnx_out) as out:
        onnx.save(model, str(out))
    return ConversionReport(
        onnx_in=str(onnx_in),
        onnx_out=str(onnx_out),
        precision="fp16",
        nodes_in=len(src.graph.node),
        nodes_out=len(model.graph.node),
        casts_added=count_ops(model, "Cast") - count_ops(src, "Cast"),
        qdq_pairs=count_ops(model, "QuantizeLinear"),
        nodes_kept_fp32=nodes_kept_fp32(model),
        opset_out=opset(model),
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
    )
