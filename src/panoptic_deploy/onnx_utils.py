"""ONNX model helpers every stage shares: load with a one-line error, inspect I/O and precision markers,
count and type nodes, and quiet the converters' logging.

The stages that read ONNX files (export, precision, engines, bench) used to keep their own copies of these;
they live here once. ``onnx`` itself is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panoptic_deploy.errors import EngineError, PanopticDeployError
from panoptic_deploy.fileio import PathLike, file_sha256

if TYPE_CHECKING:
    import onnx

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# TensorProto element types (onnx.TensorProto.FLOAT, FLOAT16, BFLOAT16) without importing onnx.
ONNX_FLOAT = 1
ONNX_FLOAT16 = 10
ONNX_BFLOAT16 = 16
# Loggers of the exporters, simplifiers and ModelOpt: INFO on every optimisation pass (hundreds of lines).
CONVERTER_LOGGERS = (
    "onnxscript",
    "onnx_ir",
    "torch.onnx",
    "onnxslim",
    "onnxsim",
    "modelopt.onnx",
    "modelopt.onnx.autocast",
)


def load_onnx(path: PathLike, error: type[PanopticDeployError]) -> onnx.ModelProto:
    """The model at ``path``; ``error`` (the calling stage's error class) names the file when it is missing
    or unreadable."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: ONNX model not found")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError/ValueError/OSError depending on the damage
        raise error(f"{p}: not a readable ONNX model ({type(exc).__name__})") from exc


@contextlib.contextmanager
def quiet_converters(*, ignore_warnings: bool = False) -> Iterator[None]:
    """Silence the converters' INFO logging and their print() progress lines for one call (and, with
    ``ignore_warnings``, their warnings: deprecations of the legacy exporter, unregistered torchvision ops);
    errors still raise. ModelOpt sets levels on its loggers itself (AutoCast copies the parent's), so every
    level is set and restored."""
    loggers = [logging.getLogger(name) for name in CONVERTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            if ignore_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def io_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each graph input and output, by name."""
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (0 if none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """How many nodes of ``op_type`` the graph has."""
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def tensor_float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference), for float-precision bookkeeping."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


# What a model contains: the engine backends record it and check the declared precision against it.


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64", ...
    shape: tuple[int | str, ...]  # a str is a symbolic (dynamic) dimension


@dataclass(frozen=True)
class OnnxSummary:
    """Inputs, outputs and precision markers of an ONNX model."""

    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear nodes
    has_fp16: bool  # FP16 initializers, casts or value types

    @property
    def precision(self) -> str:
        """``int8`` if the graph has Q/DQ nodes, else ``fp16`` if it has FP16 tensors, else ``fp32``."""
        if self.qdq_nodes:
            return "int8"
        return "fp16" if self.has_fp16 else "fp32"

    @property
    def static_input_shape(self) -> tuple[int, ...]:
        """Shape of the single input; :class:`EngineError` for several inputs or a dynamic dimension."""
        if len(self.inputs) != 1:
            names = ", ".join(t.name for t in self.inputs)
            raise EngineError(f"{self.path}: expected one input, found {len(self.inputs)} ({names})")
        (spec,) = self.inputs
        dims = tuple(d for d in spec.shape if isinstance(d, int) and d > 0)
        if len(dims) != len(spec.shape):
            raise EngineError(
                f"{self.path}: input '{spec.name}' has dynamic shape {list(spec.shape)}; "
                "export with a static shape"
            )
        return dims


def _value_spec(value: Any) -> TensorSpec:
    """TensorSpec of an ``onnx.ValueInfoProto``."""
    import onnx

    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(str(dim.dim_param) or "?")
    return TensorSpec(str(value.name), str(dtype), tuple(shape))


def summarize_onnx(onnx_path: PathLike) -> OnnxSummary:
    """Read an ONNX model's I/O and precision markers (external weight files are not loaded)."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise EngineError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError/ValueError/... for damaged files
        raise EngineError(f"{path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(init.data_type == fp16 for init in graph.initializer)
    values = [*graph.input, *graph.output, *graph.value_info]
    has_fp16 = has_fp16 or any(v.type.tensor_type.elem_type == fp16 for v in values)
    qdq_nodes = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq_nodes += 1
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                has_fp16 = True
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == fp16:
                has_fp16 = True
    return OnnxSummary(
        path=path,
        sha256=file_sha256(path),
        inputs=tuple(_value_spec(v) for v in graph.input if v.name not in initializer_names),
        outputs=tuple(_value_spec(v) for v in graph.output),
        qdq_nodes=qdq_nodes,
        has_fp16=has_fp16,
    )
