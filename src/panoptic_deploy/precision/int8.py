"""INT8 with explicit Q/DQ from a calibration cache: NVIDIA ModelOpt PTQ, scales from our cache.

:func:`quantize_int8` lets ModelOpt place Q/DQ by TensorRT's fusion rules and takes every activation scale
from the cache of :mod:`panoptic_deploy.precision.calibration` (``amax / 127``); the rest of the graph is
FP16 (TensorRT artefact) or FP32 (CPU twin). Ranking and selection (TopK, ArgMax, Gather indices,
comparisons) always stay in high precision.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from panoptic_deploy.errors import PrecisionError
from panoptic_deploy.fileio import PathLike, atomic_path, temp_dir_near
from panoptic_deploy.host import peak_rss_mb
from panoptic_deploy.onnx_utils import (
    QDQ_OPS,
    count_ops,
    load_onnx,
    opset,
    quiet_converters,
    tensor_float_types,
)
from panoptic_deploy.precision.calibration import format_tensorrt_cache, read_calibration_cache, trt_scale
from panoptic_deploy.precision.fp16 import (
    NORMALIZATION_OP_TYPES,
    ConversionReport,
    check_exclusions,
    check_io_types,
    nodes_kept_fp32,
)
from panoptic_deploy.vocab import HIGH_PRECISION_DTYPES

if TYPE_CHECKING:
    import onnx


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

    if high_precision not in HIGH_PRECISION_DTYPES:
        raise PrecisionError(
            f"{onnx_out}: high_precision must be one of {HIGH_PRECISION_DTYPES}, got {high_precision!r}"
        )
    started = time.perf_counter()
    amax = read_calibration_cache(cache)
    src = load_onnx(onnx_in, PrecisionError)
    node_patterns = check_exclusions(src, exclude_op_types, exclude_nodes, f"{onnx_in}: INT8 exclusion")
    selection = selection_only_nodes(src)
    node_patterns += [f"{re.escape(name)}$" for name in selection if name]
    present = {node.op_type for node in src.graph.node}
    normalization = [op for op in NORMALIZATION_OP_TYPES if normalization_fp32 and op in present]
    model = _modelopt_quantize(
        onnx_in, onnx_out, amax, high_precision, exclude_op_types, node_patterns, normalization
    )
    check_io_types(src, model, str(onnx_out))
    rewired = _bypass_selection_qdq(model, selection)
    qdq_pairs = count_ops(model, "QuantizeLinear")
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
        casts_added=count_ops(model, "Cast") - count_ops(src, "Cast"),
        qdq_pairs=qdq_pairs,
        nodes_kept_fp32=nodes_kept_fp32(model) if high_precision != "fp32" else (),
        opset_out=opset(model),
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
        selection_nodes=selection,
        selection_inputs_rewired=rewired,
    )


def _modelopt_quantize(
    onnx_in: PathLike,
    onnx_out: PathLike,
    amax: Mapping[str, float],
    high_precision: str,
    exclude_op_types: Sequence[str],
    node_patterns: Sequence[str],
    normalization: Sequence[str],
) -> onnx.ModelProto:
    """ModelOpt's INT8 PTQ of ``onnx_in`` with every activation scale from ``amax`` (TensorRT cache form)."""
    import onnx
    from modelopt.onnx.quantization import quantize

    with temp_dir_near(onnx_out) as tmp:
        # A private copy: ModelOpt writes '<name>_opset19.onnx' next to its input, which would collide
        # between two quantize runs on the same model (TensorRT artefact and CPU twin).
        model_copy = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_in, model_copy)
        trt_cache = Path(tmp) / "calibration.trt.cache"
        trt_cache.write_text(format_tensorrt_cache(amax), encoding="utf-8")
        quantized = Path(tmp) / "model.int8.onnx"
        with quiet_converters(), _ort_quantization_restored():
            quantize(
                str(model_copy),
                quantize_mode="int8",
                calibration_method="max",  # only for ModelOpt's internal random-data pass (cheapest)
                calibration_cache_path=str(trt_cache),
                calibration_eps=["cpu"],
                high_precision_dtype=high_precision,
                op_types_to_exclude=list(exclude_op_types) or None,
                nodes_to_exclude=list(node_patterns) or None,
                op_types_to_exclude_fp16=list(normalization) or None,
                output_path=str(quantized),
                log_level="WARNING",
            )
        if not quantized.is_file():
            raise PrecisionError(f"{onnx_out}: ModelOpt wrote no quantized model for {onnx_in}")
        return onnx.load(str(quantized))


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
        if not outputs or node.op_type in QDQ_OPS:
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
    types = tensor_float_types(model)
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
        dead = [n for n in model.graph.node if n.op_type in QDQ_OPS and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            removed_inputs.update(n.input)
            model.graph.node.remove(n)
    used = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name in removed_inputs and i.name not in used]:
        model.graph.initializer.remove(init)


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
