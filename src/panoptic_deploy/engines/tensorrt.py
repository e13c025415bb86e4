"""TensorRT backend: strongly typed engine build from ONNX (the runner is in
:mod:`panoptic_deploy.engines.tensorrt_runner`).

Written directly on the ``tensorrt`` Python API (not Polygraphy; docs/engines.md says why) for TensorRT
10.x and 11.x, and type-checked with mypy against the vendored stubs in ``typings/``, patched to the API the
two versions share. ``tensorrt`` is imported inside the functions, so this module imports on any machine;
:func:`tensorrt_available` says whether it can run here.

Precision is not a builder option: the network is strongly typed, so the types in the ONNX model decide it
(FP16 from AutoCast, INT8 from explicit Q/DQ nodes). TensorRT 11 removed the weak-typing precision flags
(``BuilderFlag.FP16``/``INT8``) and implicit INT8 calibration (``IInt8Calibrator``); this module uses neither.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from panoptic_deploy.engines.sidecar import (
    BuilderValue,
    DeviceInfo,
    EngineSidecar,
    check_precision,
    make_sidecar,
    sidecar_path,
    write_sidecar,
)
from panoptic_deploy.errors import EngineError
from panoptic_deploy.fileio import atomic_path
from panoptic_deploy.filelock import update_locked
from panoptic_deploy.onnx_utils import TensorSpec, summarize_onnx

if TYPE_CHECKING:
    import tensorrt as trt

_LOG = logging.getLogger(__name__)

SUPPORTED_MAJOR_VERSIONS = (10, 11)
MAX_OPTIMIZATION_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0 (fastest build) .. 5, default 3

# TensorRT DataType member name -> the sidecar's dtype string (numpy name). Types without a torch equivalent
# (FP8, INT4, FP4, E8M0) can occur inside a network but not at the I/O of the models this project builds.
_TRT_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return -1


def tensorrt_available() -> tuple[bool, str]:
    """Whether the TensorRT backend can run here: real TensorRT 10.x/11.x and a CUDA GPU visible to torch."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer cannot be loaded
        return False, f"TensorRT is not installed ({exc})"
    # tensorrt-stubs (or any folder named tensorrt on sys.path) makes `import tensorrt` succeed as an empty
    # namespace package; only the real bindings have Builder.
    if not hasattr(trt, "Builder"):
        where = ", ".join(str(p) for p in getattr(trt, "__path__", []))
        return False, f"'tensorrt' ({where}) has no Builder: a stub or namespace package, not TensorRT"
    version = str(trt.__version__)
    if _major(version) not in SUPPORTED_MAJOR_VERSIONS:
        return False, f"TensorRT {version} found; this backend supports 10.x and 11.x"
    if not torch.cuda.is_available():
        return False, f"TensorRT {version} found but torch {torch.__version__} sees no CUDA GPU"
    return True, f"TensorRT {version} on {torch.cuda.get_device_name()}"


def require_tensorrt(what: str) -> None:
    ok, reason = tensorrt_available()
    if not ok:
        raise EngineError(f"{what}: {reason}")


def gpu_info(device: int, gpu_type: str | None = None) -> DeviceInfo:
    major, minor = torch.cuda.get_device_capability(device)
    return DeviceInfo(
        kind="cuda",
        name=torch.cuda.get_device_name(device),
        compute_capability=f"{major}.{minor}",
        driver=_driver_version(),
        gpu_type=gpu_type,
    )


def _driver_version() -> str | None:
    """The NVIDIA driver version (NVML), or None where NVML cannot answer."""
    from panoptic_deploy.errors import GpuMismatchError
    from panoptic_deploy.gpu import visible_gpus

    try:
        gpus = visible_gpus()
    except GpuMismatchError:
        return None
    return gpus[0].driver if gpus else None


# TensorRT keeps a single logger per process ("TensorRT maintains only a single logger pointer at any
# given time", NVIDIA/TensorRT#1475): a second, different logger is ignored while a builder or runtime
# exists. So one logger serves every build and runner, and each operation clears this list before it starts.
TRT_ERRORS: list[str] = []


@cache
def shared_logger() -> trt.ILogger:
    """The process-wide TensorRT logger: forwards to :mod:`logging`, appends errors to ``TRT_ERRORS``."""
    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            # pybind11 trampoline: the base __init__ must be called explicitly (ILogger API docs).
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                TRT_ERRORS.append(msg)
                _LOG.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                _LOG.warning("TensorRT: %s", msg)
            else:
                _LOG.debug("TensorRT: %s", msg)

    return _Logger()


def last_errors() -> str:
    return " | ".join(TRT_ERRORS[-3:]) if TRT_ERRORS else "TensorRT logged no error"


def _network_flags() -> int:
    """``create_network`` flags for a strongly typed network on the running TensorRT version."""
    import tensorrt as trt

    # TensorRT 11.0 API (NetworkDefinitionCreationFlag): strong typing is always on, STRONGLY_TYPED is
    # "deprecated ... retained for API compatibility but ignored" and EXPLICIT_BATCH is gone. TensorRT 10.x:
    # strong typing is opt-in with STRONGLY_TYPED (EXPLICIT_BATCH is deprecated and ignored since 10.0).
    if _major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def trt_dims(dims: trt.Dims) -> tuple[int, ...]:
    # Dims supports len() and indexing but the stubs declare no __iter__.
    return tuple(int(dims[i]) for i in range(len(dims)))


def dtype_name(dtype: trt.DataType, where: str) -> str:
    name = _TRT_DTYPE_NAMES.get(dtype.name)
    if name is None:
        raise EngineError(f"{where}: TensorRT data type {dtype.name} has no torch equivalent")
    return name


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int8": torch.int8,
        "int32": torch.int32,
        "int64": torch.int64,
        "bool": torch.bool,
        "uint8": torch.uint8,
    }
    return dtypes[name]


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_spec(tensor: trt.ITensor, where: str) -> TensorSpec:
    return TensorSpec(name=tensor.name, dtype=dtype_name(tensor.dtype, where), shape=trt_dims(tensor.shape))


def _parser_errors(parser: trt.OnnxParser) -> str:
    """Every error the ONNX parser recorded, as one line."""
    parts = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = (
            f"node {error.node()} '{error.node_name()}' ({error.node_operator()}): "
            if error.node() >= 0
            else ""
        )
        parts.append(f"{where}{error.desc()}")
    return "; ".join(parts) or "no parser error recorded"


def _fresh_timing_cache(config: trt.IBuilderConfig, what: Path) -> trt.ITimingCache:
    cache = config.create_timing_cache(b"")
    if cache is None:
        raise EngineError(f"{what}: TensorRT cannot create an empty timing cache: {last_errors()}")
    return cache


def _attach_timing_cache(
    config: trt.IBuilderConfig, path: str | os.PathLike[str] | None, engine_path: Path
) -> str:
    """Give ``config`` the timing cache at ``path`` (or a fresh one) -> the sidecar's ``timing_cache`` status.

    ``create_timing_cache`` returns None for bytes it cannot read (a damaged file, or a cache another
    TensorRT version wrote); ``set_timing_cache(..., ignore_mismatch=False)`` returns False for a cache whose
    CUDA device properties differ from this GPU's (IBuilderConfig.set_timing_cache docs, 10.13 and 11.1). In
    both cases the build starts from a fresh cache, so it never uses timings measured elsewhere, and the file
    is replaced by the fresh cache when the build saves it.
    """
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    if not data:  # no file, or an empty one: create_timing_cache(b"") is TensorRT's "new cache"
        cache = _fresh_timing_cache(config, engine_path)
        status = "new"
    else:
        mark = len(TRT_ERRORS)
        loaded = config.create_timing_cache(data)
        if loaded is not None:
            cache, status = loaded, "loaded"
        else:
            del TRT_ERRORS[mark:]  # handled here; not the reason of a later failure
            _LOG.warning(
                "%s: TensorRT cannot read this timing cache (damaged, or written by another TensorRT "
                "version); building with a fresh cache, which replaces the file afterwards",
                path,
            )
            cache = _fresh_timing_cache(config, engine_path)
            status = "discarded (unreadable: damaged or from another TensorRT version)"
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return status
    _LOG.warning(
        "%s: timing cache measured on another GPU (its CUDA device properties differ from this one's); "
        "building with a fresh cache, which replaces the file afterwards",
        path,
    )
    if not config.set_timing_cache(_fresh_timing_cache(config, engine_path), ignore_mismatch=False):
        raise EngineError(f"{engine_path}: TensorRT refused a fresh timing cache: {last_errors()}")
    return "discarded (measured on another GPU)"


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge what is on disk now into the build's timing cache, then save it, under the cache's file lock.

    A concurrent build may have saved its own entries since this build read the file; ``combine`` keeps them
    (as Polygraphy's and trtexec's cache saving do). ``combine`` refuses a cache of another TensorRT version
    or GPU (ITimingCache.combine docs); that file is then replaced.
    """
    cache = config.get_timing_cache()
    if cache is None:  # the bindings return None when no cache is attached
        _LOG.warning("%s: the builder has no timing cache to save", path)
        return
    ours = cache

    def merge(on_disk: bytes | None) -> bytes:
        if on_disk:
            mark = len(TRT_ERRORS)
            theirs = config.create_timing_cache(on_disk)
            if theirs is None or not ours.combine(theirs, ignore_mismatch=False):
                del TRT_ERRORS[mark:]
                _LOG.warning(
                    "%s: the cache on disk is unreadable or from another TensorRT version or GPU; "
                    "replacing it with this build's cache",
                    path,
                )
        return bytes(ours.serialize())

    update_locked(path, merge)


def _check_build_settings(engine_path: Path, workspace_bytes: int, optimization_level: int) -> None:
    if workspace_bytes <= 0:
        raise EngineError(f"{engine_path}: workspace_bytes must be positive, got {workspace_bytes}")
    if not 0 <= optimization_level <= MAX_OPTIMIZATION_LEVEL:
        raise EngineError(
            f"{engine_path}: optimization_level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {optimization_level}"
        )


def _network_io(
    network: trt.INetworkDefinition, onnx_path: Path, input_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(input shape, input specs, output specs) of the parsed network, whose one input must have exactly the
    static ``input_shape``."""
    if network.num_inputs != 1:
        raise EngineError(f"{onnx_path}: expected one input, the parsed network has {network.num_inputs}")
    net_input = network.get_input(0)
    shape = trt_dims(net_input.shape)
    if any(d < 0 for d in shape):
        raise EngineError(
            f"{onnx_path}: input '{net_input.name}' has dynamic shape {list(shape)}; "
            "export with a static shape"
        )
    if shape != tuple(input_shape):
        raise EngineError(
            f"{onnx_path}: input '{net_input.name}' has shape {list(shape)}, expected {list(input_shape)}"
        )
    inputs = tuple(_tensor_spec(network.get_input(i), str(onnx_path)) for i in range(network.num_inputs))
    outputs = tuple(_tensor_spec(network.get_output(i), str(onnx_path)) for i in range(network.num_outputs))
    return shape, inputs, outputs


def _builder_record(
    workspace_bytes: int,
    optimization_level: int,
    flags: int,
    cache_status: str,
    timing_cache_path: str | os.PathLike[str] | None,
) -> dict[str, BuilderValue]:
    """The builder settings the sidecar records."""
    return {
        "workspace_bytes": workspace_bytes,
        "optimization_level": optimization_level,
        "strongly_typed": True,
        "network_flags": flags,
        "timing_cache": cache_status,
        "timing_cache_file": None if timing_cache_path is None else Path(timing_cache_path).name,
    }


def build_trt_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    workspace_bytes: int,
    optimization_level: int,
    timing_cache_path: str | os.PathLike[str] | None,
    input_shape: Sequence[int],
    precision: str | None = None,
    gpu_type: str | None = None,
) -> EngineSidecar:
    """Build a strongly typed TensorRT engine from ``onnx_path``; write the plan and its sidecar atomically.

    ``input_shape`` must equal the static shape of the model's single input (e.g. ``(1, 3, 400, 600)``).
    ``workspace_bytes`` caps the builder's scratch memory pool, ``optimization_level`` is the builder
    optimisation level 0..5. The timing cache at ``timing_cache_path`` is loaded if it exists (discarded if
    it is unreadable or from another GPU) and, after the build, merged with what is on disk then and saved
    under a file lock, so concurrent builds keep each other's entries. ``precision``, if given,
    must match what the ONNX graph contains; otherwise it is read from the graph. Builds on the current
    CUDA device; ``gpu_type`` (the workflow's config 'gpus' type) is recorded in the sidecar.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    require_tensorrt(f"cannot build {engine_path}")
    import tensorrt as trt

    _check_build_settings(engine_path, workspace_bytes, optimization_level)
    summary = summarize_onnx(onnx_path)
    if precision is not None:
        check_precision(precision, summary)

    TRT_ERRORS.clear()
    logger = shared_logger()
    builder = trt.Builder(logger)
    flags = _network_flags()
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files relative to the model.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(f"{onnx_path}: TensorRT ONNX parser failed: {_parser_errors(parser)}")

    shape, inputs, outputs = _network_io(network, onnx_path, input_shape)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    # Detailed layer information in the plan (precision, tactic, formats of every layer) for the engine
    # inspector and trtexec --exportLayerInfo; the runner keeps NVTX annotations at layer names.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache_status = _attach_timing_cache(config, timing_cache_path, engine_path)

    device = torch.cuda.current_device()
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT build failed: {last_errors()}")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if timing_cache_path is not None:
        _save_timing_cache(config, Path(timing_cache_path))

    sidecar = make_sidecar(
        backend="tensorrt",
        backend_version=str(trt.__version__),
        device=gpu_info(device, gpu_type),
        precision=summary.precision,
        input_shape=shape,
        inputs=inputs,
        outputs=outputs,
        build_seconds=build_seconds,
        engine_path=engine_path,
        source_onnx=onnx_path,
        source_onnx_sha256=summary.sha256,
        builder=_builder_record(workspace_bytes, optimization_level, flags, cache_status, timing_cache_path),
    )
    write_sidecar(sidecar, sidecar_path(engine_path))
    return sidecar
