"""Graph correctness of the reduced-precision models (issue 13): index arithmetic and INT8 selection inputs.

* Every index, class and position computed from a TopK/ArgMax index must stay integer (or FP32) in the FP32,
  FP16 and both INT8 models: in FP16 a class computed as Floor(index / (h·w)) rounds 79.996 up to 80.
* FP16 and INT8 pick the same (class, position) candidates as FP32 wherever FP32's are valid, on head
  outputs crafted so that high-class peaks sit in the last rows of every level (where FP16 quotients round
  up) at the demo's 416×608 level sizes.
* INT8: no TopK, ArgMax, Gather*, or comparison reads a DequantizeLinear output, and the nodes that only
  feed ranking/selection are left unquantized.

The model is ``PanopticFCN.decode`` (narrow generators) with the head outputs as graph inputs, exported by
the dynamo exporter like the real network: it holds every op of the decode, and it exports in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("modelopt.onnx.quantization")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from panoptic_deploy.config import load_config  # noqa: E402
from panoptic_deploy.engines.onnxruntime import make_ort_session  # noqa: E402
from panoptic_deploy.modeling import HeadOutputs, PanopticFCN, build_model  # noqa: E402
from panoptic_deploy.modeling.panoptic_fcn import CENTER_POOL_SIZES, centre_peaks  # noqa: E402
from panoptic_deploy.precision import (  # noqa: E402
    SELECTION_OP_TYPES,
    calibrate,
    convert_fp16,
    quantize_int8,
    selection_only_nodes,
)
from panoptic_deploy.precision.int8 import _bypass_selection_qdq  # noqa: E402

CONFIG = Path(__file__).parents[1] / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
OPTS = ["MODEL.KERNEL_HEAD.CONVS_DIM", "64", "MODEL.FEATURE_ENCODER.CONVS_DIM", "32"]
# The demo's 416×608 input: levels p3..p7 and the stride-4 encoder map.
LEVELS = [(52, 76), (26, 38), (13, 19), (7, 10), (4, 5)]
ENCODED_HW = (104, 152)
THING_CLASSES, STUFF_CLASSES, KERNEL_DIM, ENCODER_DIM = 80, 54, 64, 32
HIGH_CLASSES = range(64, 80)  # FP16 spacing 1/16 there: Floor(c + pos/hw) is wrong once pos/hw > 0.96875
LOW_CLASSES = (3, 17)
SEED = 20261203
PRECISIONS = ("fp32", "fp16", "int8+fp32", "int8+fp16")

_INTEGER_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}  # uint8, int8, uint16, int16, int32, int64, bool, uint32/64
_FLOAT = 1


# ----------------------------------------------------------------------------------------------------------
# The model and the crafted head outputs


class DecodeNet(torch.nn.Module):
    """Head outputs (graph inputs) -> the seven network outputs + every level's candidate classes and
    positions (the same ``centre_peaks`` the decode calls), so that the ONNX candidates can be compared."""

    def __init__(self, model: PanopticFCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoded: Any, *levels: Any) -> tuple[Any, ...]:
        n = len(LEVELS)
        heads = HeadOutputs(encoded, list(levels[:n]), list(levels[n : 2 * n]), list(levels[2 * n :]))
        outputs = tuple(self.model.decode(heads))
        per_level = self.model.inference.top_num // 2
        peaks = [
            centre_peaks(c, pool, per_level)
            for c, pool in zip(heads.centre_logits, CENTER_POOL_SIZES, strict=True)
        ]
        scores = torch.cat([s for s, _, _ in peaks])
        classes = torch.cat([c for _, c, _ in peaks])
        positions = torch.cat([p for _, _, p in peaks])
        return (*outputs, scores, classes, positions)


OUTPUTS = (
    "inst_probs", "inst_scores", "inst_classes", "inst_valid", "stuff_probs", "stuff_scores", "stuff_present",
    "cand_scores", "cand_classes", "cand_positions",
)  # fmt: skip


@dataclass(frozen=True)
class Crafted:
    inputs: dict[str, npt.NDArray[np.float32]]
    peaks: list[set[tuple[int, int]]]  # per level: the (class, position) of every planted peak


def crafted_inputs(seed: int) -> Crafted:
    """Head outputs with isolated centre peaks: classes 64..79 in the last row of every level (column from
    the right), two low classes elsewhere; everything else far below the thing threshold."""
    rng = np.random.default_rng(seed)
    print(f"crafted head outputs, seed {seed}")
    inputs: dict[str, npt.NDArray[np.float32]] = {
        "encoded": np.maximum(rng.standard_normal((ENCODER_DIM, *ENCODED_HW)), 0).astype(np.float32)
    }
    peaks = []
    for level, (h, w) in enumerate(LEVELS):
        centre = np.full((THING_CLASSES, h, w), -8.0, dtype=np.float32)
        planted = [(c, (h - 1) * w + (w - 1 - (c - 64) % w)) for c in HIGH_CLASSES]
        planted += [(c, int(rng.integers(0, (h - 1) * w))) for c in LOW_CLASSES]
        # Distinct logits 0.5..4 in a random order: smoothed scores about 0.35..0.54, apart by > 4 FP16 steps.
        for (c, pos), logit in zip(
            planted, rng.permutation(np.linspace(0.5, 4.0, len(planted))), strict=True
        ):
            centre[c, pos // w, pos % w] = logit
        inputs[f"centre_{level}"] = centre
        peaks.append(set(planted))
    for level, (h, w) in enumerate(LEVELS):
        inputs[f"region_{level}"] = (2.0 * rng.standard_normal((STUFF_CLASSES, h, w))).astype(np.float32)
    for level, (h, w) in enumerate(LEVELS):
        inputs[f"kernels_{level}"] = rng.standard_normal((KERNEL_DIM, h, w)).astype(np.float32)
    return Crafted(inputs, peaks)


def _export(path: Path, example: dict[str, npt.NDArray[np.float32]]) -> None:
    torch.manual_seed(SEED)
    model = build_model(load_config(CONFIG, OPTS))
    args = tuple(torch.from_numpy(v) for v in example.values())
    program = torch.onnx.export(
        DecodeNet(model).eval(),
        args,
        dynamo=True,
        opset_version=18,
        external_data=False,
        input_names=list(example),
        output_names=list(OUTPUTS),
        verbose=False,
    )
    assert program is not None
    program.save(str(path))


@pytest.fixture(scope="module")
def crafted() -> Crafted:
    return crafted_inputs(SEED)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, crafted: Crafted) -> dict[str, Path]:
    """The decode model in every precision: FP32, FP16 (AutoCast on the crafted inputs), INT8 with FP32 and
    with FP16 high precision (min-max cache from the crafted inputs)."""
    root = tmp_path_factory.mktemp("graph_precision")
    paths = {"fp32": root / "decode.onnx"}
    _export(paths["fp32"], crafted.inputs)
    paths["fp16"] = root / "decode.fp16.onnx"
    convert_fp16(paths["fp32"], paths["fp16"], crafted.inputs)
    cache = root / "decode.int8.cache"
    calibrate(paths["fp32"], [crafted.inputs], "minmax", cache)
    for high in ("fp32", "fp16"):
        paths[f"int8+{high}"] = root / f"decode.int8.{high}.onnx"
        quantize_int8(paths["fp32"], cache, paths[f"int8+{high}"], high_precision=high)
    return paths


def _run(path: Path, inputs: dict[str, npt.NDArray[np.float32]]) -> dict[str, npt.NDArray[Any]]:
    """ORT outputs, with ``cand_classes`` / ``cand_positions`` recomputed in the graph's own types.

    ORT CPU has no FP16 kernel for Floor and friends: it casts around them and computes in FP32, which hides
    exactly the FP16 rounding TensorRT performs. So the subgraph from the TopK indices to the candidate
    classes and positions is cut out and run by onnx's reference evaluator (numpy in the tensor types) on
    the indices ORT's TopK picked.
    """
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    wanted = ["cand_classes", "cand_positions"]
    producers = {o: n for n in model.graph.node for o in n.output}
    boundary: set[str] = set()
    stack, seen = list(wanted), set()
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if tensor in seen or node is None:
            continue
        seen.add(tensor)
        if node.op_type == "TopK":
            assert tensor == node.output[1], f"{tensor}: the classes depend on TopK values"
            boundary.add(tensor)
        else:
            stack.extend(i for i in node.input if i)
    indices = sorted(boundary)
    with_indices = onnx.load(str(path))
    with_indices.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None) for name in indices
    )
    patched = path.with_suffix(".indices.onnx")
    onnx.save(with_indices, str(patched))
    session = make_ort_session(patched, threads=1)
    values = session.run([*OUTPUTS, *indices], inputs)
    out = dict(zip(OUTPUTS, values[: len(OUTPUTS)], strict=True))
    subgraph = onnx.utils.Extractor(model).extract_model(indices, wanted)
    exact = ReferenceEvaluator(subgraph).run(None, dict(zip(indices, values[len(OUTPUTS) :], strict=True)))
    out["cand_classes"], out["cand_positions"] = exact
    return out


# ----------------------------------------------------------------------------------------------------------
# Index arithmetic


def index_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor that holds an index, class or position derived from a TopK/ArgMax/ArgMin index, with
    its element type (0 where shape inference gives none).

    Index values flow forward through any op, except into comparisons (their output is a flag), into Shape
    and Size, and into the index input of a gather (its output is the gathered data).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]
    }
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    stop = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Shape", "Size"}
    gathers = {"Gather", "GatherElements", "GatherND"}
    index: set[str] = set()
    for node in inferred.graph.node:  # topologically sorted
        if node.op_type == "TopK":
            index.add(node.output[1])
        elif node.op_type in ("ArgMax", "ArgMin"):
            index.add(node.output[0])
        elif node.op_type in stop:
            continue
        elif node.op_type in gathers:
            if node.input[0] in index:
                index.update(o for o in node.output if o)
        elif any(i in index for i in node.input):
            index.update(o for o in node.output if o)
    return {name: types.get(name, 0) for name in index}


def low_precision_index_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """The index-valued tensors that are neither integer nor FP32."""
    return {
        name: t for name, t in index_tensor_types(model).items() if t not in _INTEGER_TYPES and t != _FLOAT
    }


@pytest.mark.parametrize("precision", PRECISIONS)
def test_index_arithmetic_is_integer_or_fp32(models: dict[str, Path], precision: str) -> None:
    model = onnx.load(str(models[precision]))
    tensors = index_tensor_types(model)
    # The walk reaches the class and position arithmetic (Div, Sub) and the inst_classes output.
    ops = {n.op_type for n in model.graph.node if any(o in tensors for o in n.output)}
    assert {"TopK", "Div", "Sub", "Mul"} <= ops
    assert "inst_classes" in tensors and "cand_positions" in tensors
    assert low_precision_index_tensors(model) == {}
    # In fact integer everywhere (no float detour at all).
    assert {name: t for name, t in tensors.items() if t not in _INTEGER_TYPES} == {}


class FloorDivNet(torch.nn.Module):
    """The former formulation (``torch.div(..., rounding_mode="floor")``) on one 80×52×76 level."""

    def forward(self, centre: Any) -> tuple[Any, Any]:
        _, index = torch.topk(centre.flatten(), 50)
        classes = torch.div(index, 52 * 76, rounding_mode="floor")
        return classes, index - classes * (52 * 76)


def test_the_walk_flags_the_former_float_floor_formulation(tmp_path: Path) -> None:
    """The check above can fail: the old export (Cast -> Div -> Floor) gets FP16 index tensors from AutoCast,
    and they give class 80 for a candidate in the last row of class 79."""
    centre = np.full((80, 52, 76), -8.0, dtype=np.float32)
    centre[79, 51, 75] = 5.0
    fp32, fp16 = tmp_path / "floor.onnx", tmp_path / "floor.fp16.onnx"
    program = torch.onnx.export(
        FloorDivNet(), (torch.from_numpy(centre),), dynamo=True, opset_version=18, input_names=["centre"],
        output_names=["classes", "positions"],
    )  # fmt: skip
    assert program is not None
    program.save(str(fp32))
    convert_fp16(fp32, fp16, {"centre": centre})
    assert low_precision_index_tensors(onnx.load(str(fp32))) == {}
    flagged = low_precision_index_tensors(onnx.load(str(fp16)))
    assert flagged and set(flagged.values()) == {onnx.TensorProto.FLOAT16}
    # Evaluated in its types (as TensorRT does), the FP16 graph gives class 80 and a negative position.
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(fp16))
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    index_arithmetic = onnx.utils.Extractor(model).extract_model([topk.output[1]], ["classes", "positions"])
    picked = np.array([79 * 52 * 76 + 51 * 76 + 75], dtype=np.int64)
    classes, positions = ReferenceEvaluator(index_arithmetic).run(None, {topk.output[1]: picked})
    assert (classes[0], positions[0]) == (80, 51 * 76 + 75 - 52 * 76)


# ----------------------------------------------------------------------------------------------------------
# Candidates agree across precisions


def test_fp32_candidates_are_the_planted_peaks(models: dict[str, Path], crafted: Crafted) -> None:
    out = _run(models["fp32"], crafted.inputs)
    start = 0
    for (h, w), planted in zip(LEVELS, crafted.peaks, strict=True):
        k = min(h * w, 50)
        scores = out["cand_scores"][start : start + k]
        valid = scores > 0.2
        picked = set(
            zip(
                out["cand_classes"][start : start + k][valid].tolist(),
                out["cand_positions"][start : start + k][valid].tolist(),
                strict=True,
            )
        )
        assert picked == planted
        start += k
    assert start == len(out["cand_scores"])
    valid_classes = sorted(out["inst_classes"][out["inst_valid"]].tolist())
    assert valid_classes == sorted(c for planted in crafted.peaks for c, _ in planted)


@pytest.mark.parametrize("precision", ["fp16", "int8+fp32", "int8+fp16"])
def test_reduced_precision_picks_fp32s_candidates(
    models: dict[str, Path], crafted: Crafted, precision: str
) -> None:
    ref = _run(models["fp32"], crafted.inputs)
    got = _run(models[precision], crafted.inputs)
    valid = ref["cand_scores"] > 0.2
    assert valid.sum() == sum(len(p) for p in crafted.peaks)
    # Scores are far apart (> 4 FP16 steps), so the order is the same: compare element by element.
    np.testing.assert_array_equal(got["cand_classes"][valid], ref["cand_classes"][valid])
    np.testing.assert_array_equal(got["cand_positions"][valid], ref["cand_positions"][valid])
    assert (got["cand_classes"] < THING_CLASSES).all() and (got["cand_positions"] >= 0).all()
    # The instances: same classes among the valid ones (their order may change with the mask rescoring).
    ref_classes = sorted(ref["inst_classes"][ref["inst_valid"]].tolist())
    assert sorted(got["inst_classes"][got["inst_valid"]].tolist()) == ref_classes
    assert (got["inst_classes"] >= 0).all() and (got["inst_classes"] < THING_CLASSES).all()


# ----------------------------------------------------------------------------------------------------------
# INT8 placement


def _dq_readers(model: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [f"{n.op_type} {n.name}" for n in model.graph.node if n.op_type in op_types and set(n.input) & dq]


@pytest.mark.parametrize("precision", ["int8+fp32", "int8+fp16"])
def test_int8_selection_inputs_stay_high_precision(models: dict[str, Path], precision: str) -> None:
    model = onnx.load(str(models[precision]))
    assert _dq_readers(model, SELECTION_OP_TYPES) == []
    # Nor do the nodes that only feed selection (the centre pooling; the kernel fusion's norms, cosine
    # similarity and first-claimant MatMuls), while the value MatMuls (masks, stuff features) stay INT8.
    src = onnx.load(str(models["fp32"]))
    selection = set(selection_only_nodes(src))
    assert {"AveragePool", "MaxPool", "MatMul", "ReduceL2"} <= {
        n.op_type for n in src.graph.node if n.name in selection
    }
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert [n.name for n in model.graph.node if n.name in selection and set(n.input) & dq] == []
    assert len([n for n in model.graph.node if n.op_type == "MatMul" and set(n.input) & dq]) >= 5


def _graph(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])


def test_selection_only_nodes_by_hand() -> None:
    """x -> Relu -> a; a -> Sigmoid -> TopK (ranking only), a -> MatMul (value); TopK values are an output."""
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("Relu", ["x"], ["a"], name="relu"),
        h.make_node("Sigmoid", ["a"], ["s"], name="sig"),
        h.make_node("Exp", ["s"], ["e"], name="exp"),
        h.make_node("TopK", ["e", "k"], ["vals", "idx"], name="topk"),
        h.make_node("Neg", ["a"], ["n"], name="neg"),
        h.make_node("Greater", ["n", "zero"], ["flag"], name="gt"),
        h.make_node("MatMul", ["a", "w"], ["y"], name="mm"),
    ]
    inits = [
        h.make_tensor("k", onnx.TensorProto.INT64, [1], [2]),
        h.make_tensor("zero", f, [], [0.0]),
        h.make_tensor("w", f, [4, 4], [0.5] * 16),
    ]
    outputs = [
        h.make_tensor_value_info("y", f, [4, 4]),
        h.make_tensor_value_info("idx", onnx.TensorProto.INT64, [4, 2]),
        h.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [4, 4]),
    ]
    model = _graph(nodes, [h.make_tensor_value_info("x", f, [4, 4])], outputs, inits)
    # TopK's values are unused, its indices an output: TopK itself is not selection-only, its inputs are.
    assert selection_only_nodes(model) == ("sig", "exp", "neg")
    model.graph.output.append(h.make_tensor_value_info("e", f, [4, 4]))  # now e is a value too
    assert selection_only_nodes(model) == ("neg",)


def test_bypass_rewires_shared_qdq_and_keeps_the_quantized_reader() -> None:
    """x -> Q -> DQ -> {MatMul, ArgMax}: the ArgMax is rewired to x, the MatMul keeps its Q/DQ; an ArgMax
    alone behind a Q/DQ loses the pair altogether."""
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        h.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
        h.make_node("ArgMax", ["xd"], ["am"], name="argmax", axis=0),
        h.make_node("QuantizeLinear", ["u", "s2", "z"], ["uq"], name="q2"),
        h.make_node("DequantizeLinear", ["uq", "s2", "z"], ["ud"], name="dq2"),
        h.make_node("ArgMax", ["ud"], ["bm"], name="argmax2", axis=0),
    ]
    inits = [
        h.make_tensor("s", f, [], [0.1]),
        h.make_tensor("s2", f, [], [0.2]),
        h.make_tensor("z", onnx.TensorProto.INT8, [], [0]),
        h.make_tensor("w", f, [4, 4], [0.5] * 16),
    ]
    inputs = [h.make_tensor_value_info(n, f, [4, 4]) for n in ("x", "u")]
    outputs = [
        h.make_tensor_value_info("y", f, [4, 4]),
        h.make_tensor_value_info("am", onnx.TensorProto.INT64, [1, 4]),
        h.make_tensor_value_info("bm", onnx.TensorProto.INT64, [1, 4]),
    ]
    model = _graph(nodes, inputs, outputs, inits)
    assert _bypass_selection_qdq(model) == 2
    by_name = {n.name: n for n in model.graph.node}
    assert list(by_name["argmax"].input) == ["x"] and list(by_name["argmax2"].input) == ["u"]
    assert list(by_name["mm"].input) == ["xd", "w"]
    assert sorted(by_name) == ["argmax", "argmax2", "dq", "mm", "q"]
    assert "s2" not in {i.name for i in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)


# ----------------------------------------------------------------------------------------------------------
# FP16 normalisations


class GroupNormNet(torch.nn.Module):
    """Conv -> GroupNorm(4 groups) -> ReLU -> Conv: the head pattern (exported as InstanceNormalization)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 16)
        self.out = torch.nn.Conv2d(16, 4, 1)

    def forward(self, image: Any) -> Any:
        return self.out(torch.relu(self.norm(self.conv(image))))


def _float_types_around(model: onnx.ModelProto, op_type: str) -> set[int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]
    }
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return {types[t] for n in inferred.graph.node if n.op_type == op_type for t in [*n.input, *n.output] if t}


def test_normalisations_are_fp32_by_default(tmp_path: Path) -> None:
    torch.manual_seed(SEED)
    fp32 = tmp_path / "gn.onnx"
    image = np.random.default_rng(SEED).standard_normal((1, 3, 32, 48)).astype(np.float32)
    program = torch.onnx.export(
        GroupNormNet().eval(), (torch.from_numpy(image),), dynamo=True, opset_version=18,
        input_names=["image"], output_names=["out"],
    )  # fmt: skip
    assert program is not None
    program.save(str(fp32))
    assert _float_types_around(onnx.load(str(fp32)), "InstanceNormalization") == {_FLOAT}
    default, half = tmp_path / "gn.fp16.onnx", tmp_path / "gn.fp16.norm16.onnx"
    convert_fp16(fp32, default, {"image": image})
    convert_fp16(fp32, half, {"image": image}, normalization_fp32=False)
    assert _float_types_around(onnx.load(str(default)), "InstanceNormalization") == {_FLOAT}
    assert _float_types_around(onnx.load(str(half)), "InstanceNormalization") == {onnx.TensorProto.FLOAT16}
    # The convolutions are FP16 in both.
    for path in (default, half):
        assert onnx.TensorProto.FLOAT16 in _float_types_around(onnx.load(str(path)), "Conv")
    # The same rule for the FP16 rest of the INT8 TensorRT artefact.
    cache = tmp_path / "gn.cache"
    calibrate(fp32, [{"image": image}], "minmax", cache)
    int8, int8_half = tmp_path / "gn.int8.onnx", tmp_path / "gn.int8.norm16.onnx"
    quantize_int8(fp32, cache, int8, high_precision="fp16")
    quantize_int8(fp32, cache, int8_half, high_precision="fp16", normalization_fp32=False)
    assert _float_types_around(onnx.load(str(int8)), "InstanceNormalization") == {_FLOAT}
    assert _float_types_around(onnx.load(str(int8_half)), "InstanceNormalization") == {
        onnx.TensorProto.FLOAT16
    }


def test_calibration_after_int8_in_one_process(tmp_path: Path) -> None:
    """ModelOpt patches ORT's calibrators process-wide; quantize_int8 undoes that, so a calibration after
    it gives the same cache as before it (without the restore the second cache differs, or is empty)."""
    torch.manual_seed(SEED)
    fp32 = tmp_path / "gn.onnx"
    image = np.random.default_rng(SEED + 1).standard_normal((1, 3, 32, 48)).astype(np.float32)
    program = torch.onnx.export(
        GroupNormNet().eval(), (torch.from_numpy(image),), dynamo=True, opset_version=18,
        input_names=["image"], output_names=["out"],
    )  # fmt: skip
    assert program is not None
    program.save(str(fp32))
    for method in ("minmax", "entropy"):
        before, after = tmp_path / f"before.{method}.cache", tmp_path / f"after.{method}.cache"
        calibrate(fp32, [{"image": image}], method, before)
        quantize_int8(fp32, before, tmp_path / "gn.int8.onnx", high_precision="fp32")
        calibrate(fp32, [{"image": image}], method, after)
        assert after.read_bytes() == before.read_bytes()


# ----------------------------------------------------------------------------------------------------------
# The whole network (tests/pipeline_artifacts.py: the demo config at 64×96 with narrow heads)


@pytest.fixture(scope="module")
def network_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pipeline_artifacts as pa
    from panoptic_deploy.export import prepare_verify_inputs

    art = pa.simplified(tmp_path_factory)
    assert art.sim_onnx is not None
    root = tmp_path_factory.mktemp("graph_precision_network")
    (image,) = prepare_verify_inputs(pa.CONFIG, art.images[:1], pa.INPUT_HW, pa.OPTS)
    paths = {"fp32": art.sim_onnx, "fp16": root / "net.fp16.onnx"}
    convert_fp16(art.sim_onnx, paths["fp16"], {"image": image})
    cache = root / "net.int8.cache"
    calibrate(art.sim_onnx, [{"image": image}], "minmax", cache)
    for high in ("fp32", "fp16"):
        paths[f"int8+{high}"] = root / f"net.int8.{high}.onnx"
        quantize_int8(art.sim_onnx, cache, paths[f"int8+{high}"], high_precision=high)
    return paths


@pytest.mark.parametrize("precision", PRECISIONS)
def test_network_index_arithmetic_and_selection_inputs(
    network_models: dict[str, Path], precision: str
) -> None:
    """The exported network in every precision: index tensors integer, no CumSum, no selection input
    behind a Q/DQ, normalisations FP32 wherever the rest is FP16."""
    model = onnx.load(str(network_models[precision]))
    tensors = index_tensor_types(model)
    assert "inst_classes" in tensors and len(tensors) >= 20
    assert {name: t for name, t in tensors.items() if t not in _INTEGER_TYPES} == {}
    assert not any(n.op_type == "CumSum" for n in model.graph.node)
    assert _dq_readers(model, SELECTION_OP_TYPES) == []
    assert _float_types_around(model, "InstanceNormalization") == {_FLOAT}
    if precision.startswith("int8"):
        src = onnx.load(str(network_models["fp32"]))
        selection = set(selection_only_nodes(src))
        # The 5 centre output convs only rank: unquantized; the other convs read Q/DQ.
        centre_convs = [n for n in src.graph.node if n.op_type == "Conv" and n.name in selection]
        assert len(centre_convs) == 5
        dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        fed = {n.name: bool(set(n.input) & dq) for n in model.graph.node if n.op_type == "Conv"}
        assert not any(fed[n.name] for n in centre_convs)
        assert sum(fed.values()) >= len(fed) - 5 - 2  # all but the centre convs (and maybe the stem/last)
