"""Engine sidecar: the JSON file next to each engine that says how, where and from what it was built.

An engine (an ONNX Runtime optimized model or a TensorRT plan) is only meaningful together with the backend
version, the device and the builder settings that produced it; the runners refuse an engine whose sidecar does
not match the engine file or the current process. The layout is fixed by
``panoptic_deploy/schemas/engine_sidecar.schema.json``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoptic_deploy import __version__
from panoptic_deploy.errors import EngineError
from panoptic_deploy.fileio import file_sha256
from panoptic_deploy.host import utc_now
from panoptic_deploy.jsonfiles import from_json, read_checked_json, to_json, write_checked_json
from panoptic_deploy.onnx_utils import OnnxSummary, TensorSpec
from panoptic_deploy.vocab import PRECISIONS

SIDECAR_SCHEMA_VERSION = 1

BuilderValue = str | int | float | bool | None


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
        data: dict[str, Any] = to_json(self)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> EngineSidecar:
        """Inverse of :meth:`to_json_dict`; ``data`` must already be schema-valid."""
        return from_json(cls, data)


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
