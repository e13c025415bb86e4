"""Why the default calibration method is percentile, not entropy.

See docs/precision.md, "INT8 on the trained demo".

An exported PanopticFCN pads its instance candidates to a fixed count. The unused slots have zero kernels, so
their mask probabilities are sigmoid(0) = 0.5 exactly: on the demo, 93-98% of the tensor that the graph
multiplies into the maskness score. TensorRT's entropy search keeps that spike and clips every real mask
probability above 0.5; percentile 99.99 keeps them. These tests rebuild that tensor in a two-node graph
(kernels x features -> Sigmoid) and run the package's own ``calibrate`` on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from panoptic_deploy.precision import calibrate, read_calibration_cache

ROOT = Path(__file__).resolve().parents[1]
SLOTS, CHANNELS, PIXELS, VALID = 128, 8, 1024, 4
NUM_BINS = 2048


def _mask_probability_model(path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["kernels", "features"], ["logits"], name="mask_matmul"),
            helper.make_node("Sigmoid", ["logits"], ["probs"], name="mask_sigmoid"),
        ],
        "mask_probabilities",
        [
            helper.make_tensor_value_info("kernels", TensorProto.FLOAT, [SLOTS, CHANNELS]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [CHANNELS, PIXELS]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [SLOTS, PIXELS])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def _batches(seed: int) -> list[dict[str, npt.NDArray[np.float32]]]:
    """Per image: VALID slots carry a random kernel, the other slots are zero (padding)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(8):
        kernels = np.zeros((SLOTS, CHANNELS), np.float32)
        kernels[rng.choice(SLOTS, VALID, replace=False)] = rng.normal(0.0, 1.0, (VALID, CHANNELS))
        features = (3.0 * rng.normal(0.0, 1.0, (CHANNELS, PIXELS))).astype(np.float32)
        batches.append({"kernels": kernels, "features": features})
    return batches


def _probs(batches: list[dict[str, npt.NDArray[np.float32]]]) -> npt.NDArray[np.float64]:
    """The Sigmoid output, computed independently in float64."""
    logits = [b["kernels"].astype(np.float64) @ b["features"].astype(np.float64) for b in batches]
    return np.concatenate([(1.0 / (1.0 + np.exp(-x))).ravel() for x in logits])


@pytest.mark.parametrize("seed", [11, 12])
def test_entropy_clips_padded_mask_probabilities_and_percentile_keeps_them(seed: int, tmp_path: Path) -> None:
    print(f"seed {seed}")
    model = tmp_path / "masks.onnx"
    _mask_probability_model(model)
    batches = _batches(seed)
    probs = _probs(batches)
    # The shape of the demo's tensor: a spike at exactly 0.5 from the padding, a few real probabilities above.
    assert (probs == 0.5).mean() > 0.9, f"seed {seed}"
    assert (probs > 0.9).mean() > 0.001, f"seed {seed}"

    amax = {}
    for method in ("entropy", "percentile"):
        cache = tmp_path / f"{method}.cache"
        calibrate(model, iter(batches), method, cache, percentile=99.99, num_bins=NUM_BINS)
        amax[method] = read_calibration_cache(cache)["probs"]

    bin_width = float(probs.max()) / NUM_BINS
    # Entropy stops a few bins above the spike (the demo: 0.501): every mask probability above saturates.
    assert 0.5 <= amax["entropy"] < 0.51, f"seed {seed}: {amax}"
    assert (probs > amax["entropy"]).mean() > 0.001, f"seed {seed}"
    # Percentile agrees with numpy's percentile of |x| to a histogram bin and keeps the range up to ~1.
    assert abs(amax["percentile"] - float(np.percentile(probs, 99.99))) <= 2 * bin_width, (
        f"seed {seed}: {amax}"
    )
    assert amax["percentile"] > 0.99, f"seed {seed}: {amax}"


def test_schema_and_demo_config_default_to_percentile() -> None:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
    method = schema["properties"]["calibration"]["properties"]["method"]
    assert method["default"] == "percentile"
    demo = yaml.safe_load((ROOT / "config/config.yaml").read_text(encoding="utf-8"))
    assert demo["calibration"]["method"] == "percentile"
    assert demo["calibration"]["percentile"] == 99.99
