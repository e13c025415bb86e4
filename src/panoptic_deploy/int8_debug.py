"""INT8 debugging: which quantized tensor loses the accuracy, which module it belongs to, and which node
exclusions win it back.

:func:`debug_int8` runs the FP32 model and its Q/DQ INT8 twin (ONNX Runtime CPU) on a few inputs (e.g.
calibration images) and compares them tensor by tensor at every activation Q/DQ pair:

* **local SQNR**: the tensor entering the QuantizeLinear vs the DequantizeLinear output, in the INT8 model.
  The damage this one quantizer does (its scale clips or its steps are too coarse).
* **cumulative SQNR**: the FP32 model's tensor vs the INT8 model's DequantizeLinear output: everything lost
  up to and including this point.
* **clipped fraction**: the share of values outside the Q/DQ pair's representable range; a range cut by a
  bad calibration shows up here first.

SQNR is ``20·log10(‖x‖ / ‖x − y‖)`` in dB over all inputs together, exactly ONNX Runtime's
``qdq_loss_debug.compute_signal_to_quantization_noice_ratio`` (norms floored at float64 eps), accumulated
input by input so that memory holds one input's activations. Pairs are found by graph structure
(QuantizeLinear -> DequantizeLinear on a non-initializer), not by ORT's tensor-name suffixes, and no ORT
calibrator is involved: ModelOpt's in-process patches of those (see
``precision.int8._ort_quantization_restored``) cannot affect it, so it runs in the same process as
:func:`precision.quantize_int8`.

Each tensor is named with the nodes that read its DequantizeLinear (the quantized ops: what
``int8.exclude_nodes`` takes) and their model modules (:mod:`panoptic_deploy.onnx_scopes`).

The local SQNR says where a quantizer loses, not what that costs the output: on the trained demo the worst
local SQNRs are in the stuff branch and cost nothing, while the PQ is lost by noise accumulating through the
backbone. :mod:`panoptic_deploy.int8_search` therefore ranks modules by their effect on the loss, excludes
them until it is within budget and prints the ``int8.exclude_nodes`` to paste.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import PathLike, write_text_atomic

if TYPE_CHECKING:
    import onnx

    from panoptic_deploy.int8_search import SearchResult

Batch = Mapping[str, npt.NDArray[Any]]

INT8_DEBUG_FORMAT_VERSION = 1
# ORT's SQNR floors both norms at numpy's float64 eps: identical tensors give 20·log10(‖x‖ / eps), not inf.
_EPS = float(np.finfo(np.float64).eps)
_ONNX_INT8 = 3
_ONNX_UINT8 = 2
_HIGH_PRECISION_CAST_SUFFIXES = ("_cast_to_fp16", "_cast_to_bf16")


class Int8DebugError(PanopticDeployError):
    """The FP32/INT8 pair cannot be compared (no Q/DQ pair, mismatching inputs, no inputs)."""


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """``20·log10(max(‖x‖, eps) / max(‖x − y‖, eps))`` from the sums of squares ‖x‖² and ‖x − y‖²."""
    return 20.0 * math.log10(max(math.sqrt(signal_power), _EPS) / max(math.sqrt(noise_power), _EPS))


# ---------------------------------------------------------------------------------------------------------
# Q/DQ pairs of a model


@dataclass(frozen=True)
class QdqPair:
    """One activation QuantizeLinear -> DequantizeLinear pair of the INT8 model."""

    tensor: str  # the FP32 model's tensor it quantizes
    pre: str  # the INT8 model's QuantizeLinear input
    post: str  # the DequantizeLinear output
    scale: float
    low: float  # representable range: (qmin - zero point) · scale ...
    high: float  # ... (qmax - zero point) · scale
    producer: str | None  # node writing ``pre`` (None: a graph input)
    consumers: tuple[str, ...]  # nodes reading ``post``: the quantized ops


def _initializers(model: onnx.ModelProto) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def activation_qdq_pairs(int8: onnx.ModelProto, fp32_tensors: Iterable[str] = ()) -> list[QdqPair]:
    """Every QuantizeLinear of an activation (not an initializer) with the DequantizeLinear it feeds.

    ``fp32_tensors`` (the FP32 model's tensor names) resolves ``tensor`` through the Cast an FP16/BF16
    high-precision graph puts before the QuantizeLinear; without it ``tensor`` is the QuantizeLinear input.
    """
    from onnx import numpy_helper

    inits = _initializers(int8)
    producers = {out: node for node in int8.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    known = set(fp32_tensors)
    pairs = []
    for q in int8.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        for dq in readers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            scale = float(numpy_helper.to_array(inits[q.input[1]]).astype(np.float64).reshape(-1)[0])
            zero_point, qmin, qmax = 0, -128, 127
            if len(q.input) > 2 and q.input[2] in inits:
                zp = inits[q.input[2]]
                zero_point = int(numpy_helper.to_array(zp).reshape(-1)[0])
                if zp.data_type == _ONNX_UINT8:
                    qmin, qmax = 0, 255
            elif len(q.input) <= 2:
                qmin, qmax = 0, 255  # ONNX: no zero point means uint8
            pre = str(q.input[0])
            producer = producers.get(pre)
            candidates = [pre]
            if producer is not None and producer.op_type == "Cast":
                candidates.append(str(producer.input[0]))
            candidates += [pre.removesuffix(s) for s in _HIGH_PRECISION_CAST_SUFFIXES if pre.endswith(s)]
            tensor = next((c for c in candidates if c in known), pre)
            pairs.append(
                QdqPair(
                    tensor=tensor,
                    pre=pre,
                    post=str(dq.output[0]),
                    scale=scale,
                    low=(qmin - zero_point) * scale,
                    high=(qmax - zero_point) * scale,
                    producer=None if producer is None else str(producer.name),
                    consumers=tuple(str(n.name) for n in readers.get(dq.output[0], [])),
                )
            )
    return pairs


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(o for o in node.output if o)
    return names


def _with_outputs(model: onnx.ModelProto, names: Sequence[str], path: Path) -> list[str]:
    """Save ``model`` to ``path`` with ``names`` added as graph outputs (typed from shape inference);
    returns the added names (those already outputs are not added twice)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    existing = {o.name for o in model.graph.output}
    added = []
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    for name in dict.fromkeys(names):
        if name in existing:
            continue
        elem = types.get(name, onnx.TensorProto.FLOAT)
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        added.append(name)
    onnx.save(augmented, str(path))
    return added


# ---------------------------------------------------------------------------------------------------------
# Debug run


@dataclass(frozen=True)
class TensorDebug:
    """The comparison at one Q/DQ pair, over every input."""

    tensor: str
    producer: str | None
    consumers: tuple[str, ...]
    modules: tuple[str, ...]  # module scopes of the consumers (then the producer), where known
    scale: float
    local_sqnr_db: float
    cumulative_sqnr_db: float | None  # None when the FP32 model has no tensor of that name
    clipped_fraction: float
    max_abs: float  # largest |value| entering the QuantizeLinear
    elements: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "producer": self.producer,
            "consumers": list(self.consumers),
            "modules": list(self.modules),
            "scale": self.scale,
            "local_sqnr_db": self.local_sqnr_db,
            "cumulative_sqnr_db": self.cumulative_sqnr_db,
            "clipped_fraction": self.clipped_fraction,
            "max_abs": self.max_abs,
            "elements": self.elements,
        }


@dataclass(frozen=True)
class OutputDebug:
    """A float graph output of FP32 vs INT8."""

    name: str
    sqnr_db: float
    noise_percent: float  # 100 · ‖x − y‖² / ‖x‖²


@dataclass(frozen=True)
class Int8Debug:
    """:func:`debug_int8`'s result; ``tensors`` sorted worst first (lowest local SQNR)."""

    fp32_onnx: str
    int8_onnx: str
    inputs: int
    tensors: tuple[TensorDebug, ...]
    outputs: tuple[OutputDebug, ...]
    seconds: float
    search: SearchResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": INT8_DEBUG_FORMAT_VERSION,
            "fp32_onnx": self.fp32_onnx,
            "int8_onnx": self.int8_onnx,
            "inputs": self.inputs,
            "seconds": self.seconds,
            "outputs": [
                {"name": o.name, "sqnr_db": o.sqnr_db, "noise_percent": o.noise_percent} for o in self.outputs
            ],
            "tensors": [t.to_json() for t in self.tensors],
            "search": None if self.search is None else self.search.to_json(),
        }

    def worst_lines(self, count: int = 10) -> list[str]:
        """Markdown table of the ``count`` worst tensors (for the report's INT8 section)."""
        lines = [
            "| tensor | module | read by | local SQNR dB | cumulative SQNR dB | clipped % |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.tensors[:count]:
            cumulative = "–" if t.cumulative_sqnr_db is None else f"{t.cumulative_sqnr_db:.1f}"
            readers = ", ".join(f"`{c}`" for c in t.consumers)
            lines.append(
                f"| `{t.tensor}` | {', '.join(t.modules) or '–'} | {readers} "
                f"| {t.local_sqnr_db:.1f} | {cumulative} | {100 * t.clipped_fraction:.2f} |"
            )
        return lines


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    cum_signal: float = 0.0
    cum_noise: float = 0.0
    clipped: int = 0
    elements: int = 0
    max_abs: float = 0.0

    def add(self, pair: QdqPair, pre_q: Any, post_dq: Any, fp32: Any | None) -> None:
        """One input's values at ``pair``: entering its QuantizeLinear, leaving its DequantizeLinear, and the
        FP32 model's tensor (None where the FP32 model has no tensor of that name)."""
        pre = np.asarray(pre_q, np.float64)
        post = np.asarray(post_dq, np.float64)
        self.signal += float(np.sum(pre * pre))
        self.noise += float(np.sum((pre - post) ** 2))
        # Rounding puts a value just past the edge back on it: count what lies beyond half a step.
        half = 0.5 * pair.scale
        self.clipped += int(np.count_nonzero((pre < pair.low - half) | (pre > pair.high + half)))
        self.elements += int(pre.size)
        self.max_abs = max(self.max_abs, float(np.abs(pre).max(initial=0.0)))
        if fp32 is not None:
            ref = np.asarray(fp32, np.float64)
            self.cum_signal += float(np.sum(ref * ref))
            self.cum_noise += float(np.sum((ref - post) ** 2))


def _tensor_debug(pair: QdqPair, s: _Sums, names: Mapping[str, str], cumulative: bool) -> TensorDebug:
    """``pair``'s accumulated sums as a result row, named by its readers' modules (else its producer's)."""
    modules = [names[c] for c in pair.consumers if c in names]
    if not modules and pair.producer in names:
        modules.append(names[str(pair.producer)])
    return TensorDebug(
        tensor=pair.tensor,
        producer=pair.producer,
        consumers=pair.consumers,
        modules=tuple(dict.fromkeys(modules)),
        scale=pair.scale,
        local_sqnr_db=sqnr_db(s.signal, s.noise),
        cumulative_sqnr_db=sqnr_db(s.cum_signal, s.cum_noise) if cumulative else None,
        clipped_fraction=s.clipped / s.elements if s.elements else 0.0,
        max_abs=s.max_abs,
        elements=s.elements,
    )


def _session(path: Path, threads: int | None) -> Any:
    from panoptic_deploy.engines.onnxruntime import make_ort_session

    return make_ort_session(path, threads)


def debug_int8(
    fp32_onnx: PathLike,
    int8_onnx: PathLike,
    batches: Iterable[Batch],
    *,
    threads: int | None = None,
    scopes: Mapping[str, str] | None = None,
) -> Int8Debug:
    """Compare ``int8_onnx`` with ``fp32_onnx`` at every activation Q/DQ pair on ``batches`` (input name ->
    array, as for calibration). ``scopes`` (node name -> module) defaults to the FP32 model's
    (:func:`onnx_scopes.module_scopes`)."""
    import onnx

    from panoptic_deploy.onnx_scopes import module_scopes

    started = time.perf_counter()
    fp32 = onnx.load(str(fp32_onnx))
    int8 = onnx.load(str(int8_onnx))
    fp32_names = _tensor_names(fp32)
    pairs = activation_qdq_pairs(int8, fp32_names)
    if not pairs:
        raise Int8DebugError(f"{int8_onnx}: no activation QuantizeLinear -> DequantizeLinear pair to compare")
    if [i.name for i in fp32.graph.input] != [i.name for i in int8.graph.input]:
        raise Int8DebugError(f"{int8_onnx}: inputs differ from {fp32_onnx}'s")
    names = dict(scopes) if scopes is not None else module_scopes(fp32)
    float_outputs = [
        o.name for o in fp32.graph.output if o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, 10)
    ]
    with tempfile.TemporaryDirectory(prefix="int8_debug_") as tmp:
        fp32_aug = Path(tmp) / "fp32.onnx"
        int8_aug = Path(tmp) / "int8.onnx"
        fp32_wanted = [p.tensor for p in pairs if p.tensor in fp32_names]
        _with_outputs(fp32, fp32_wanted, fp32_aug)
        _with_outputs(int8, [n for p in pairs for n in (p.pre, p.post)], int8_aug)
        del fp32, int8
        fp32_session = _session(fp32_aug, threads)
        int8_session = _session(int8_aug, threads)
        fp32_out = [o.name for o in fp32_session.get_outputs()]
        int8_out = [o.name for o in int8_session.get_outputs()]
        sums = [_Sums() for _ in pairs]
        out_sums = {name: [0.0, 0.0] for name in float_outputs}
        count = 0
        for batch in batches:
            feed = {k: np.ascontiguousarray(v) for k, v in batch.items()}
            a = dict(zip(fp32_out, fp32_session.run(None, feed), strict=True))
            b = dict(zip(int8_out, int8_session.run(None, feed), strict=True))
            for pair, s in zip(pairs, sums, strict=True):
                s.add(pair, b[pair.pre], b[pair.post], a.get(pair.tensor))
            for name, acc in out_sums.items():
                ref = np.asarray(a[name], np.float64)
                got = np.asarray(b[name], np.float64)
                acc[0] += float(np.sum(ref * ref))
                acc[1] += float(np.sum((ref - got) ** 2))
            count += 1
    if count == 0:
        raise Int8DebugError(f"{int8_onnx}: no inputs given to compare on")
    tensors = [
        _tensor_debug(pair, s, names, pair.tensor in fp32_wanted) for pair, s in zip(pairs, sums, strict=True)
    ]
    tensors.sort(key=lambda t: (t.local_sqnr_db, t.tensor))
    outputs = tuple(
        OutputDebug(name, sqnr_db(sig, noise), 100.0 * noise / sig if sig > 0 else 0.0)
        for name, (sig, noise) in out_sums.items()
    )
    return Int8Debug(
        fp32_onnx=str(fp32_onnx),
        int8_onnx=str(int8_onnx),
        inputs=count,
        tensors=tuple(tensors),
        outputs=outputs,
        seconds=round(time.perf_counter() - started, 2),
    )


def write_int8_debug(result: Int8Debug, path: PathLike) -> None:
    """Write ``results/int8_debug/<model>.json`` atomically (indented JSON)."""
    write_text_atomic(path, json.dumps(result.to_json(), indent=1) + "\n")
