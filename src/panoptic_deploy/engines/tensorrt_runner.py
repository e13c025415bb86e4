"""TensorRT runner: a plan from :func:`panoptic_deploy.engines.tensorrt.build_trt_engine` run on torch CUDA
tensors, on its own CUDA stream, optionally replayed as a CUDA graph; with its timing and memory."""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from panoptic_deploy.engines.sidecar import EngineSidecar, check_engine_file, check_feed
from panoptic_deploy.engines.tensorrt import (
    TRT_ERRORS,
    dtype_name,
    gpu_info,
    last_errors,
    require_tensorrt,
    shared_logger,
    torch_dtype,
    torch_dtype_name,
    trt_dims,
)
from panoptic_deploy.errors import EngineError

if TYPE_CHECKING:
    import tensorrt as trt

_LOG = logging.getLogger(__name__)


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


def _check_built_here(sidecar: EngineSidecar, engine_path: Path, device: int, tensorrt_version: str) -> None:
    """EngineError naming the engine unless its sidecar says it was built by this TensorRT on this kind of
    GPU and the file is the one the sidecar describes."""
    if sidecar.backend != "tensorrt":
        raise EngineError(f"{engine_path}: sidecar is for backend {sidecar.backend}, not tensorrt")
    if sidecar.backend_version != tensorrt_version:
        raise EngineError(
            f"{engine_path}: built with TensorRT {sidecar.backend_version}, this process has "
            f"TensorRT {tensorrt_version}; rebuild the engine"
        )
    here = gpu_info(device)
    built = sidecar.device
    if (built.name, built.compute_capability) != (here.name, here.compute_capability):
        raise EngineError(
            f"{engine_path}: built on {built.name} (compute capability {built.compute_capability}), "
            f"this GPU is {here.name} (compute capability {here.compute_capability}); rebuild the engine"
        )
    check_engine_file(sidecar, engine_path)


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
        require_tensorrt(f"cannot load {self.engine_path}")
        import tensorrt as trt

        self.device = torch.cuda.current_device() if device is None else device
        _check_built_here(sidecar, self.engine_path, self.device, trt.__version__)

        TRT_ERRORS.clear()
        self._logger = shared_logger()  # must outlive the runtime, engine and context
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            free_before, _ = torch.cuda.mem_get_info()
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise EngineError(f"{self.engine_path}: cannot deserialise the plan: {last_errors()}")
            self._engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise EngineError(f"{self.engine_path}: cannot create an execution context: {last_errors()}")
            # Plans carry detailed layer information (build_trt_engine); NVTX at that level costs enqueue
            # time, so timed runs annotate layer names only.
            context.nvtx_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self._context = context
            torch.cuda.synchronize()
            free_after, _ = torch.cuda.mem_get_info()
        self._engine_load_bytes = max(0, free_before - free_after)

        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        specs = {spec.name: spec for spec in (*sidecar.inputs, *sidecar.outputs)}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = trt_dims(engine.get_tensor_shape(name))
            dtype = dtype_name(engine.get_tensor_dtype(name), str(self.engine_path))
            spec = specs.get(name)
            if spec is None or spec.shape != shape or spec.dtype != dtype:
                raise EngineError(
                    f"{self.engine_path}: engine tensor '{name}' {dtype}{list(shape)} "
                    "differs from its sidecar"
                )
            buffer = torch.zeros(shape, dtype=torch_dtype(dtype), device=self.device)
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
            raise EngineError(f"{self.engine_path}: execute_async_v3 failed: {last_errors()}")

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
        mark = len(TRT_ERRORS)
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
            failure = f"execute_async_v3 failed inside the capture: {last_errors()}"
        del graph  # a graph TensorRT reported as failed must not be replayed
        del TRT_ERRORS[mark:]
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
            {name: (tuple(t.shape), torch_dtype_name(t.dtype)) for name, t in inputs.items()},
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
