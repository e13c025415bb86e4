"""TensorRT backend: strongly typed engine build from ONNX, and a runner on torch CUDA tensors.

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
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from panoptic_deploy.engines.sidecar import (
    DeviceInfo,
    EngineError,
    EngineSidecar,
    TensorSpec,
    check_engine_file,
    check_feed,
    check_precision,
    make_sidecar,
    sidecar_path,
    summarize_onnx,
    write_sidecar,
)
from panoptic_deploy.fileio import atomic_path
from panoptic_deploy.filelock import update_locked

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


def _require_tensorrt(what: str) -> None:
    ok, reason = tensorrt_available()
    if not ok:
        raise EngineError(f"{what}: {reason}")


def _gpu_info(device: int, gpu_type: str | None = None) -> DeviceInfo:
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
    from panoptic_deploy.gpu import GpuMismatchError, visible_gpus

    try:
        gpus = visible_gpus()
    except GpuMismatchError:
        return None
    return gpus[0].driver if gpus else None


# TensorRT keeps a single logger per process ("TensorRT maintains only a single logger pointer at any
# given time", NVIDIA/TensorRT#1475): a second, different logger is ignored while a builder or runtime
# exists. So one logger serves every build and runner, and each operation clears this list before it starts.
_TRT_ERRORS: list[str] = []


@cache
def _shared_logger() -> trt.ILogger:
    """The process-wide TensorRT logger: forwards to :mod:`logging`, appends errors to ``_TRT_ERRORS``."""
    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            # pybind11 trampoline: the base __init__ must be called explicitly (ILogger API docs).
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                _TRT_ERRORS.append(msg)
                _LOG.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                _LOG.warning("TensorRT: %s", msg)
            else:
                _LOG.debug("TensorRT: %s", msg)

    return _Logger()


def _last_errors() -> str:
    return " | ".join(_TRT_ERRORS[-3:]) if _TRT_ERRORS else "TensorRT logged no error"


def _network_flags() -> int:
    """``create_network`` flags for a strongly typed network on the running TensorRT version."""
    import tensorrt as trt

    # TensorRT 11.0 API (NetworkDefinitionCreationFlag): strong typing is always on, STRONGLY_TYPED is
    # "deprecated ... retained for API compatibility but ignored" and EXPLICIT_BATCH is gone. TensorRT 10.x:
    # strong typing is opt-in with STRONGLY_TYPED (EXPLICIT_BATCH is deprecated and ignored since 10.0).
    if _major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    # Dims supports len() and indexing but the stubs declare no __iter__.
    return tuple(int(dims[i]) for i in range(len(dims)))


def _dtype_name(dtype: trt.DataType, where: str) -> str:
    name = _TRT_DTYPE_NAMES.get(dtype.name)
    if name is None:
        raise EngineError(f"{where}: TensorRT data type {dtype.name} has no torch equivalent")
    return name


def _torch_dtype(name: str) -> torch.dtype:
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


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_spec(tensor: trt.ITensor, where: str) -> TensorSpec:
    return TensorSpec(name=tensor.name, dtype=_dtype_name(tensor.dtype, where), shape=_dims(tensor.shape))


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
        raise EngineError(f"{what}: TensorRT cannot create an empty timing cache: {_last_errors()}")
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
        mark = len(_TRT_ERRORS)
        loaded = config.create_timing_cache(data)
        if loaded is not None:
            cache, status = loaded, "loaded"
        else:
            del _TRT_ERRORS[mark:]  # handled here; not the reason of a later failure
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
        raise EngineError(f"{engine_path}: TensorRT refused a fresh timing cache: {_last_errors()}")
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
            mark = len(_TRT_ERRORS)
            theirs = config.create_timing_cache(on_disk)
            if theirs is None or not ours.combine(theirs, ignore_mismatch=False):
                del _TRT_ERRORS[mark:]
                _LOG.warning(
                    "%s: the cache on disk is unreadable or from another TensorRT version or GPU; "
                    "replacing it with this build's cache",
                    path,
                )
        return bytes(ours.serialize())

    update_locked(path, merge)


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
    _require_tensorrt(f"cannot build {engine_path}")
    import tensorrt as trt

    if workspace_bytes <= 0:
        raise EngineError(f"{engine_path}: workspace_bytes must be positive, got {workspace_bytes}")
    if not 0 <= optimization_level <= MAX_OPTIMIZATION_LEVEL:
        raise EngineError(
            f"{engine_path}: optimization_level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {optimization_level}"
        )
    summary = summarize_onnx(onnx_path)
    if precision is not None:
        check_precision(precision, summary)

    _TRT_ERRORS.clear()
    logger = _shared_logger()
    builder = trt.Builder(logger)
    flags = _network_flags()
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files relative to the model.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(f"{onnx_path}: TensorRT ONNX parser failed: {_parser_errors(parser)}")

    if network.num_inputs != 1:
        raise EngineError(f"{onnx_path}: expected one input, the parsed network has {network.num_inputs}")
    net_input = network.get_input(0)
    shape = _dims(net_input.shape)
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

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    cache_status = _attach_timing_cache(config, timing_cache_path, engine_path)

    device = torch.cuda.current_device()
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT build failed: {_last_errors()}")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if timing_cache_path is not None:
        _save_timing_cache(config, Path(timing_cache_path))

    sidecar = make_sidecar(
        backend="tensorrt",
        backend_version=str(trt.__version__),
        device=_gpu_info(device, gpu_type),
        precision=summary.precision,
        input_shape=shape,
        inputs=inputs,
        outputs=outputs,
        build_seconds=build_seconds,
        engine_path=engine_path,
        source_onnx=onnx_path,
        source_onnx_sha256=summary.sha256,
        builder={
            "workspace_bytes": workspace_bytes,
            "optimization_level": optimization_level,
            "strongly_typed": True,
            "network_flags": flags,
            "timing_cache": cache_status,
            "timing_cache_file": None if timing_cache_path is None else Path(timing_cache_path).name,
        },
    )
    write_sidecar(sidecar, sidecar_path(engine_path))
    return sidecar


def engine_device_memory_bytes(engine: trt.ICudaEngine) -> int:
    """Device memory one execution context of ``engine`` needs for activations and scratch space."""
    # device_memory_size_v2 is the only spelling in TensorRT 11 (migration guide, "Removed Python APIs":
    # ICudaEngine.device_memory_size -> device_memory_size_v2); it was added during 10.x and is missing from
    # the 10.0 Python API, which has only device_memory_size. The vendored stubs drop the removed name,
    # hence getattr for that fallback.
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(getattr(engine, "device_memory_size"))  # noqa: B009


@dataclass(frozen=True)
class TrtTiming:
    """GPU time per engine execution, from CUDA events around each enqueue (or graph replay)."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    iterations: int
    warmup: int
    cuda_graph: bool


@dataclass(frozen=True)
class TrtMemory:
    """GPU memory of a loaded engine and its runner."""

    engine_device_memory_bytes: int  # activations/scratch of one context (device_memory_size_v2)
    engine_load_bytes: int  # drop of free GPU memory (cudaMemGetInfo) over deserialisation + context creation
    io_buffer_bytes: int  # the runner's input and output buffers (torch allocations)
    torch_peak_allocated_bytes: int  # torch.cuda.max_memory_allocated on the device since the last reset


class TrtRunner:
    """Runs a plan from :func:`build_trt_engine` on torch CUDA tensors, on its own CUDA stream.

    The sidecar's TensorRT version, GPU name and compute capability must equal the current ones (a plan is
    specific to both); this is checked before the plan is deserialised. Inputs and outputs live in
    preallocated torch buffers whose addresses are bound once (``set_tensor_address``), which also makes the
    optional CUDA-graph capture valid for every later run.
    """

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        sidecar: EngineSidecar,
        *,
        device: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = sidecar
        _require_tensorrt(f"cannot load {self.engine_path}")
        import tensorrt as trt

        self.device = torch.cuda.current_device() if device is None else device
        if sidecar.backend != "tensorrt":
            raise EngineError(f"{self.engine_path}: sidecar is for backend {sidecar.backend}, not tensorrt")
        if sidecar.backend_version != trt.__version__:
            raise EngineError(
                f"{self.engine_path}: built with TensorRT {sidecar.backend_version}, this process has "
                f"TensorRT {trt.__version__}; rebuild the engine"
            )
        here = _gpu_info(self.device)
        built = sidecar.device
        if (built.name, built.compute_capability) != (here.name, here.compute_capability):
            raise EngineError(
                f"{self.engine_path}: built on {built.name} (compute capability {built.compute_capability}), "
                f"this GPU is {here.name} (compute capability {here.compute_capability}); rebuild the engine"
            )
        check_engine_file(sidecar, self.engine_path)

        _TRT_ERRORS.clear()
        self._logger = _shared_logger()  # must outlive the runtime, engine and context
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            free_before, _ = torch.cuda.mem_get_info()
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise EngineError(f"{self.engine_path}: cannot deserialise the plan: {_last_errors()}")
            self._engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise EngineError(f"{self.engine_path}: cannot create an execution context: {_last_errors()}")
            self._context = context
            torch.cuda.synchronize()
            free_after, _ = torch.cuda.mem_get_info()
        self._engine_load_bytes = max(0, free_before - free_after)

        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        specs = {spec.name: spec for spec in (*sidecar.inputs, *sidecar.outputs)}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = _dims(engine.get_tensor_shape(name))
            dtype = _dtype_name(engine.get_tensor_dtype(name), str(self.engine_path))
            spec = specs.get(name)
            if spec is None or spec.shape != shape or spec.dtype != dtype:
                raise EngineError(
                    f"{self.engine_path}: engine tensor '{name}' {dtype}{list(shape)} "
                    "differs from its sidecar"
                )
            buffer = torch.zeros(shape, dtype=_torch_dtype(dtype), device=self.device)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs[name] = buffer
            else:
                self._outputs[name] = buffer
            if not context.set_tensor_address(name, buffer.data_ptr()):
                raise EngineError(f"{self.engine_path}: set_tensor_address failed for '{name}'")
        if set(self._inputs) != {s.name for s in sidecar.inputs}:
            raise EngineError(
                f"{self.engine_path}: engine inputs {sorted(self._inputs)} differ from its sidecar"
            )
        self._output_order = [s.name for s in sidecar.outputs]
        # torch declares Stream/Event constructors without annotations, hence the ignores below.
        self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # the zero-filled buffers
        self._graph: torch.cuda.CUDAGraph | None = None
        self.cuda_graph_failure: str | None = None  # why a requested capture fell back to plain launches
        if cuda_graph:
            self.cuda_graph_failure = self._capture_graph()

    @property
    def cuda_graph(self) -> bool:
        """Whether runs replay a captured CUDA graph (False if not asked for, or if the capture failed)."""
        return self._graph is not None

    def _execute(self) -> None:
        """Enqueue one inference on the runner's stream (the caller has made it the current stream)."""
        if self._graph is not None:
            self._graph.replay()
        elif not self._context.execute_async_v3(self._stream.cuda_stream):
            raise EngineError(f"{self.engine_path}: execute_async_v3 failed: {_last_errors()}")

    def _capture_graph(self) -> str | None:
        """Capture one execution into a CUDA graph -> None, or why runs fall back to plain launches.

        As trtexec does (sampleInference.cpp, IterationStd::createEnqueueFunction; sampleDevice.h,
        TrtCudaGraph): one plain run first (TensorRT finishes deferred per-context set-up outside the
        capture), a thread-local capture (cudaStreamCaptureModeThreadLocal: only this thread's calls can
        invalidate it, not other threads' CUDA work), and if ``execute_async_v3`` returns False inside the
        capture (an engine with operations that cannot be captured, e.g. data-dependent loops) the capture is
        ended anyway and the runner launches plainly. ``torch.cuda.graph`` is not used: when its
        ``capture_end`` raises on an invalidated capture, its ``__exit__`` skips restoring the stream.
        """
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._execute()
        self._stream.synchronize()
        mark = len(_TRT_ERRORS)
        graph = torch.cuda.CUDAGraph()
        enqueued = False
        failure: str | None = None
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                enqueued = self._context.execute_async_v3(self._stream.cuda_stream)
            finally:
                # Always end the capture, also when TensorRT failed inside it or raised: a stream left
                # capturing breaks every later launch on it.
                try:
                    graph.capture_end()
                except RuntimeError as exc:  # cudaErrorStreamCaptureInvalidated
                    failure = f"the capture was invalidated ({exc})"
        if enqueued and failure is None:
            self._graph = graph
            return None
        if failure is None:
            failure = f"execute_async_v3 failed inside the capture: {_last_errors()}"
        del graph  # a graph TensorRT reported as failed must not be replayed
        del _TRT_ERRORS[mark:]
        _LOG.warning(
            "%s: CUDA graph capture failed, running with plain launches: %s", self.engine_path, failure
        )
        # The context must still work outside a capture; a failure here is real.
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._execute()
        self._stream.synchronize()
        return failure

    def _load_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Copy ``inputs`` (CPU or CUDA) into the bound input buffers, ordered after the caller's stream."""
        check_feed(
            self.engine_path,
            self.sidecar.inputs,
            {name: (tuple(t.shape), _torch_dtype_name(t.dtype)) for name, t in inputs.items()},
        )
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            for name, tensor in inputs.items():
                self._inputs[name].copy_(tensor)
                if tensor.is_cuda:
                    # the caller may free `tensor` while this stream still reads it
                    tensor.record_stream(self._stream)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One inference. Returns new tensors on the runner's device, in the engine's output order.

        The outputs are ordered on the caller's current stream, like any torch operation.
        """
        self._load_inputs(inputs)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._execute()
        caller = torch.cuda.current_stream(self.device)
        caller.wait_stream(self._stream)
        with torch.cuda.device(self.device):
            return {name: self._outputs[name].clone() for name in self._output_order}

    def benchmark(
        self, inputs: Mapping[str, torch.Tensor], *, warmup: int = 10, iterations: int = 100
    ) -> TrtTiming:
        """Time ``iterations`` runs after ``warmup`` untimed ones, with CUDA events on the runner's stream."""
        if iterations < 1 or warmup < 0:
            raise EngineError(f"{self.engine_path}: need iterations >= 1 and warmup >= 0")
        self._load_inputs(inputs)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]  # type: ignore[no-untyped-call]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]  # type: ignore[no-untyped-call]
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            for _ in range(warmup):
                self._execute()
            for start, end in zip(starts, ends, strict=True):
                start.record(self._stream)
                self._execute()
                end.record(self._stream)
        self._stream.synchronize()
        times = [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]
        return TrtTiming(
            median_ms=statistics.median(times),
            mean_ms=statistics.fmean(times),
            min_ms=min(times),
            max_ms=max(times),
            iterations=iterations,
            warmup=warmup,
            cuda_graph=self._graph is not None,
        )

    def memory(self) -> TrtMemory:
        """GPU memory of the engine (TensorRT's own figure and the measured load) and of the runner."""
        buffers = (*self._inputs.values(), *self._outputs.values())
        return TrtMemory(
            engine_device_memory_bytes=engine_device_memory_bytes(self._engine),
            engine_load_bytes=self._engine_load_bytes,
            io_buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
            torch_peak_allocated_bytes=int(torch.cuda.max_memory_allocated(self.device)),
        )
