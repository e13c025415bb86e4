"""The benchmark's runners: one prepared input -> network outputs, each backend with its own timer.

:func:`combo_support` says which backend × precision runs where (the workflow asks it at parse time to list
what is skipped on this machine). A :class:`Runner` is what :func:`panoptic_deploy.bench.run.run_bench`
times: ``to_device`` (counted as pre-processing) and ``run`` (the network: ``time.perf_counter`` on CPU,
CUDA events on GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from panoptic_deploy.bench.results import EngineInfo
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.modeling import PanopticFCN
from panoptic_deploy.spec import ModelSpec
from panoptic_deploy.vocab import BENCH_BACKENDS, INPUT_NAME, PRECISIONS, TORCH_BACKENDS

if TYPE_CHECKING:
    from panoptic_deploy.engines.sidecar import EngineSidecar


def default_device(backend: str) -> str:
    """``cuda`` for tensorrt, and for the torch backends when a GPU is visible; ``cpu`` otherwise."""
    if backend == "tensorrt":
        return "cuda"
    if backend in TORCH_BACKENDS and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def combo_support(backend: str, precision: str, device: str | None = None) -> tuple[bool, str]:
    """Whether ``backend`` × ``precision`` runs on ``device`` (default: :func:`default_device`), and a plain
    reason (a caveat when it runs; why not when it does not). TensorRT availability is checked here too."""
    if backend not in BENCH_BACKENDS:
        return False, f"unknown backend (one of {', '.join(BENCH_BACKENDS)})"
    if precision not in PRECISIONS:
        return False, f"unknown precision (one of {', '.join(PRECISIONS)})"
    device = device or default_device(backend)
    if backend in TORCH_BACKENDS:
        if precision == "int8":
            return False, (
                "PyTorch has no INT8 path for this model; INT8 is measured on the Q/DQ ONNX model "
                "(onnxruntime, tensorrt)"
            )
        if device != "cuda" and backend == "torch_compile":
            return False, "torch.compile is benchmarked on CUDA only, and no CUDA GPU is visible here"
        if device != "cuda" and precision == "fp16":
            return False, (
                "PyTorch has no fast FP16 CPU kernels; FP16 fidelity is measured on the FP16 ONNX model"
            )
        if device == "cuda" and not torch.cuda.is_available():
            return False, f"no CUDA GPU is visible to torch {torch.__version__}"
        return True, f"{'eager' if backend == 'torch' else 'compiled'} PyTorch {precision} on {device}"
    if backend == "onnxruntime":
        from panoptic_deploy.engines.onnxruntime import ort_precision_support

        return ort_precision_support(precision)
    from panoptic_deploy.engines.tensorrt import tensorrt_available

    return tensorrt_available()


@dataclass
class Runner:
    """``to_device`` moves the prepared 1×3×H×W tensor where the network reads it (counted as pre-processing),
    ``run`` runs the network, ``timed_run`` runs it and returns (outputs, milliseconds)."""

    device: str
    to_device: Callable[[torch.Tensor], Any]
    run: Callable[[Any], Any]
    notes: list[str] = field(default_factory=list)
    engine: EngineInfo | None = None
    gpu_engine_mb: float | None = None
    cuda_graph: bool = False

    def timed_run(self, x: Any) -> tuple[Any, float]:
        if self.device == "cuda":
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            out = self.run(x)
            end.record()
            end.synchronize()
            return out, float(start.elapsed_time(end))
        t0 = time.perf_counter()
        out = self.run(x)
        return out, (time.perf_counter() - t0) * 1000.0


class _CompiledNetwork:
    """``torch.compile`` of the whole network; if compiling it fails, of ``forward_heads`` alone.

    Inductor of torch 2.11 fails on the fixed-size decode (a Triton codegen error in the gather/sort part,
    measured on the H100), so the fallback compiles the backbone, FPN and heads, where nearly all the time
    goes, and runs the decode eagerly. The note says which happened.
    """

    def __init__(self, model: PanopticFCN, notes: list[str], mode: str = "default") -> None:
        self.model = model
        self.notes = notes
        self.mode = mode
        self.fell_back = False
        self.fn: Callable[[torch.Tensor], Any] = torch.compile(model, mode=mode)

    def _heads_then_decode(self, heads: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
        return lambda x: self.model.decode(heads(x))

    def __call__(self, x: torch.Tensor) -> Any:
        try:
            return self.fn(x)
        except (
            Exception
        ) as exc:  # torch._dynamo / Inductor raise many types; only the first failure falls back
            if self.fell_back:
                raise
            self.fell_back = True
            lines = str(exc).strip().splitlines()
            first = lines[0][:160] if lines else ""
            self.notes.append(
                f"torch.compile of the whole network failed ({type(exc).__name__}: {first}); compiled "
                "forward_heads (backbone, FPN, heads) only, the fixed-size decode runs eagerly"
            )
            self.fn = self._heads_then_decode(torch.compile(self.model.forward_heads, mode=self.mode))
            return self.fn(x)


def torch_runner(
    backend: str,
    precision: str,
    device: str,
    spec: ModelSpec,
    weights: PathLike | None,
    allow_tf32: bool | None,
    compile_mode: str = "default",
) -> Runner:
    """Eager or compiled PyTorch (FP16: autocast) on ``device``; ``allow_tf32`` sets the process-wide TF32
    switches on CUDA (None keeps them)."""
    from panoptic_deploy.predict import load_model

    if weights is None:
        raise BenchError(f"{backend}: the torch backends need --weights")
    model = load_model(spec, weights, device=device)
    notes: list[str] = []
    network: Callable[[torch.Tensor], Any] = model
    if backend == "torch_compile":
        network = _CompiledNetwork(model, notes, compile_mode)
        graphs = " with CUDA graphs" if compile_mode == "reduce-overhead" else ""
        notes.append(
            f"torch.compile ({compile_mode} mode{graphs}, Inductor); compilation happens in the first "
            "warm-up run"
        )
    autocast = precision == "fp16"
    if autocast:
        notes.append("FP16 through torch.autocast(float16): FP32 weights and I/O, autocast op lists")
    if device == "cuda":
        if allow_tf32 is not None:
            # Process-wide switches; a benchmark process runs one configuration.
            torch.backends.cudnn.allow_tf32 = allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        notes.append(
            "cuDNN TF32 "
            + ("on" if torch.backends.cudnn.allow_tf32 else "off")
            + ", matmul TF32 "
            + ("on" if torch.backends.cuda.matmul.allow_tf32 else "off")
            + (
                " (as the process had them; PyTorch's default is cuDNN on, matmul off)"
                if allow_tf32 is None
                else " (set by the benchmark)"
            )
        )

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=autocast):
            return network(x)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device)

    return Runner(device, to_device, run, notes)


def engine_info(engine: PathLike, sidecar: EngineSidecar) -> EngineInfo:
    """What the result records of the engine file a benchmark ran (from its sidecar)."""
    return EngineInfo(
        file=Path(engine).name,
        bytes=int(sidecar.engine_bytes),
        sha256=str(sidecar.engine_sha256),
        build_seconds=float(sidecar.build_seconds),
        backend_version=str(sidecar.backend_version),
        device_name=str(sidecar.device.name),
        source_onnx=str(sidecar.source_onnx),
        builder=dict(sidecar.builder),
    )


def ort_runner(precision: str, engine: PathLike, sidecar_file: PathLike, threads: int | None) -> Runner:
    """An ONNX Runtime CPU engine with its sidecar's options; ``threads``: intra-op threads."""
    from panoptic_deploy.engines.onnxruntime import OrtRunner, ort_precision_support
    from panoptic_deploy.engines.sidecar import read_sidecar

    sidecar = read_sidecar(sidecar_file)
    if sidecar.precision != precision:
        raise BenchError(
            f"{sidecar_file}: engine precision is {sidecar.precision}, benchmark asks {precision}"
        )
    runner = OrtRunner(engine, sidecar, threads)
    _, note = ort_precision_support(precision)

    def to_device(x: torch.Tensor) -> dict[str, NDArray[np.float32]]:
        return {INPUT_NAME: x.numpy()}

    return Runner(
        "cpu", to_device, runner.run, [f"onnxruntime CPU provider: {note}"], engine_info(engine, sidecar)
    )


def trt_runner(precision: str, engine: PathLike, sidecar_file: PathLike, cuda_graph: bool) -> Runner:
    """A TensorRT engine on CUDA, optionally replayed as a CUDA graph."""
    from panoptic_deploy.engines.sidecar import read_sidecar
    from panoptic_deploy.engines.tensorrt_runner import TrtRunner

    sidecar = read_sidecar(sidecar_file)
    if sidecar.precision != precision:
        raise BenchError(
            f"{sidecar_file}: engine precision is {sidecar.precision}, benchmark asks {precision}"
        )
    runner = TrtRunner(engine, sidecar, cuda_graph=cuda_graph)
    memory = runner.memory()
    notes = [
        "network time includes the runner's copy into its bound input buffer and the clone of its "
        "outputs (CUDA events on the caller's stream)"
    ]
    if runner.cuda_graph_failure is not None:
        notes.append(f"CUDA graph asked for but not used: {runner.cuda_graph_failure}")

    def to_device(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {INPUT_NAME: x.to("cuda")}

    return Runner(
        "cuda",
        to_device,
        runner.run,
        notes,
        engine_info(engine, sidecar),
        gpu_engine_mb=memory.engine_device_memory_bytes / 1e6,
        cuda_graph=runner.cuda_graph,  # what runs do: False after a failed capture
    )
