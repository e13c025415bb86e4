"""ONNX Runtime engine backend and engine sidecars, for real on the CPU."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from panoptic_deploy.engines import EngineError, EngineSidecar, read_sidecar, sidecar_path, write_sidecar
from panoptic_deploy.engines.onnxruntime import (
    OrtRunner,
    build_ort_engine,
    ort_precision_support,
    ort_settings,
)
from tiny_net import TinyNet, export_tiny

INPUT_SHAPE = (1, 3, 16, 24)


def save_model(path: Path, nodes: list[Any], initializers: list[Any], out_shape: list[int]) -> None:
    """A one-input ('image', float32) one-output ('out', float32) ONNX model."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_fp16_conv(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    """image -> Cast(fp16) -> Conv(fp16 weights) -> Relu -> Cast(fp32): an FP16 graph with FP32 I/O."""
    nodes = [
        helper.make_node("Cast", ["image"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w", "b"], ["y16"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y16"], ["r16"]),
        helper.make_node("Cast", ["r16"], ["out"], to=TensorProto.FLOAT),
    ]
    inits = [
        numpy_helper.from_array(w.astype(np.float16), "w"),
        numpy_helper.from_array(b.astype(np.float16), "b"),
    ]
    save_model(path, nodes, inits, [1, w.shape[0], *INPUT_SHAPE[2:]])


def save_qdq_conv(path: Path, w_int8: np.ndarray, w_scale: float, b: np.ndarray, x_scale: float) -> None:
    """Symmetric S8 Q/DQ on the input and the weights of a Conv, TensorRT style (zero points 0)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "sx", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zp"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd", "b"], ["out"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "sx"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "sw"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(w_int8, "wq"),
        numpy_helper.from_array(b.astype(np.float32), "b"),
    ]
    save_model(path, nodes, inits, [1, w_int8.shape[0], *INPUT_SHAPE[2:]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyNet]:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return path, export_tiny(path, INPUT_SHAPE)


@pytest.fixture
def built(tiny: tuple[Path, TinyNet], tmp_path: Path) -> tuple[Path, EngineSidecar]:
    """A fresh FP32 engine of the tiny model in tmp_path."""
    engine = tmp_path / "tiny.fp32.ort.onnx"
    return engine, build_ort_engine(tiny[0], engine, precision="fp32", threads=1)


# ----------------------------------------------------------------------------------------------------
# Building and running


def test_fp32_engine_matches_torch_and_records_its_build(
    tiny: tuple[Path, TinyNet], built: tuple[Path, EngineSidecar]
) -> None:
    onnx_path, model = tiny
    engine, sidecar = built
    assert read_sidecar(sidecar_path(engine)) == sidecar
    assert sidecar_path(engine).name == "tiny.fp32.ort.onnx.json"
    assert (sidecar.backend, sidecar.precision, sidecar.input_shape) == ("onnxruntime", "fp32", INPUT_SHAPE)
    assert sidecar.device.kind == "cpu" and sidecar.device.compute_capability is None
    assert [(t.name, t.dtype, t.shape) for t in sidecar.inputs] == [("image", "float32", INPUT_SHAPE)]
    assert [(t.name, t.dtype, t.shape) for t in sidecar.outputs] == [
        ("sem", "float32", (1, 2, 16, 24)),
        ("features", "float32", (1, 8, 32, 48)),
    ]
    assert sidecar.engine_file == engine.name
    assert sidecar.engine_bytes == engine.stat().st_size
    assert sidecar.engine_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert sidecar.source_onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar.builder["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert sidecar.builder["runtime_graph_optimization_level"] == "ORT_ENABLE_ALL"

    # The saved graph holds the portable fusions (Conv+ReLU -> FusedConv) but no CPU-specific NCHWc layout.
    domains_ops = {(n.domain, n.op_type) for n in onnx.load(str(engine)).graph.node}
    assert ("com.microsoft", "FusedConv") in domains_ops
    assert not any(domain == "com.microsoft.nchwc" for domain, _ in domains_ops)

    x = torch.randn(INPUT_SHAPE)
    outputs = OrtRunner(engine, sidecar, threads=1).run({"image": x.numpy()})
    with torch.no_grad():
        sem, features = model(x)
    assert list(outputs) == ["sem", "features"]
    np.testing.assert_allclose(outputs["sem"], sem.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["features"], features.numpy(), rtol=1e-4, atol=1e-5)


def test_fp16_engine_is_saved_and_run_unoptimised(tmp_path: Path) -> None:
    rng = np.random.default_rng(130)  # fixed seed: reruns see the same weights
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    save_fp16_conv(tmp_path / "fp16.onnx", w, b)
    engine = tmp_path / "fp16.ort.onnx"
    sidecar = build_ort_engine(tmp_path / "fp16.onnx", engine, precision="fp16", threads=1)
    assert sidecar.builder["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert sidecar.builder["runtime_graph_optimization_level"] == "ORT_DISABLE_ALL"
    # Unoptimised: Conv and Relu stay separate nodes (with ORT_ENABLE_EXTENDED they would fuse).
    ops = [n.op_type for n in onnx.load(str(engine)).graph.node]
    assert "Conv" in ops and "Relu" in ops and "FusedConv" not in ops

    x = rng.normal(size=INPUT_SHAPE).astype(np.float32)
    out = OrtRunner(engine, sidecar, threads=1).run({"image": x})["out"]
    half = [torch.from_numpy(a).half().float() for a in (x, w, b)]
    expected = torch.relu(torch.nn.functional.conv2d(half[0], half[1], half[2], padding=1)).half().float()
    # FP16 rounding of a 27-term sum of O(1) values: within a few FP16 ulps of the output magnitude.
    np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=2e-3 * float(expected.abs().max()))


def test_qdq_engine_is_exact_fake_quantisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(151)  # fixed seed: reruns see the same weights
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w_scale, x_scale = 0.01, 0.02
    w_int8 = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    b = rng.normal(size=4).astype(np.float32)
    save_qdq_conv(tmp_path / "int8.onnx", w_int8, w_scale, b, x_scale)
    engine = tmp_path / "int8.ort.onnx"
    sidecar = build_ort_engine(tmp_path / "int8.onnx", engine, precision="int8", threads=1)
    assert sidecar.precision == "int8"
    assert sidecar.builder["runtime_graph_optimization_level"] == "ORT_DISABLE_ALL"
    ops = [n.op_type for n in onnx.load(str(engine)).graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2  # nothing fused away

    x = rng.normal(size=INPUT_SHAPE).astype(np.float32)
    out = OrtRunner(engine, sidecar, threads=1).run({"image": x})["out"]
    # ONNX QuantizeLinear: saturate(round_half_even(x / scale)); then a float conv on dequantised values.
    x_deq = np.clip(np.rint(x / np.float32(x_scale)), -128, 127).astype(np.float64) * np.float32(x_scale)
    w_deq = w_int8.astype(np.float64) * np.float32(w_scale)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x_deq), torch.from_numpy(w_deq), torch.from_numpy(b.astype(np.float64)), padding=1
    )
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "declared", "message"),
    [
        ("fp32", "int8", "declared precision int8 but the graph is fp32 (0 Q/DQ nodes, FP16 tensors: no)"),
        ("fp32", "fp16", "declared precision fp16 but the graph is fp32"),
        ("fp16", "fp32", "declared precision fp32 but the graph is fp16 (0 Q/DQ nodes, FP16 tensors: yes)"),
        ("int8", "fp32", "declared precision fp32 but the graph is int8 (3 Q/DQ nodes"),
        ("fp32", "fp8", "unknown precision 'fp8'; expected one of fp32, fp16, int8"),
    ],
)
def test_declared_precision_must_match_the_graph(
    tiny: tuple[Path, TinyNet], tmp_path: Path, model: str, declared: str, message: str
) -> None:
    """The precision selects the optimisation level, so a mislabelled model is refused before building."""
    rng = np.random.default_rng(189)  # fixed seed: reruns see the same weights
    w = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    paths = {"fp32": tiny[0], "fp16": tmp_path / "fp16.onnx", "int8": tmp_path / "int8.onnx"}
    save_fp16_conv(paths["fp16"], w, np.zeros(2, np.float32))
    save_qdq_conv(paths["int8"], np.ones((2, 3, 3, 3), np.int8), 0.1, np.zeros(2, np.float32), 0.1)
    engine = tmp_path / "engine.onnx"
    with pytest.raises(EngineError) as err:
        build_ort_engine(paths[model], engine, precision=declared, threads=1)
    assert str(paths[model]) in str(err.value) and message in str(err.value)
    assert not engine.exists() and not sidecar_path(engine).exists()


def test_dynamic_input_is_refused(tmp_path: Path) -> None:
    export_tiny(tmp_path / "dyn.onnx", INPUT_SHAPE, dynamic=True)
    with pytest.raises(EngineError, match=r"input 'image' has dynamic shape \[1, 3, 'height', 'width'\]"):
        build_ort_engine(tmp_path / "dyn.onnx", tmp_path / "dyn.ort.onnx", precision="fp32", threads=1)
    assert not (tmp_path / "dyn.ort.onnx").exists()


def test_missing_or_damaged_onnx(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="ONNX model not found"):
        build_ort_engine(tmp_path / "absent.onnx", tmp_path / "e.onnx", precision="fp32", threads=1)
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(EngineError, match=r"junk\.onnx: not a readable ONNX model"):
        build_ort_engine(tmp_path / "junk.onnx", tmp_path / "e.onnx", precision="fp32", threads=1)


def test_optimisation_levels_per_precision() -> None:
    assert (ort_settings("fp32").build_level, ort_settings("fp32").runtime_level) == (
        "ORT_ENABLE_EXTENDED",
        "ORT_ENABLE_ALL",
    )
    for precision in ("fp16", "int8"):
        settings = ort_settings(precision)
        assert (settings.build_level, settings.runtime_level) == ("ORT_DISABLE_ALL", "ORT_DISABLE_ALL")
    with pytest.raises(EngineError, match="unknown precision 'bf16'"):
        ort_settings("bf16")


def test_precision_support_report() -> None:
    assert ort_precision_support("fp32")[0] is True
    ok, note = ort_precision_support("fp16")
    assert ok and "optimisations off" in note and "timings are not" in note
    ok, note = ort_precision_support("int8")
    assert ok and "fake-quant" in note
    ok, note = ort_precision_support("fp4")
    assert not ok and "unknown precision 'fp4'" in note


# ----------------------------------------------------------------------------------------------------
# The runner refuses what it cannot run faithfully


def test_runner_checks_inputs(built: tuple[Path, EngineSidecar]) -> None:
    engine, sidecar = built
    runner = OrtRunner(engine, sidecar, threads=1)
    x = np.zeros(INPUT_SHAPE, np.float32)
    with pytest.raises(EngineError, match=r"inputs \['img'\] given, the engine takes \['image'\]"):
        runner.run({"img": x})
    with pytest.raises(
        EngineError, match=r"input 'image' has shape \[1, 3, 16, 25\], expected \[1, 3, 16, 24\]"
    ):
        runner.run({"image": np.zeros((1, 3, 16, 25), np.float32)})
    with pytest.raises(EngineError, match="input 'image' has dtype float64, expected float32"):
        runner.run({"image": x.astype(np.float64)})


def test_runner_refuses_a_foreign_engine_or_version(built: tuple[Path, EngineSidecar]) -> None:
    engine, sidecar = built
    with pytest.raises(EngineError, match=r"built with ONNX Runtime 0\.0\.1, this process has .*; rebuild"):
        OrtRunner(engine, _replace(sidecar, backend_version="0.0.1"))
    with pytest.raises(EngineError, match="sidecar is for backend tensorrt, not onnxruntime"):
        OrtRunner(engine, _replace(sidecar, backend="tensorrt"))
    with pytest.raises(EngineError, match="builder/runtime_graph_optimization_level' is None"):
        OrtRunner(engine, _replace(sidecar, builder={}))
    data = engine.read_bytes()
    engine.write_bytes(data + b"\0")
    with pytest.raises(
        EngineError, match=rf"engine has {len(data) + 1} bytes, its sidecar describes {len(data)}"
    ):
        OrtRunner(engine, sidecar)
    engine.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(EngineError, match="engine SHA-256 differs from its sidecar"):
        OrtRunner(engine, sidecar)
    engine.unlink()
    with pytest.raises(EngineError, match="engine file not found"):
        OrtRunner(engine, sidecar)


def test_threads_must_be_positive(built: tuple[Path, EngineSidecar]) -> None:
    with pytest.raises(EngineError, match="threads must be >= 1, got 0"):
        OrtRunner(*built, threads=0)


# ----------------------------------------------------------------------------------------------------
# Sidecar files


def _replace(sidecar: EngineSidecar, **changes: Any) -> EngineSidecar:
    return dataclasses.replace(sidecar, **changes)


def test_sidecar_round_trip(built: tuple[Path, EngineSidecar], tmp_path: Path) -> None:
    _, sidecar = built
    path = tmp_path / "copy.json"
    write_sidecar(sidecar, path)
    assert read_sidecar(path) == sidecar
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["input_shape"] == list(INPUT_SHAPE)
    assert data["outputs"][1] == {"name": "features", "dtype": "float32", "shape": [1, 8, 32, 48]}


def _edit(data: dict[str, Any], edit: str) -> None:
    if edit == "drop precision":
        del data["precision"]
    elif edit == "precision fp8":
        data["precision"] = "fp8"
    elif edit == "dtype number":
        data["outputs"][0]["dtype"] = 5
    elif edit == "schema 2":
        data["schema_version"] = 2
    elif edit == "bad sha":
        data["engine_sha256"] = "xyz"
    elif edit == "extra key":
        data["colour"] = "blue"
    elif edit == "created":
        data["created"] = "yesterday"
    elif edit == "negative dim":
        data["input_shape"] = [1, 3, -1, 24]
    elif edit == "builder list":
        data["builder"]["graph_optimization_level"] = ["a"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop precision", "key '(top level)': 'precision' is a required property"),
        ("precision fp8", "key 'precision': 'fp8' is not one of ['fp32', 'fp16', 'int8']"),
        ("dtype number", "key 'outputs/0/dtype': 5 is not of type 'string'"),
        ("schema 2", "key 'schema_version': 1 was expected"),
        ("bad sha", "key 'engine_sha256': 'xyz' does not match"),
        ("extra key", "key '(top level)': Additional properties are not allowed ('colour' was unexpected)"),
        ("created", "key 'created': 'yesterday' is not an ISO 8601 time"),
        ("negative dim", "key 'input_shape/2': -1 is less than the minimum of 1"),
        ("builder list", "key 'builder/graph_optimization_level': ['a'] is not of type"),
    ],
)
def test_read_sidecar_names_file_and_key(
    built: tuple[Path, EngineSidecar], tmp_path: Path, edit: str, message: str
) -> None:
    data = built[1].to_json_dict()
    _edit(data, edit)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EngineError) as err:
        read_sidecar(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_read_sidecar_unreadable(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"absent\.json: cannot read engine sidecar"):
        read_sidecar(tmp_path / "absent.json")
    (tmp_path / "trunc.json").write_text('{"backend": "onnxruntime",')
    with pytest.raises(EngineError, match=r"trunc\.json: not valid JSON \(Expecting property name"):
        read_sidecar(tmp_path / "trunc.json")


def test_write_sidecar_refuses_invalid_and_writes_nothing(
    built: tuple[Path, EngineSidecar], tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    with pytest.raises(EngineError, match="refusing to write an invalid sidecar: key 'precision'"):
        write_sidecar(_replace(built[1], precision="fp64"), folder / "never.json")
    assert not folder.exists() or list(folder.iterdir()) == []
