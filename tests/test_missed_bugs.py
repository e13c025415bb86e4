"""Cases the suite used to miss: each test here fails when one small plausible bug is planted; its expected
values are worked out by hand (in the comments), not taken from the code under test.

- minmax calibration must use both sides of a tensor (a tensor dominated by its minimum);
- ``tolerance_failures`` must report NaN outputs, and apply a non-zero rtol as ``atol + rtol * |ref|``;
- instance matching needs IoU > 0.5 (overlapping masks of the same class below that are not a pair);
- the report's speedup is over the torch FP32 row of the same model, wherever that row is;
- the entropy search picks the largest candidate among exactly tied divergences;
- a checkpoint whose only problem is extra (unexpected) keys is refused, naming them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipeline_artifacts as pa
from panoptic_deploy.checkpoint import check_state_dict, load_weights
from panoptic_deploy.compare import (
    ErrorAccumulator,
    Tolerance,
    compare_outputs,
    match_instances,
    tolerance_failures,
)
from panoptic_deploy.errors import CheckpointError
from panoptic_deploy.precision import calibrate, entropy_amax, read_calibration_cache
from panoptic_deploy.report import write_report

# ---------------------------------------------------------------------------------------------------------
# (a) minmax calibration: amax = max(|min|, |max|)


def _negating_model(path: Path) -> Path:
    """x (1×4) -> y = -2 * x + 1 -> z = relu(y): y is dominated by its minimum when x is mostly positive."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "minus_two"], ["scaled"], name="mul"),
            helper.make_node("Add", ["scaled", "one"], ["y"], name="add"),
            helper.make_node("Relu", ["y"], ["z"], name="relu"),
        ],
        "negate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        initializer=[
            helper.make_tensor("minus_two", TensorProto.FLOAT, [], [-2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_minmax_calibration_uses_the_negative_side_too(tmp_path: Path) -> None:
    model = _negating_model(tmp_path / "negate.onnx")
    batches = [
        {"x": np.array([[-1.0, 0.5, 2.0, 3.0]], np.float32)},
        {"x": np.array([[4.5, 0.0, -0.25, 1.0]], np.float32)},
    ]
    cache = tmp_path / "minmax.cache"
    calibrate(model, iter(batches), "minmax", cache)
    amax = read_calibration_cache(cache)
    # By hand: x in [-1, 4.5] -> amax 4.5 (positive side). scaled = -2x in [-9, 2] -> 9 (negative side).
    # y = -2x + 1 in [-8, 3] -> 8 (negative side). z = relu(y) in [0, 3] -> 3.
    assert amax["x"] == 4.5
    assert amax["scaled"] == 9.0
    assert amax["y"] == 8.0
    assert amax["z"] == 3.0


# ---------------------------------------------------------------------------------------------------------
# (b), (c) comparing outputs: NaN, rtol, IoU > 0.5 pairing


def _outputs(masks: list[np.ndarray], classes: list[int], scores: list[float]) -> dict[str, np.ndarray]:
    """Network outputs with the given instance masks (4×8 bool, as probabilities 0.9/0.1) and 2 stuff rows."""
    probs = np.stack([np.where(m, 0.9, 0.1) for m in masks]).astype(np.float32)
    return {
        "inst_probs": probs,
        "inst_scores": np.asarray(scores, np.float32),
        "inst_classes": np.asarray(classes, np.int64),
        "inst_valid": np.ones(len(masks), bool),
        "stuff_probs": np.full((2, 4, 8), 0.5, np.float32),
        "stuff_scores": np.array([0.5, 0.25], np.float32),
        "stuff_present": np.array([True, False]),
    }


def _columns(first: int, last: int) -> np.ndarray:
    mask = np.zeros((4, 8), bool)
    mask[:, first : last + 1] = True
    return mask


def test_nan_outputs_are_tolerance_failures() -> None:
    ref = _outputs([_columns(0, 3)], [3], [0.8])
    test = {k: v.copy() for k, v in ref.items()}
    test["stuff_probs"][1, 2, 5] = np.nan  # |NaN - b| > tol is False: only an explicit check sees it
    errors, match = compare_outputs(test, ref, inst_thres=0.4)
    problems = tolerance_failures(errors, test, ref, match, Tolerance(atol=1.0, rtol=1.0, max_flips=10))
    assert len(problems) == 1 and problems[0].startswith("stuff_probs: "), problems
    test = {k: v.copy() for k, v in ref.items()}
    test["inst_scores"][0] = np.nan
    errors, match = compare_outputs(test, ref, inst_thres=0.4)
    problems = tolerance_failures(errors, test, ref, match, Tolerance(atol=1.0, rtol=1.0, max_flips=10))
    assert len(problems) == 1 and problems[0].startswith("inst_scores: "), problems


def test_relative_tolerance_is_added_to_the_absolute_one() -> None:
    ref = _outputs([_columns(0, 3)], [3], [0.8])
    test = {k: v.copy() for k, v in ref.items()}
    # stuff_scores[0] = 0.5: allowed |a - b| <= 0.01 + 0.01 * 0.5 = 0.015.
    test["stuff_scores"][0] = np.float32(0.5 + 0.0125)
    errors, match = compare_outputs(test, ref, inst_thres=0.4)
    tol = Tolerance(atol=0.01, rtol=0.01)
    assert tolerance_failures(errors, test, ref, match, tol) == []
    assert tolerance_failures(errors, test, ref, match, Tolerance(atol=0.01, rtol=0.0)) != []
    test["stuff_scores"][0] = np.float32(0.5 + 0.0175)
    errors, match = compare_outputs(test, ref, inst_thres=0.4)
    problems = tolerance_failures(errors, test, ref, match, tol)
    assert len(problems) == 1 and problems[0].startswith(
        "stuff_scores: 1 of 2 values outside atol 0.01 + rtol 0.01"
    )


def test_overlapping_masks_pair_only_above_half_iou() -> None:
    ref = _outputs([_columns(0, 3)], [3], [0.8])  # 16 pixels
    # Same class, columns 2..5: intersection 8, union 24, IoU 1/3 -> no pair: both instances unmatched.
    low = _outputs([_columns(2, 5)], [3], [0.8])
    match = match_instances(low, ref)
    assert (match.matched, match.unmatched) == (0, 2)
    acc = ErrorAccumulator()
    acc.add(low, ref)
    errors = acc.result()
    assert (errors["inst_valid"].mismatches, errors["inst_valid"].compared) == (2, 2)
    assert errors["inst_probs"].compared == 0 and errors["inst_classes"].compared == 0
    # Columns 1..4: intersection 12, union 20, IoU 0.6 -> a pair.
    high = _outputs([_columns(1, 4)], [3], [0.8])
    match = match_instances(high, ref)
    assert (match.matched, match.unmatched) == (1, 0)
    # Exactly half: columns 0..3 against 0..7 -> 16 / 32 = 0.5 -> not a pair (strictly above 0.5).
    half = _outputs([_columns(0, 7)], [3], [0.8])
    assert match_instances(half, ref).matched == 0
    # Same class beats a higher IoU: the class-5 copy (IoU 1) loses to the class-3 one (IoU 0.6).
    both = _outputs([_columns(0, 3), _columns(1, 4)], [5, 3], [0.9, 0.7])
    match = match_instances(both, ref)
    assert match.ref_rows.tolist() == [0] and match.test_rows.tolist() == [1]
    # ... but only above IoU 0.5: with the class-3 copy at IoU 1/3 the class-5 one (IoU 1) is taken.
    other = _outputs([_columns(0, 3), _columns(2, 5)], [5, 3], [0.9, 0.7])
    match = match_instances(other, ref)
    assert match.ref_rows.tolist() == [0] and match.test_rows.tolist() == [0]


# ---------------------------------------------------------------------------------------------------------
# (d) the report's speedup baseline


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> pa.Artifacts:
    return pa.benches(tmp_path_factory)


def _bench_copy(source: Path, out: Path, model: str, p50_ms: float) -> Path:
    """A copy of a benchmark JSON with another model name and every network latency set to ``p50_ms``."""
    data: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    data["model"] = model
    network = data["latency"]["network"]
    for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms"):
        network[key] = p50_ms
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def _speedups(text: str) -> dict[tuple[str, str], str]:
    """(model section, row label) -> the speedup cell of the results table."""
    cells: dict[tuple[str, str], str] = {}
    section = ""
    for line in text.split("## Results", 1)[1].split("## Not run", 1)[0].splitlines():
        if line.startswith("### "):
            section = line[4:].strip()
        elif line.startswith("| ") and not line.startswith("| row"):
            row = [c.strip() for c in line.strip("|").split("|")]
            cells[(section, row[0])] = row[8]
    return cells


def test_speedup_is_over_the_torch_fp32_row_of_the_same_model(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_torch is not None and art.bench_ort is not None
    files = [
        # Model "a_only_ort" sorts first and has no torch FP32 row: no speedup at all (not 1.00x).
        _bench_copy(art.bench_ort, tmp_path / "a_ort.json", "a_only_ort", 5.0),
        _bench_copy(art.bench_ort, tmp_path / "b_ort.json", "b_model", 12.0),
        _bench_copy(art.bench_torch, tmp_path / "b_torch.json", "b_model", 30.0),
    ]
    out = tmp_path / "report.md"
    write_report(files, out, plots_dir=tmp_path / "plots")
    text = out.read_text(encoding="utf-8")
    # By hand: b_model's baseline is its torch FP32 row (30 ms): 30 / 30 = 1.00x, 30 / 12 = 2.50x.
    assert _speedups(text) == {
        ("a_only_ort", "onnxruntime fp32"): "–",
        ("b_model", "torch fp32"): "1.00x",
        ("b_model", "onnxruntime fp32"): "2.50x",
    }
    assert text.count("No torch FP32 row for this model, so no speedup column.") == 1


def test_a_report_without_torch_fp32_shows_no_speedup(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_ort is not None
    out = tmp_path / "r.md"
    write_report([art.bench_ort], out, plots_dir=tmp_path / "plots")
    assert list(_speedups(out.read_text(encoding="utf-8")).values()) == ["–"]


# ---------------------------------------------------------------------------------------------------------
# (e) the entropy search's tie rule


def test_entropy_ties_pick_the_largest_candidate() -> None:
    # 300 bins; counts 10, 10, 40 in bins 0..2, nothing else (bin 0 is set to bin 1's count first anyway).
    # Candidates i = 128..300 keep the first i bins and merge them into 128 levels; bins j with
    # j * 128 // i == k form level k, and Q spreads each level's mass evenly over its non-empty bins.
    #   i <= 256: level 0 = bins {0, 1} (10, 10), bin 2 is alone in its level -> Q = P, KL exactly 0;
    #   i > 256: level 0 = bins {0, 1, 2} -> Q = (20, 20, 20) != P = (10, 10, 40) -> KL > 0.
    # All of i = 128..256 tie at 0; the rule takes the largest, i = 256: amax = edges[256].
    hist = np.zeros(300, np.int64)
    hist[:3] = [10, 10, 40]
    edges = np.linspace(0.0, 3.0, 301)
    assert entropy_amax(hist, edges) == edges[256]
    # Only bins 0 and 1: every candidate ties at 0 and the largest, i = 300, keeps the whole range.
    hist[2] = 0
    assert entropy_amax(hist, edges) == edges[300]


# ---------------------------------------------------------------------------------------------------------
# (f) a checkpoint whose only problem is extra keys


def test_extra_keys_alone_are_refused_by_name() -> None:
    expected = {"conv.weight": (4, 3, 3, 3), "norm.weight": (4,)}
    state = {k: torch.zeros(s) for k, s in expected.items()}
    state["head.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state, "extra.pth")
    assert str(info.value) == "extra.pth does not fit the model: 1 unexpected key(s): head.extra.weight"


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.norm = torch.nn.GroupNorm(2, 4)


def test_checkpoint_with_extra_keys_is_not_loaded(tmp_path: Path) -> None:
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.full_like(v, 0.5) for k, v in before.items()}
    state["optimizer_moment.conv.weight"] = torch.zeros(4, 3, 3, 3)
    state["zz.extra"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    assert str(info.value) == (
        f"{path} does not fit the model: 2 unexpected key(s): optimizer_moment.conv.weight, zz.extra"
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
