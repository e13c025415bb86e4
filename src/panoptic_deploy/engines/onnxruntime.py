"""ONNX Runtime CPU backend: an offline-optimised ONNX model as the "engine", plus a runner.

ONNX Runtime can save the graph it optimised (``SessionOptions.optimized_model_filepath``, the "offline
mode" of https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html). Which level
is safe depends on the precision (measured in the toolchain probe, ORT 1.24.4 and 1.32.0):

* FP16 graphs and Q/DQ graphs with FP16 scales give wrong results under the default optimisations, and the
  fused S8 kernels on AVX2-only CPUs (``QDQS8ToU8Transformer``) distort symmetric TensorRT-style Q/DQ models.
  Both are saved and run with ``ORT_DISABLE_ALL``: pure fake-quant / FP16 simulation, the closer proxy for
  TensorRT numerics.
* FP32 graphs are saved with ``ORT_ENABLE_EXTENDED`` (node fusions, portable across CPUs) and loaded with
  ``ORT_ENABLE_ALL``, because the last level (NCHWc layout) is specific to the CPU's vector width and so
  belongs to the machine that runs the model.

Both levels are recorded in the sidecar; :class:`OrtRunner` uses the recorded runtime level. The same rule
decides the options of :func:`make_ort_session`, the session factory for evaluating a model file directly
(export and simplification checks, precision fidelity), so every stage evaluates a model the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from panoptic_deploy.engines.sidecar import (
    DeviceInfo,
    EngineSidecar,
    check_engine_file,
    check_feed,
    check_precision,
    make_sidecar,
    sidecar_path,
    write_sidecar,
)
from panoptic_deploy.errors import EngineError, PrecisionError, first_line
from panoptic_deploy.fileio import PathLike, atomic_path
from panoptic_deploy.host import cpu_name
from panoptic_deploy.onnx_utils import (
    ONNX_BFLOAT16,
    ONNX_FLOAT16,
    QDQ_OPS,
    io_types,
    load_onnx,
    summarize_onnx,
)
from panoptic_deploy.vocab import PRECISIONS

if TYPE_CHECKING:
    import onnx

PROVIDER = "CPUExecutionProvider"
GRAPH_OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


@dataclass(frozen=True)
class OrtSettings:
    """Graph optimisation levels for one precision: one to write the engine file, one to load it."""

    build_level: str  # a GraphOptimizationLevel name
    runtime_level: str
    reason: str


def ort_settings(precision: str) -> OrtSettings:
    """The optimisation levels used for ``precision`` (see the module docstring for the measurements)."""
    if precision == "fp32":
        return OrtSettings(
            build_level="ORT_ENABLE_EXTENDED",
            runtime_level="ORT_ENABLE_ALL",
            reason="fusions saved in the file; CPU-specific NCHWc layout applied when the runner loads it",
        )
    if precision in ("fp16", "int8"):
        return OrtSettings(
            build_level="ORT_DISABLE_ALL",
            runtime_level="ORT_DISABLE_ALL",
            reason="optimised FP16/QDQ graphs give wrong results on ORT CPU; run unoptimised (fake-quant)",
        )
    raise EngineError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def ort_precision_support(precision: str) -> tuple[bool, str]:
    """Whether ORT CPU gives meaningful results for ``precision``, and the caveat to report with them.

    The bool says whether accuracy numbers are meaningful; the text says what the timings mean.
    """
    if precision == "fp32":
        return True, "native FP32 CPU kernels; accuracy reference and representative CPU timings"
    if precision == "fp16":
        return True, (
            "run with graph optimisations off (optimised FP16 graphs are wrong on ORT CPU); accuracy is "
            "meaningful, timings are not: the CPU provider has no fast FP16 path"
        )
    if precision == "int8":
        return True, (
            "Q/DQ simulated (fake-quant) with optimisations off; accuracy is a TensorRT proxy, timings say "
            "nothing about TensorRT INT8"
        )
    return False, f"unknown precision {precision!r}; ONNX Runtime CPU runs {', '.join(PRECISIONS)}"


def ort_session_options(level: str, threads: int | None) -> Any:
    """``onnxruntime.SessionOptions`` with optimisation ``level`` (a name) and ``threads`` intra-op threads.

    ``threads=None`` keeps ONNX Runtime's default (one per physical core). The intra-op threads do not
    spin after a run: spinning threads hold the cores that the host post-processing (torch, right after
    every run) needs. Measured on the H100 machine's 16 cores, coffee.png, FP32: post-processing 52-58 ms
    without spinning against 117-132 ms with it, network 189-192 against 174-195 ms (docs/benchmarks.md).
    """
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise EngineError(f"unknown ONNX Runtime graph optimisation level {level!r}")
    if threads is not None and threads < 1:
        raise EngineError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


# ----------------------------------------------------------------------------------------------------------
# Sessions for evaluating a model file directly (export checks, calibration twins, precision tests)


def needs_unoptimized_session(model: onnx.ModelProto) -> bool:
    """True for models ORT CPU mis-evaluates with graph optimisations on: any Q/DQ node or any FP16 tensor.

    Measured (docs/precision.md, notes/toolchain.md): ORT's fused INT8 path on AVX2 (``QDQS8ToU8Transformer``)
    distorts symmetric S8 Q/DQ models, and INT8+FP16 models give wrong results under default optimisations.
    With ``ORT_DISABLE_ALL`` every Q/DQ pair is a plain fake-quant, the closest CPU proxy for TensorRT.
    """
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        return True
    if any(init.data_type in (ONNX_FLOAT16, ONNX_BFLOAT16) for init in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in (ONNX_FLOAT16, ONNX_BFLOAT16):
                return True
    return any(t in (ONNX_FLOAT16, ONNX_BFLOAT16) for t in io_types(model).values())


def make_ort_session(
    path: PathLike, threads: int | None = None, *, optimize: bool | None = None
) -> ort.InferenceSession:
    """ONNX Runtime CPU session for ``path`` with the options its precision needs.

    ``optimize=None`` decides from the model (``needs_unoptimized_session``): FP32 models get ORT's default
    optimisations, Q/DQ and FP16 models ``ORT_DISABLE_ALL``. ``threads`` sets intra-op threads (None: ORT's).
    """
    model = load_onnx(path, PrecisionError)
    if optimize is None:
        optimize = not needs_unoptimized_session(model)
    options = ort_session_options("ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL", threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------------------
# The engine: an offline-optimised model file and its sidecar


def build_ort_engine(
    onnx_path: PathLike,
    engine_path: PathLike,
    *,
    precision: str,
    threads: int | None,
) -> EngineSidecar:
    """Write the CPU-provider-optimised model of ``onnx_path`` to ``engine_path`` and its sidecar next to it.

    ``precision`` must match the graph (Q/DQ nodes -> int8, FP16 tensors -> fp16, else fp32); it selects the
    optimisation levels (:func:`ort_settings`). The single model input must have a static shape.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    summary = summarize_onnx(onnx_path)
    check_precision(precision, summary)
    input_shape = summary.static_input_shape
    settings = ort_settings(precision)
    options = ort_session_options(settings.build_level, threads)

    with atomic_path(engine_path) as tmp:
        options.optimized_model_filepath = str(tmp)
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(onnx_path), options, providers=[PROVIDER])
        except Exception as exc:  # ORT raises its own pybind exception types
            raise EngineError(f"{onnx_path}: ONNX Runtime cannot load the model ({first_line(exc)})") from exc
        build_seconds = time.perf_counter() - start
        if tmp.stat().st_size == 0:
            raise EngineError(f"{onnx_path}: ONNX Runtime wrote no optimized model")

    sidecar = make_sidecar(
        backend="onnxruntime",
        backend_version=str(ort.__version__),
        device=DeviceInfo(kind="cpu", name=cpu_name(), compute_capability=None),
        precision=precision,
        input_shape=input_shape,
        inputs=summary.inputs,
        outputs=summary.outputs,
        build_seconds=build_seconds,
        engine_path=engine_path,
        source_onnx=onnx_path,
        source_onnx_sha256=summary.sha256,
        builder={
            "execution_provider": PROVIDER,
            "graph_optimization_level": settings.build_level,
            "runtime_graph_optimization_level": settings.runtime_level,
            "intra_op_num_threads": threads,
        },
    )
    write_sidecar(sidecar, sidecar_path(engine_path))
    return sidecar


class OrtRunner:
    """Runs an engine written by :func:`build_ort_engine` with the options its sidecar records."""

    def __init__(self, engine_path: PathLike, sidecar: EngineSidecar, threads: int | None = None) -> None:
        self.engine_path = Path(engine_path)
        self.sidecar = sidecar
        if sidecar.backend != "onnxruntime":
            raise EngineError(
                f"{self.engine_path}: sidecar is for backend {sidecar.backend}, not onnxruntime"
            )
        if sidecar.backend_version != ort.__version__:
            raise EngineError(
                f"{self.engine_path}: built with ONNX Runtime {sidecar.backend_version}, this process has "
                f"{ort.__version__}; rebuild the engine"
            )
        check_engine_file(sidecar, self.engine_path)
        level = sidecar.builder.get("runtime_graph_optimization_level")
        if not isinstance(level, str) or level not in GRAPH_OPTIMIZATION_LEVELS:
            raise EngineError(
                f"{self.engine_path}: sidecar key 'builder/runtime_graph_optimization_level' is {level!r}, "
                f"expected one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        options = ort_session_options(level, threads)
        try:
            self._session = ort.InferenceSession(str(self.engine_path), options, providers=[PROVIDER])
        except Exception as exc:  # ORT raises its own pybind exception types
            raise EngineError(
                f"{self.engine_path}: ONNX Runtime cannot load the engine ({first_line(exc)})"
            ) from exc
        session_outputs = [o.name for o in self._session.get_outputs()]
        if session_outputs != [o.name for o in sidecar.outputs]:
            raise EngineError(f"{self.engine_path}: engine outputs {session_outputs} differ from its sidecar")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``inputs`` maps every input name to an array of the recorded dtype and shape.

        Returns the outputs by name, in the engine's output order.
        """
        check_feed(
            self.engine_path,
            self.sidecar.inputs,
            {name: (tuple(a.shape), np.asarray(a).dtype.name) for name, a in inputs.items()},
        )
        names = [spec.name for spec in self.sidecar.outputs]
        results = self._session.run(names, {name: np.asarray(a) for name, a in inputs.items()})
        return {name: np.asarray(r) for name, r in zip(names, results, strict=True)}
