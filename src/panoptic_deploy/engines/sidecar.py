"""Engine sidecar: the JSON file next to each engine that says how, where and from what it was built.

An engine (an ONNX Runtime optimized model or a TensorRT plan) is only meaningful together with the backend
version, the device and the builder settings that produced it; the runners refuse an engine whose sidecar does
not match the engine file or the current process. The layout is fixed by
``panoptic_deploy/schemas/engine_sidecar.schema.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from panoptic_deploy import __version__
from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import file_sha256
from panoptic_deploy.jsonfiles import read_checked_json, write_checked_json

SIDECAR_SCHEMA_VERSION = 1
BACKENDS = ("onnxruntime", "tensorrt")
# Precisions of the ONNX artefacts: fp32, fp16 (FP32 I/O) and int8 (explicit Q/DQ, FP16 or FP32 elsewhere).
PRECISIONS = ("fp32", "fp16", "int8")

BuilderValue = str | int | float | bool | None


class EngineError(PanopticDeployError):
    """An engine cannot be built, loaded or run: bad ONNX, mismatching sidecar, wrong device or version."""


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64", ...
    shape: tuple[int | str, ...]  # a str is a symbolic (dynamic) dimension


@dataclass(frozen=True)
class DeviceInfo:
    """The device an engine was built on (CPU model, or GPU name and compute capability)."""

    kind: str  # "cpu" | "cuda"
    name: str
    compute_capability: str | None  # "major.minor" on CUDA, None on CPU
    driver: str | None = None  # NVIDIA driver version (NVML) on CUDA
    gpu_type: str | None = None  # the config 'gpus' type the workflow built the engine for


@dataclass(frozen=True)
class EngineSidecar:
    """Everything a runner and a report need to know about one engine file."""

    backend: str  # "onnxruntime" | "tensorrt"
    backend_version: str
    device: DeviceInfo
    precision: str  # one of PRECISIONS
    input_shape: tuple[int, ...]  # static shape of the single input, e.g. (1, 3, 400, 600)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    build_seconds: float
    engine_file: str  # file name of the engine, no folder
    engine_bytes: int
    engine_sha256: str
    source_onnx: str  # file name of the ONNX model
    source_onnx_sha256: str
    package_version: str
    builder: dict[str, BuilderValue]
    created: str  # UTC, ISO 8601
    schema_version: int = SIDECAR_SCHEMA_VERSION

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        for key in ("inputs", "outputs"):
            data[key] = [{**t, "shape": list(t["shape"])} for t in data[key]]
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> EngineSidecar:
        """Inverse of :meth:`to_json_dict`; ``data`` must already be schema-valid."""

        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

        return cls(
            backend=data["backend"],
            backend_version=data["backend_version"],
            device=DeviceInfo(**data["device"]),
            precision=data["precision"],
            input_shape=tuple(data["input_shape"]),
            inputs=tensors(data["inputs"]),
            outputs=tensors(data["outputs"]),
            build_seconds=float(data["build_seconds"]),
            engine_file=data["engine_file"],
            engine_bytes=data["engine_bytes"],
            engine_sha256=data["engine_sha256"],
            source_onnx=data["source_onnx"],
            source_onnx_sha256=data["source_onnx_sha256"],
            package_version=data["package_version"],
            builder=dict(data["builder"]),
            created=data["created"],
            schema_version=data["schema_version"],
        )


SIDECAR_SCHEMA = "engine_sidecar.schema.json"  # in panoptic_deploy/schemas/


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """Where the sidecar of ``engine_path`` lives: the engine file name plus ``.json``."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def write_sidecar(sidecar: EngineSidecar, path: str | os.PathLike[str]) -> None:
    """Validate ``sidecar`` against the schema and write it to ``path`` atomically (indented JSON)."""
    write_checked_json(sidecar.to_json_dict(), path, SIDECAR_SCHEMA, "sidecar", EngineError)


def read_sidecar(path: str | os.PathLike[str]) -> EngineSidecar:
    """Read and validate a sidecar; :class:`EngineError` names the file and the offending key."""
    data = read_checked_json(path, SIDECAR_SCHEMA, "engine sidecar", EngineError)
    try:
        dt.datetime.fromisoformat(data["created"])
    except ValueError as exc:
        raise EngineError(f"{path}: key 'created': {data['created']!r} is not an ISO 8601 time") from exc
    return EngineSidecar.from_json_dict(data)


def check_engine_file(sidecar: EngineSidecar, engine_path: str | os.PathLike[str]) -> None:
    """Raise :class:`EngineError` unless ``engine_path`` is the file ``sidecar`` describes (size, SHA-256)."""
    path = Path(engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: engine file not found")
    size = path.stat().st_size
    if size != sidecar.engine_bytes:
        raise EngineError(
            f"{path}: engine has {size} bytes, its sidecar describes {sidecar.engine_bytes}; rebuild it"
        )
    if file_sha256(path) != sidecar.engine_sha256:
        raise EngineError(f"{path}: engine SHA-256 differs from its sidecar; rebuild it")


def check_feed(
    engine_path: str | os.PathLike[str],
    specs: tuple[TensorSpec, ...],
    given: Mapping[str, tuple[tuple[int, ...], str]],
) -> None:
    """Raise :class:`EngineError` unless ``given`` (name -> (shape, dtype name)) matches the input ``specs``.

    Symbolic dimensions in a spec accept any size.
    """
    expected = [s.name for s in specs]
    if sorted(given) != sorted(expected):
        raise EngineError(f"{engine_path}: inputs {sorted(given)} given, the engine takes {expected}")
    for spec in specs:
        shape, dtype = given[spec.name]
        shape_ok = len(shape) == len(spec.shape) and all(
            isinstance(want, str) or want == got for want, got in zip(spec.shape, shape, strict=True)
        )
        if not shape_ok:
            raise EngineError(
                f"{engine_path}: input '{spec.name}' has shape {list(shape)}, expected {list(spec.shape)}"
            )
        if dtype != spec.dtype:
            raise EngineError(f"{engine_path}: input '{spec.name}' has dtype {dtype}, expected {spec.dtype}")


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_sidecar(
    *,
    backend: str,
    backend_version: str,
    device: DeviceInfo,
    precision: str,
    input_shape: tuple[int, ...],
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    build_seconds: float,
    engine_path: Path,
    source_onnx: Path,
    source_onnx_sha256: str,
    builder: dict[str, BuilderValue],
) -> EngineSidecar:
    """Assemble a sidecar for a freshly written ``engine_path`` (size and hash read from the file)."""
    return EngineSidecar(
        backend=backend,
        backend_version=backend_version,
        device=device,
        precision=precision,
        input_shape=input_shape,
        inputs=inputs,
        outputs=outputs,
        build_seconds=round(build_seconds, 3),
        engine_file=engine_path.name,
        engine_bytes=engine_path.stat().st_size,
        engine_sha256=file_sha256(engine_path),
        source_onnx=source_onnx.name,
        source_onnx_sha256=source_onnx_sha256,
        package_version=__version__,
        builder=builder,
        created=utc_now(),
    )


# ----------------------------------------------------------------------------------------------------
# What the source ONNX model contains (the backends record it and check the declared precision against it).


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
    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(str(dim.dim_param) or "?")
    return TensorSpec(str(value.name), str(dtype), tuple(shape))


def summarize_onnx(onnx_path: str | os.PathLike[str]) -> OnnxSummary:
    """Read an ONNX model's I/O and precision markers (external weight files are not loaded)."""
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


def check_precision(declared: str, summary: OnnxSummary) -> None:
    """Raise :class:`EngineError` unless ``declared`` is a known precision that matches the graph's contents.

    The backends choose settings from the precision (ONNX Runtime must not optimise FP16/QDQ graphs), so a
    mislabelled model would be run with the wrong settings.
    """
    if declared not in PRECISIONS:
        raise EngineError(
            f"{summary.path}: unknown precision {declared!r}; expected one of {', '.join(PRECISIONS)}"
        )
    detected = summary.precision
    if declared != detected:
        raise EngineError(
            f"{summary.path}: declared precision {declared} but the graph is {detected} "
            f"({summary.qdq_nodes} Q/DQ nodes, FP16 tensors: {'yes' if summary.has_fp16 else 'no'})"
        )
