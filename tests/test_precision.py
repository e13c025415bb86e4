"""Precision stage: FP16 AutoCast, calibration cache, INT8 Q/DQ from the cache, ORT evaluation options.

The model under test is a tiny PanopticFCN-like graph exported with torch.onnx.export (dynamo, opset 18) and
simplified with onnxslim: conv + GroupNorm + ReLU, bilinear Resize, a kernel x feature MatMul, Sigmoid, TopK,
GatherElements, ArgMax, CumSum; float32, int64 and bool outputs. Inputs are crops of the fixture photos,
normalised like the real model (BGR minus the detectron2 pixel mean, values about -125..+150).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

# ModelOpt, onnx and onnxruntime are required dependencies ([pipeline]): a broken install must fail here,
# not turn this module into skips.
import modelopt.onnx.quantization  # noqa: F401
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch

from panoptic_deploy.engines.onnxruntime import make_ort_session, needs_unoptimized_session
from panoptic_deploy.precision import (
    CACHE_MAGIC,
    PrecisionError,
    calibrate,
    convert_fp16,
    entropy_amax,
    format_tensorrt_cache,
    load_calibration_cache,
    quantize_int8,
    read_calibration_cache,
)

FIXTURES = Path(__file__).parent / "fixtures" / "images"
H, W = 64, 96
OUTPUTS = ["sem", "sem_argmax", "scores", "indices", "masks", "keep", "rank"]
PIXEL_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
TOPK = 8


class TinyPanoptic(torch.nn.Module):
    """1×3×64×96 image -> semantic logits (Resize output), argmax, top-K centers, kernel·feature masks."""

    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int, stride: int) -> torch.nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(4, cout), nn.ReLU()
            )

        self.stem = block(3, width, 2)
        self.b1 = block(width, 2 * width, 2)
        self.b2 = block(2 * width, 2 * width, 1)
        self.sem = nn.Conv2d(2 * width, classes, 1)
        self.center = nn.Conv2d(2 * width, 1, 1)
        self.kernel = nn.Conv2d(2 * width, 2 * width, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.b2(self.b1(self.stem(image)))
        f = torch.nn.functional.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
        sem = torch.nn.functional.interpolate(
            self.sem(f), size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        heat = torch.sigmoid(self.center(f)).flatten(1)  # 1×HW
        scores, indices = torch.topk(heat, TOPK, dim=1)  # 1×K
        feats = self.kernel(f).flatten(2)  # 1×D×HW
        kernels = torch.gather(feats, 2, indices[:, None, :].expand(-1, feats.shape[1], -1))  # 1×D×K
        masks = torch.sigmoid(torch.matmul(kernels.transpose(1, 2), feats))  # 1×K×HW
        keep = scores > 0.5
        rank = torch.cumsum(keep.to(torch.int64), 1)
        return sem, sem.argmax(1), scores, indices, masks, keep, rank


def _photos() -> list[npt.NDArray[np.float32]]:
    from PIL import Image

    photos = []
    for path in sorted(FIXTURES.glob("*.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        photos.append(rgb[:, :, ::-1] - PIXEL_MEAN_BGR)  # BGR, mean-subtracted, HWC
    return photos


def _random_crops(rng: np.random.Generator, count: int) -> list[dict[str, npt.NDArray[np.float32]]]:
    """``count`` random 1×3×H×W crops (random photo, scale, position, flip) of the fixture photos."""
    from PIL import Image

    photos = _photos()
    batches = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        scale = float(rng.uniform(0.15, 0.35))
        h, w = max(H, int(photo.shape[0] * scale)), max(W, int(photo.shape[1] * scale))
        small = np.stack(
            [np.asarray(Image.fromarray(photo[:, :, c]).resize((w, h), Image.BILINEAR)) for c in range(3)]
        )
        y, x = int(rng.integers(h - H + 1)), int(rng.integers(w - W + 1))
        crop = small[:, y : y + H, x : x + W]
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        batches.append({"image": np.ascontiguousarray(crop[None], dtype=np.float32)})
    return batches


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnxslim

    torch.manual_seed(0)
    model = TinyPanoptic().eval()
    folder = tmp_path_factory.mktemp("precision")
    raw = folder / "tiny.onnx"
    example = torch.from_numpy(_random_crops(np.random.default_rng(0), 1)[0]["image"])
    torch.onnx.export(
        model,
        (example,),
        str(raw),
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=OUTPUTS,
    )
    sim = folder / "tiny.sim.onnx"
    onnx.save(onnxslim.slim(onnx.load(str(raw))), str(sim))
    return sim


@pytest.fixture(scope="module")
def calibration_batches() -> list[dict[str, npt.NDArray[np.float32]]]:
    return _random_crops(np.random.default_rng(1), 6)


@pytest.fixture(scope="module")
def eval_batches() -> list[dict[str, npt.NDArray[np.float32]]]:
    return _random_crops(np.random.default_rng(2), 3)


@pytest.fixture(scope="module")
def entropy_cache(fp32_model: Path, calibration_batches: list[dict[str, npt.NDArray[np.float32]]]) -> Path:
    cache = fp32_model.parent / "tiny.entropy.cache"
    calibrate(fp32_model, iter(calibration_batches), "entropy", cache)
    return cache


def _run(path: Path, batches: list[dict[str, npt.NDArray[np.float32]]]) -> list[list[npt.NDArray[object]]]:
    session = make_ort_session(path, threads=1)
    return [session.run(None, batch) for batch in batches]


def _cosine(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def _matched_rows(
    indices: npt.NDArray[np.int64],
    masks: npt.NDArray[np.float32],
    ref_indices: npt.NDArray[np.int64],
    ref_masks: npt.NDArray[np.float32],
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """(mask, reference mask) pairs for the top-K center indices both runs selected (1×K, 1×K×HW inputs)."""
    ref_row = {int(index): k for k, index in enumerate(ref_indices[0])}
    return [
        (masks[0, k], ref_masks[0, ref_row[int(index)]])
        for k, index in enumerate(indices[0])
        if int(index) in ref_row
    ]


def _io_dtypes(path: Path) -> list[tuple[str, int]]:
    model = onnx.load(str(path))
    return [(v.name, v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]]


# ----------------------------------------------------------------------------------------------------------
# FP16


def test_fp16_keeps_io_dtypes_and_matches_fp32(
    fp32_model: Path,
    tmp_path: Path,
    calibration_batches: list[dict[str, npt.NDArray[np.float32]]],
    eval_batches: list[dict[str, npt.NDArray[np.float32]]],
) -> None:
    out = tmp_path / "tiny.fp16.onnx"
    report = convert_fp16(fp32_model, out, calibration_batches[0])

    assert _io_dtypes(out) == _io_dtypes(fp32_model)
    assert dict(_io_dtypes(out))["sem"] == onnx.TensorProto.FLOAT  # a Resize output: the onnxconverter bug
    model = onnx.load(str(out))
    fp16_inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "no initializer was converted to FP16"
    assert report.casts_added > 0
    assert needs_unoptimized_session(model)

    for ref, got in zip(_run(fp32_model, eval_batches), _run(out, eval_batches), strict=True):
        for name, r, g in zip(OUTPUTS, ref, got, strict=True):
            assert g.dtype == r.dtype and g.shape == r.shape, name
        # FP16 has an 11-bit mantissa; values here are O(1) (logits) and in [0, 1] (sigmoids): 5e-3 absolute.
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-2, atol=5e-3)  # sem logits
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-2, atol=2e-3)  # top-K scores, sorted
        assert np.mean(got[1] == ref[1]) >= 0.99  # sem argmax
        # Near-tied scores (1e-4 apart) may swap places in FP16: compare masks of the same center index.
        common = _matched_rows(got[3], got[4], ref[3], ref[4])
        assert len(common) >= TOPK - 1
        for mask, ref_mask in common:
            np.testing.assert_allclose(mask, ref_mask, rtol=1e-2, atol=5e-3)


def test_fp16_keep_fp32_op_types_are_respected(fp32_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.fp16.keep.onnx"
    report = convert_fp16(fp32_model, out, None, keep_fp32_op_types=["MatMul", "Sigmoid"])
    model = onnx.load(str(out))
    kept_ops = {n.op_type for n in model.graph.node if n.name in report.nodes_kept_fp32}
    assert {"MatMul", "Sigmoid"} <= kept_ops
    with pytest.raises(PrecisionError, match=r"tiny\.sim\.onnx: keep FP32: no node of op type 'Softmax'"):
        convert_fp16(fp32_model, out.with_name("x.onnx"), None, keep_fp32_op_types=["Softmax"])
    assert not out.with_name("x.onnx").exists()


# ----------------------------------------------------------------------------------------------------------
# Calibration cache


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_cache_is_deterministic_and_input_sensitive(
    fp32_model: Path,
    tmp_path: Path,
    calibration_batches: list[dict[str, npt.NDArray[np.float32]]],
    method: str,
) -> None:
    first, second, changed = tmp_path / "a.cache", tmp_path / "b.cache", tmp_path / "c.cache"
    report = calibrate(fp32_model, iter(calibration_batches), method, first)
    calibrate(fp32_model, (dict(b) for b in calibration_batches), method, second)
    assert first.read_bytes() == second.read_bytes()

    edited = [dict(b) for b in calibration_batches]
    edited[3] = {"image": edited[3]["image"].copy()}
    edited[3]["image"][0, 1, 10, 20] += 1.0  # one pixel of one image
    calibrate(fp32_model, iter(edited), method, changed)
    assert changed.read_bytes() != first.read_bytes()

    cache = load_calibration_cache(first)
    assert cache.header["method"] == method
    assert cache.header["inputs"] == str(len(calibration_batches)) == str(report.num_inputs)
    assert cache.header["onnxruntime"] == ort.__version__
    assert len(cache.amax) == report.num_tensors
    text = first.read_text()
    assert text.startswith(CACHE_MAGIC + "\n")
    tensor_lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert tensor_lines == sorted(tensor_lines, key=lambda line: line.rpartition(": ")[0])


def test_minmax_amax_is_the_absolute_maximum(
    fp32_model: Path, tmp_path: Path, calibration_batches: list[dict[str, npt.NDArray[np.float32]]]
) -> None:
    cache = tmp_path / "minmax.cache"
    calibrate(fp32_model, iter(calibration_batches), "minmax", cache)
    amax = read_calibration_cache(cache)
    want_image = max(float(np.abs(b["image"]).max()) for b in calibration_batches)
    assert amax["image"] == float(np.float32(want_image))
    # Graph outputs are calibrated too: sem is float and its range comes from FP32 inference.
    sem = max(float(np.abs(run[0]).max()) for run in _run(fp32_model, calibration_batches))
    assert amax["sem"] == pytest.approx(sem, rel=1e-6)
    percentile = tmp_path / "percentile.cache"
    calibrate(fp32_model, iter(calibration_batches), "percentile", percentile, percentile=99.0)
    clipped = read_calibration_cache(percentile)
    assert clipped["image"] < amax["image"]


def _entropy_reference(hist: npt.NDArray[np.int64], edges: npt.NDArray[np.float64]) -> float:
    """Straight transcription of TensorRT's EntropyCalibration2 search (ModelOpt's _compute_amax_entropy)."""
    bins = hist.astype(np.float64)
    bins[0] = bins[1]
    divergences = []
    for i in range(128, len(bins) + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, 129)) - 1
        level[bins[:i] == 0] = -1
        q = np.zeros(i)
        for k in range(128):
            members = level == k
            if members.any():
                q[members] = bins[:i][members].sum() / members.sum()
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            divergences.append(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
    arr = np.array(divergences)
    return float(edges[len(arr) - 1 - int(np.argmin(arr[::-1])) + 128])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_amax_matches_the_reference_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for bins in (129, 200, 300):
        data = np.abs(rng.standard_normal(20000) ** 3)
        data[rng.random(data.size) < 0.3] = 0.0  # a ReLU-like spike at zero
        hist, edges = np.histogram(data, bins=bins)
        assert entropy_amax(hist, edges) == _entropy_reference(hist, edges), f"seed {seed}, {bins} bins"
    # Exact ties (tests/test_missed_bugs.py has the hand-worked case): both take the largest candidate.
    tied = np.zeros(300, np.int64)
    tied[:3] = [10, 10, 40]
    edges = np.linspace(0.0, 3.0, 301)
    assert entropy_amax(tied, edges) == _entropy_reference(tied, edges) == edges[256]


def test_entropy_clips_a_long_tail() -> None:
    rng = np.random.default_rng(3)
    data = np.abs(np.concatenate([rng.standard_normal(100000), [50.0]]))
    hist, edges = np.histogram(data, bins=2048)
    amax = entropy_amax(hist, edges)
    assert 2.0 < amax < 10.0  # the single outlier at 50 is clipped, the Gaussian bulk kept


def test_calibration_errors_name_the_file(
    fp32_model: Path, tmp_path: Path, calibration_batches: list[dict[str, npt.NDArray[np.float32]]]
) -> None:
    cache = tmp_path / "x.cache"
    with pytest.raises(PrecisionError, match=r"x\.cache: no calibration inputs") as info:
        calibrate(fp32_model, iter([]), "minmax", cache)
    assert "\n" not in str(info.value)
    assert not cache.exists()
    with pytest.raises(PrecisionError, match="unknown calibration method"):
        calibrate(fp32_model, iter(calibration_batches), "mse", cache)
    with pytest.raises(PrecisionError, match=r"batch 0 has keys \['img'\]"):
        calibrate(fp32_model, iter([{"img": calibration_batches[0]["image"]}]), "minmax", cache)
    nan = calibration_batches[0]["image"].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(PrecisionError, match="NaN"):
        calibrate(fp32_model, iter([{"image": nan}]), "minmax", cache)
    assert not cache.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "calibration cache not found"),
        ("", "not a calibration cache"),
        ("TRT-100300-MinMaxCalibration\nrelu: 3c90f9bd\n", "not a calibration cache"),
        (f"{CACHE_MAGIC}\n# method: minmax\n", "lists no tensors"),
        (f"{CACHE_MAGIC}\nrelu: 1.5\nrelu 2.0\n", "line 3: expected"),
        (f"{CACHE_MAGIC}\nrelu: -1.5\n", "line 2: expected"),
        (f"{CACHE_MAGIC}\nrelu: nan\n", "line 2: expected"),
        (f"{CACHE_MAGIC}\nrelu: 1.5\nrelu: 2.5\n", "listed twice"),
    ],
)
def test_garbled_cache_is_one_line_error_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "model.int8.cache"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PrecisionError, match=message) as info:
        read_calibration_cache(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_tensorrt_cache_form() -> None:
    text = format_tensorrt_cache({"b": 127.0, "a": 2.54, "zero": 0.0})
    header, *lines = text.splitlines()
    assert header.startswith("TRT-")
    assert lines[0] == f"a: {struct.pack('!f', np.float32(2.54) / np.float32(127)).hex()}"
    assert lines[1] == "b: 3f800000"  # scale 1.0
    assert lines[2] == "zero: 3f800000"  # an all-zero tensor gets scale 1 (as ORT's quantizer does)


# ----------------------------------------------------------------------------------------------------------
# INT8


def _activation_scale(model_path: Path, tensor: str) -> float:
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [
        float(inits[n.input[1]].reshape(-1)[0])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == tensor
    ]
    assert len(scales) == 1, f"expected one QuantizeLinear on {tensor}, found {len(scales)}"
    return scales[0]


@pytest.mark.parametrize("high_precision", ["fp16", "fp32"])
def test_int8_has_qdq_and_matches_fp32(
    fp32_model: Path,
    entropy_cache: Path,
    tmp_path: Path,
    eval_batches: list[dict[str, npt.NDArray[np.float32]]],
    high_precision: str,
) -> None:
    out = tmp_path / f"tiny.int8.{high_precision}.onnx"
    report = quantize_int8(fp32_model, entropy_cache, out, high_precision=high_precision)
    model = onnx.load(str(out))
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert report.qdq_pairs == q > 0 and dq >= q
    assert {
        n.op_type for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
    } >= {
        "Conv",
        "MatMul",
        "TopK",
        "ArgMax",
        "CumSum",
    }
    assert _io_dtypes(out) == _io_dtypes(fp32_model)
    session = make_ort_session(out)
    assert (
        session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    has_fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert has_fp16 == (high_precision == "fp16")

    for ref, got in zip(_run(fp32_model, eval_batches), _run(out, eval_batches), strict=True):
        for name, r, g in zip(OUTPUTS, ref, got, strict=True):
            assert g.dtype == r.dtype and g.shape == r.shape, name
        # INT8 with per-tensor activation scales: compare directions (cosine) and decisions (argmax).
        assert _cosine(got[0], ref[0]) > 0.999  # sem logits
        # The random-weight center scores are within 1e-4 of each other (about 0.55), finer than INT8 steps,
        # so the K-th place may change hands: compare masks of the centers both runs picked.
        common = _matched_rows(got[3], got[4], ref[3], ref[4])
        assert len(common) >= TOPK // 2
        for mask, ref_mask in common:
            assert _cosine(mask, ref_mask) > 0.9999
            assert np.abs(mask - ref_mask).max() < 0.1  # sigmoid outputs, per-tensor INT8 logits
        np.testing.assert_allclose(got[2], ref[2], atol=0.01)  # top-K scores (sigmoid, in [0, 1])
        assert np.mean(got[1] == ref[1]) >= 0.95  # semantic argmax agreement


def test_int8_scales_come_from_the_cache(fp32_model: Path, entropy_cache: Path, tmp_path: Path) -> None:
    original = tmp_path / "a.onnx"
    quantize_int8(fp32_model, entropy_cache, original, high_precision="fp32")
    amax = read_calibration_cache(entropy_cache)
    tensor = "image"
    assert _activation_scale(original, tensor) == pytest.approx(amax[tensor] / 127, rel=1e-6)

    # Hand-edit one amax in the cache: the Q scale must follow, nothing else may change.
    text = entropy_cache.read_text().replace(f"\n{tensor}: ", f"\n{tensor}: 200.0\n#was ", 1)
    edited_cache = tmp_path / "edited.cache"
    edited_cache.write_text(text)
    assert read_calibration_cache(edited_cache)[tensor] == 200.0
    edited = tmp_path / "b.onnx"
    quantize_int8(fp32_model, edited_cache, edited, high_precision="fp32")
    assert _activation_scale(edited, tensor) == pytest.approx(200.0 / 127, rel=1e-6)

    # Same cache twice: byte-identical model (Snakemake sees "unchanged").
    again = tmp_path / "c.onnx"
    quantize_int8(fp32_model, entropy_cache, again, high_precision="fp32")
    assert again.read_bytes() == original.read_bytes()


def test_int8_errors(fp32_model: Path, entropy_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.int8.onnx"
    missing = tmp_path / "missing.cache"
    with pytest.raises(PrecisionError, match=r"missing\.cache: calibration cache not found"):
        quantize_int8(fp32_model, missing, out)
    garbled = tmp_path / "garbled.cache"
    garbled.write_text(entropy_cache.read_text().replace("\nimage: ", "\nimage = ", 1))
    with pytest.raises(PrecisionError, match=r"garbled\.cache: line \d+: expected"):
        quantize_int8(fp32_model, garbled, out)
    with pytest.raises(PrecisionError, match="high_precision"):
        quantize_int8(fp32_model, entropy_cache, out, high_precision="int4")
    # A cache for other tensor names covers nothing this model quantizes.
    foreign = tmp_path / "foreign.cache"
    foreign.write_text(f"{CACHE_MAGIC}\nnot_a_tensor: 1.0\n")
    with pytest.raises(PrecisionError, match="no Q/DQ inserted"):
        quantize_int8(fp32_model, foreign, out)
    assert not out.exists()


def _dq_fed(model: onnx.ModelProto, op_type: str) -> dict[str, bool]:
    """Node name -> whether any input of that node comes from a DequantizeLinear, for nodes of ``op_type``."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: any(i in dq_outputs for i in n.input) for n in model.graph.node if n.op_type == op_type}


def test_int8_exclusions_keep_those_nodes_unquantized(
    fp32_model: Path, entropy_cache: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full.onnx"
    report = quantize_int8(fp32_model, entropy_cache, full, high_precision="fp32")
    convs = _dq_fed(onnx.load(str(full)), "Conv")
    # Without exclusions every Conv reads Q/DQ inputs, except the centre Conv, which only feeds TopK (the
    # selection rule, tests/test_graph_precision.py).
    selection = {name for name in convs if name in report.selection_nodes}
    assert len(selection) == 1 and not any(convs[name] for name in selection)
    convs = {name: fed for name, fed in convs.items() if name not in selection}
    assert len(convs) >= 2 and all(convs.values())

    no_conv = tmp_path / "no_conv.onnx"
    report = quantize_int8(
        fp32_model, entropy_cache, no_conv, high_precision="fp32", exclude_op_types=["Conv"]
    )
    assert not any(_dq_fed(onnx.load(str(no_conv)), "Conv").values())
    assert report.qdq_pairs > 0
    assert any(_dq_fed(onnx.load(str(no_conv)), "MatMul").values())  # the MatMul is still quantized

    first = sorted(convs)[0]
    one = tmp_path / "one.onnx"
    quantize_int8(fp32_model, entropy_cache, one, high_precision="fp32", exclude_nodes=[re.escape(first)])
    fed = _dq_fed(onnx.load(str(one)), "Conv")
    assert not fed[first] and all(v for k, v in fed.items() if k != first and k not in selection)

    out = tmp_path / "bad.onnx"
    for kwargs, message in (
        ({"exclude_op_types": ["Softmax"]}, "no node of op type 'Softmax' in the model"),
        ({"exclude_nodes": ["("]}, "'(' is not a regular expression"),
        ({"exclude_nodes": [first[:-1]]}, f"no node name matches {first[:-1]!r}"),  # a prefix is no match
    ):
        with pytest.raises(PrecisionError, match=r"tiny\.sim\.onnx: INT8 exclusion: " + re.escape(message)):
            quantize_int8(fp32_model, entropy_cache, out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# ORT options


def test_session_options_follow_the_model_kind(fp32_model: Path) -> None:
    fp32 = make_ort_session(fp32_model, threads=1)
    assert fp32.get_session_options().graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert fp32.get_session_options().intra_op_num_threads == 1
    assert not needs_unoptimized_session(onnx.load(str(fp32_model)))
    forced = make_ort_session(fp32_model, optimize=False)
    assert forced.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # No spinning intra-op threads: they would hold the cores the torch post-processing needs next.
    for session in (fp32, forced):
        assert (
            session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        )


def test_q_scales_map_back_through_a_retargeted_cast() -> None:
    """ModelOpt with high_precision fp16 retargets Cast(bool -> float) to fp16 and renames its output; the
    scale check must still find the calibrated FP32 tensor (seen on the PanopticFCN export)."""
    import onnx
    from onnx import TensorProto, helper

    from panoptic_deploy.precision.int8 import _activation_q_scales

    scale = np.float32(np.random.default_rng(11).uniform(0.01, 1.0))  # seed 11: any scale in (0.01, 1) does
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["a", "b"], ["eq_8"], name="eq"),
            helper.make_node(
                "Cast", ["eq_8"], ["to_copy_7_cast_to_fp16"], to=TensorProto.FLOAT16, name="cast"
            ),
            helper.make_node(
                "QuantizeLinear", ["to_copy_7_cast_to_fp16", "s", "z"], ["q"], name="to_copy_7_QuantizeLinear"
            ),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [4])],
        initializer=[
            helper.make_tensor("s", TensorProto.FLOAT16, [], [float(scale)]),
            helper.make_tensor("z", TensorProto.INT8, [], [0]),
        ],
    )
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    [(tensor, found)] = _activation_q_scales(model, {"to_copy_7": 127.0 * float(scale)})
    assert tensor == "to_copy_7"
    assert found == pytest.approx(float(np.float16(scale)))


def test_calibration_batches_fit_any_image_to_the_static_input(tmp_path: Path) -> None:
    """Larger images are centre-cropped, smaller ones zero-padded; values are the model's normalisation."""
    from PIL import Image

    from panoptic_deploy.precision import calibration_batches

    config = Path(__file__).parents[1] / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
    opts = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
    rng = np.random.default_rng(12)  # seed 12: any pixels do; the expected arrays are built from them
    wide = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # resized stays 64x96 -> cropped to 64x64
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # pads to 64x64 exactly
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(small).save(tmp_path / "small.png")
    batches = list(
        calibration_batches(config, [tmp_path / "wide.png", tmp_path / "small.png"], (64, 64), opts)
    )
    assert [b["image"].shape for b in batches] == [(1, 3, 64, 64), (1, 3, 64, 64)]
    mean = np.array([123.675, 116.28, 103.53], np.float32)[:, None, None]
    expected_wide = wide[:, 16:80, ::-1].transpose(2, 0, 1).astype(np.float32) - mean  # BGR, centre crop
    np.testing.assert_array_equal(batches[0]["image"][0], expected_wide)
    expected_small = small[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - mean
    np.testing.assert_array_equal(batches[1]["image"][0], expected_small)
