"""TensorRT backend.

Tests marked ``tensorrt`` build and run real engines; they skip, with the reason, where TensorRT or a CUDA GPU
is missing (everywhere in this project's CI). The unmarked tests run everywhere: the availability guard and
the vendored TensorRT stubs (that mypy rejects what TensorRT 11 removed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from onnx import TensorProto, helper

from panoptic_deploy.engines import EngineError, EngineSidecar, read_sidecar, sidecar_path
from panoptic_deploy.engines.tensorrt import build_trt_engine, tensorrt_available
from panoptic_deploy.engines.tensorrt_runner import TrtRunner
from tiny_net import TinyNet, export_tiny

REPO = Path(__file__).resolve().parents[1]
TRT_OK, TRT_REASON = tensorrt_available()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
INPUT_SHAPE = (1, 3, 32, 48)
WORKSPACE = 256 << 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EngineSidecar, TinyNet]:
    """One FP32 engine of the tiny model, built with a timing cache."""
    folder = tmp_path_factory.mktemp("trt")
    model = export_tiny(folder / "tiny.onnx", INPUT_SHAPE)
    plan = folder / "tiny.plan"
    sidecar = build_trt_engine(
        folder / "tiny.onnx",
        plan,
        workspace_bytes=WORKSPACE,
        optimization_level=1,
        timing_cache_path=folder / "timing.cache",
        input_shape=INPUT_SHAPE,
        precision="fp32",
    )
    return plan, sidecar, model


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # TensorRT may run FP32 convolutions in TF32 (its default): ~1e-3 relative to the output range.
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=5e-3 * scale)


# ----------------------------------------------------------------------------------------------------
# Real TensorRT


@pytest.mark.tensorrt
@needs_trt
def test_build_and_run_matches_torch(engine: tuple[Path, EngineSidecar, TinyNet]) -> None:
    import tensorrt as trt

    plan, sidecar, model = engine
    assert read_sidecar(sidecar_path(plan)) == sidecar
    assert (sidecar.backend, sidecar.backend_version, sidecar.precision) == (
        "tensorrt",
        trt.__version__,
        "fp32",
    )
    major, minor = torch.cuda.get_device_capability()
    assert sidecar.device.name == torch.cuda.get_device_name()
    assert sidecar.device.compute_capability == f"{major}.{minor}"
    assert sidecar.input_shape == INPUT_SHAPE
    assert [(t.name, t.dtype, t.shape) for t in sidecar.outputs] == [
        ("sem", "float32", (1, 2, 32, 48)),
        ("features", "float32", (1, 8, 64, 96)),
    ]
    assert sidecar.builder["workspace_bytes"] == WORKSPACE and sidecar.builder["optimization_level"] == 1
    assert sidecar.builder["timing_cache"] == "new"
    assert (plan.parent / "timing.cache").stat().st_size > 0

    x = torch.randn(INPUT_SHAPE)
    outputs = TrtRunner(plan, sidecar).run({"image": x})  # a CPU input is copied to the GPU
    with torch.no_grad():
        sem, features = model(x)
    assert list(outputs) == ["sem", "features"]
    assert all(t.is_cuda for t in outputs.values())
    _close(outputs["sem"].cpu(), sem)
    _close(outputs["features"].cpu(), features)


@pytest.mark.tensorrt
@needs_trt
def test_cuda_graph_replay_equals_plain_execution(engine: tuple[Path, EngineSidecar, TinyNet]) -> None:
    plan, sidecar, _ = engine
    plain = TrtRunner(plan, sidecar)
    graphed = TrtRunner(plan, sidecar, cuda_graph=True)
    assert not plain.cuda_graph
    assert graphed.cuda_graph and graphed.cuda_graph_failure is None  # a plain CNN captures
    for _ in range(2):  # new inputs each time: the replay reads the bound input buffer
        x = torch.randn(INPUT_SHAPE, device="cuda")
        a, b = plain.run({"image": x}), graphed.run({"image": x})
        for name in a:
            # same plan, same inputs; a replay that read stale inputs would be off by O(1)
            scale = float(a[name].abs().max())
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5 * scale)


@pytest.mark.tensorrt
@needs_trt
def test_benchmark_and_memory(engine: tuple[Path, EngineSidecar, TinyNet]) -> None:
    plan, sidecar, _ = engine
    runner = TrtRunner(plan, sidecar, cuda_graph=True)
    timing = runner.benchmark({"image": torch.randn(INPUT_SHAPE, device="cuda")}, warmup=3, iterations=20)
    assert timing.iterations == 20 and timing.cuda_graph
    assert 0 < timing.min_ms <= timing.median_ms <= timing.max_ms
    memory = runner.memory()
    floats = 4 * (3 * 32 * 48 + 2 * 32 * 48 + 8 * 64 * 96)  # image + sem + features, float32
    assert memory.io_buffer_bytes == floats
    assert memory.engine_device_memory_bytes >= 0 and memory.engine_load_bytes >= 0
    assert memory.torch_peak_allocated_bytes >= floats


@pytest.mark.tensorrt
@needs_trt
def test_version_or_gpu_mismatch_is_refused_before_loading(
    engine: tuple[Path, EngineSidecar, TinyNet],
) -> None:
    plan, sidecar, _ = engine
    with pytest.raises(
        EngineError, match=r"built with TensorRT 0\.0\.0, this process has TensorRT .*rebuild"
    ):
        TrtRunner(plan, dataclasses.replace(sidecar, backend_version="0.0.0"))
    other_gpu = dataclasses.replace(sidecar.device, name="Some Other GPU", compute_capability="1.0")
    with pytest.raises(
        EngineError, match=r"built on Some Other GPU \(compute capability 1\.0\), this GPU is"
    ):
        TrtRunner(plan, dataclasses.replace(sidecar, device=other_gpu))


@pytest.mark.tensorrt
@needs_trt
def test_timing_cache_is_reused(engine: tuple[Path, EngineSidecar, TinyNet], tmp_path: Path) -> None:
    plan, _, _ = engine
    again = build_trt_engine(
        plan.parent / "tiny.onnx",
        tmp_path / "again.plan",
        workspace_bytes=WORKSPACE,
        optimization_level=1,
        timing_cache_path=plan.parent / "timing.cache",
        input_shape=INPUT_SHAPE,
    )
    assert again.builder["timing_cache"] == "loaded"
    assert again.precision == "fp32"  # read from the graph when not given


@pytest.mark.tensorrt
@needs_trt
def test_unreadable_timing_cache_is_replaced(
    engine: tuple[Path, EngineSidecar, TinyNet], tmp_path: Path
) -> None:
    """A damaged cache file: create_timing_cache returns None; the build goes on with a fresh cache, and the
    file is replaced by a readable one (the next build loads it)."""
    plan, _, _ = engine
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache" * 64)

    def build(name: str) -> EngineSidecar:
        return build_trt_engine(
            plan.parent / "tiny.onnx",
            tmp_path / name,
            workspace_bytes=WORKSPACE,
            optimization_level=0,
            timing_cache_path=cache,
            input_shape=INPUT_SHAPE,
        )

    first = build("a.plan")
    assert first.builder["timing_cache"] == "discarded (unreadable: damaged or from another TensorRT version)"
    assert not cache.read_bytes().startswith(b"not a timing cache")
    assert build("b.plan").builder["timing_cache"] == "loaded"
    assert (tmp_path / "timing.cache.lock").exists()


@pytest.mark.tensorrt
@needs_trt
def test_input_shape_must_match(engine: tuple[Path, EngineSidecar, TinyNet], tmp_path: Path) -> None:
    plan, _, _ = engine
    with pytest.raises(
        EngineError, match=r"input 'image' has shape \[1, 3, 32, 48\], expected \[1, 3, 64, 96\]"
    ):
        build_trt_engine(
            plan.parent / "tiny.onnx",
            tmp_path / "x.plan",
            workspace_bytes=WORKSPACE,
            optimization_level=0,
            timing_cache_path=None,
            input_shape=(1, 3, 64, 96),
        )
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.tensorrt
@needs_trt
def test_parser_errors_are_collected(tmp_path: Path) -> None:
    """An operator TensorRT does not know: the message names the node and the parser's reason."""
    node = helper.make_node(
        "NoSuchOperator", ["image"], ["out"], name="mystery_node", domain="example.custom"
    )
    graph = helper.make_graph(
        [node],
        "unsupported",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(INPUT_SHAPE))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    model.ir_version = 9
    (tmp_path / "bad.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(
        EngineError, match=r"bad\.onnx: TensorRT ONNX parser failed: .*mystery_node.*NoSuchOperator"
    ):
        build_trt_engine(
            tmp_path / "bad.onnx",
            tmp_path / "bad.plan",
            workspace_bytes=WORKSPACE,
            optimization_level=0,
            timing_cache_path=None,
            input_shape=INPUT_SHAPE,
        )


# ----------------------------------------------------------------------------------------------------
# Everywhere


@pytest.mark.skipif(TRT_OK, reason="TensorRT is available here")
def test_build_without_tensorrt_says_why(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as err:
        build_trt_engine(
            tmp_path / "model.onnx",
            tmp_path / "model.plan",
            workspace_bytes=WORKSPACE,
            optimization_level=3,
            timing_cache_path=None,
            input_shape=INPUT_SHAPE,
        )
    assert str(err.value) == f"cannot build {tmp_path / 'model.plan'}: {TRT_REASON}"
    assert not (tmp_path / "model.plan").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="a tensorrt package is importable"
)
def test_stub_namespace_package_is_not_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt-stubs installs a bare ``tensorrt/`` folder; importing it succeeds but it is not TensorRT."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")  # stubs are never imported
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ok, reason = tensorrt_available()
    finally:
        sys.modules.pop("tensorrt", None)  # the namespace package must not leak into later tests
    assert not ok
    assert (
        reason
        == f"'tensorrt' ({tmp_path / 'tensorrt'}) has no Builder: a stub or namespace package, not TensorRT"
    )


# Lines of TensorRT 10.x-only API (removed in 11.x) and lines of API both versions share.
_STUB_PROBE = """\
import tensorrt as trt


def probe(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    engine: trt.ICudaEngine,
    layer: trt.ILayer,
    network: trt.INetworkDefinition,
) -> int:
    config.set_flag(trt.BuilderFlag.FP16)  # removed
    config.set_flag(trt.BuilderFlag.INT8)  # removed
    config.int8_calibrator = None  # removed
    calibrator: trt.IInt8EntropyCalibrator2  # removed
    flag = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # removed
    fast = builder.platform_has_fast_fp16  # removed
    size = engine.device_memory_size  # removed
    layer.precision = trt.DataType.HALF  # removed
    reader: trt.IStreamReader  # removed
    network.add_quantize(network.get_input(0), network.get_input(1))  # removed
    config.set_flag(trt.BuilderFlag.DIRECT_IO)  # deprecated in 10.7 but still bound by 11.0 and 11.1
    created = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.builder_optimization_level = 3
    plan = builder.build_serialized_network(created, config)
    nbytes = plan.nbytes  # None on failure
    cache = config.create_timing_cache(b"")
    blob = cache.serialize()  # None on failure
    merged = config.get_timing_cache().combine(cache, ignore_mismatch=False)  # None on failure
    return engine.device_memory_size_v2 + engine.num_io_tensors + len(trt.__version__)
"""


def test_vendored_stubs_reject_tensorrt_11_removals(tmp_path: Path) -> None:
    """mypy with typings/ flags exactly the 10.x-only lines and the unchecked Optional, nothing shared."""
    (tmp_path / "probe.py").write_text(_STUB_PROBE)
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n"
        f"mypy_path = {REPO / 'typings'}\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs.*]\nignore_errors = True\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "mypy.ini",
            "--no-error-summary",
            "-O",
            "json",
            "probe.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    flagged = {e["line"] for e in errors if e["severity"] == "error"}
    lines = _STUB_PROBE.splitlines()
    expected = {i + 1 for i, line in enumerate(lines) if line.endswith(("# removed", "# None on failure"))}
    assert flagged == expected, proc.stdout + proc.stderr
