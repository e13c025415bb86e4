"""Benchmarks: the torch FP32 reference file, torch and ONNX Runtime benchmark results (schema-valid, exact
accuracy bookkeeping), ground-truth PQ, and the building blocks (latency statistics, run-length maps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

import pipeline_artifacts as pa
from panoptic_deploy.bench.reference import read_reference
from panoptic_deploy.bench.results import read_bench, rle_decode, rle_encode
from panoptic_deploy.bench.run import BenchSpec, run_bench
from panoptic_deploy.bench.runners import combo_support
from panoptic_deploy.compare import as_numpy_outputs
from panoptic_deploy.engines.sidecar import read_sidecar, sidecar_path
from panoptic_deploy.errors import BenchError
from panoptic_deploy.export import prepare_verify_inputs
from panoptic_deploy.modeling import OUTPUT_NAMES
from panoptic_deploy.timing import TimingError, timing_stats


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> pa.Artifacts:
    return pa.benches(tmp_path_factory)


def _schema() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[1] / "src" / "panoptic_deploy" / "schemas" / "bench.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


# ---------------------------------------------------------------------------------------------------------
# Reference


def test_reference_holds_torch_outputs_and_panoptic_results(art: pa.Artifacts) -> None:
    from panoptic_deploy.predict import load_model

    assert art.reference is not None
    ref = read_reference(art.reference)
    assert ref.model == pa.MODEL and ref.input_shape == (1, 3, 64, 96)
    assert [r.name for r in ref.images] == ["coffee", "rocket", "chelsea"]
    assert [r.orig_size for r in ref.images] == [(80, 120), (85, 128), (90, 135)]
    assert all(r.image_size == (64, 96) for r in ref.images)
    # The stored outputs are exactly what the model computes on the prepared image.
    model = load_model(pa.CONFIG, art.weights, pa.OPTS)
    (x,) = prepare_verify_inputs(pa.CONFIG, [art.images[1]], pa.INPUT_HW, pa.OPTS)
    with torch.no_grad():
        fresh = as_numpy_outputs(model(torch.from_numpy(x)))
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(ref.images[1].outputs[name], fresh[name], err_msg=name)
    pan = ref.images[1].panoptic
    assert pan.panoptic_seg.shape == (85, 128) and pan.panoptic_seg.dtype == np.int32
    ids = {int(s["id"]) for s in pan.segments}
    assert set(np.unique(pan.panoptic_seg).tolist()) - {0} == ids


def test_reference_refuses_an_image_of_another_size(art: pa.Artifacts, tmp_path: Path) -> None:
    from PIL import Image

    from panoptic_deploy.bench.reference import write_reference
    from panoptic_deploy.errors import ImageError

    tall = tmp_path / "tall.png"
    Image.new("RGB", (80, 120)).save(tall)  # 96×64 after the resize
    with pytest.raises(ImageError, match=r"tall\.png: pads to network input 96x64 .* exported for 64x96"):
        write_reference(
            pa.CONFIG, art.weights, [art.images[0], tall], tmp_path / "r.npz", pa.INPUT_HW, pa.OPTS
        )
    assert not (tmp_path / "r.npz").exists()


def test_damaged_reference_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ref.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BenchError, match=r"ref\.npz: not a valid reference file"):
        read_reference(bad)
    with pytest.raises(BenchError, match=r"missing\.npz: reference file not found"):
        read_reference(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------------------------------
# Benchmark results


def test_torch_bench_is_schema_valid_and_exact_against_its_reference(art: pa.Artifacts) -> None:
    assert art.bench_torch is not None
    data = json.loads(art.bench_torch.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(_schema()).validate(data)
    result = read_bench(art.bench_torch)
    assert result.to_json() == data  # lossless round trip
    assert (result.model, result.backend, result.precision, result.device) == (
        pa.MODEL,
        "torch",
        "fp32",
        "cpu",
    )
    assert result.settings.iterations == 4 and result.settings.warmup == 1 and result.settings.threads == 2
    # min_seconds 0: the count alone ends the timed phase, after exactly 4 runs.
    assert result.latency.network.count == 4 and result.settings.min_seconds == 0.0
    assert result.settings.stopped_by == "min_iterations+min_seconds"
    for stats in (result.latency.network, result.latency.preprocess, result.latency.postprocess):
        assert stats.count == 4 and 0 < stats.min_ms <= stats.p50_ms <= stats.max_ms
        assert stats.p90_ms is None and stats.p99_ms is None  # 4 runs: too few for either percentile
        assert stats.cov is not None and stats.stdev_ms is not None
        assert stats.cov == pytest.approx(stats.stdev_ms / stats.mean_ms, rel=1e-12)
        assert stats.unstable == (stats.cov > stats.cov_threshold)
    assert result.latency.network.cov_threshold == 0.05  # the schema's default
    # What affects timings, probed at the start: this machine's CPU and load average.
    timing_env = result.environment.timing
    assert timing_env.cpu_model == result.environment.cpu_name
    assert timing_env.load_average is not None and len(timing_env.load_average) == 3
    assert result.latency.end_to_end.mean_ms == pytest.approx(
        result.latency.network.mean_ms
        + result.latency.preprocess.mean_ms
        + result.latency.postprocess.mean_ms
    )
    assert result.throughput_ips == pytest.approx(1000.0 / result.latency.network.mean_ms)
    # Same code, same machine, same threads as the reference: identical outputs and panoptic maps.
    acc = result.accuracy
    assert acc.max_abs_error == 0.0
    assert all(e.mismatches == 0 for e in acc.tensors.values())
    assert acc.panoptic.pixel_agreement == 1.0 and acc.panoptic.images == 3
    assert acc.panoptic.n > 0 and acc.panoptic.pq == 1.0
    ref = read_reference(art.reference)  # type: ignore[arg-type]
    assert acc.reference_sha256 == ref.sha256
    # The file carries the example image's map only (asked for: rocket), and the tensor errors are over the
    # reference's fidelity subset (the schema's 4 >= these 3 images: all of them).
    assert [p.name for p in result.panoptic] == ["rocket"] and acc.tensor_images == 3
    np.testing.assert_array_equal(result.panoptic[0].panoptic_seg, ref.images[1].panoptic.panoptic_seg)
    assert result.panoptic[0].segments == ref.images[1].panoptic.segments
    assert result.engine is None and result.ground_truth is None
    assert result.memory.peak_rss_mb >= result.memory.baseline_rss_mb > 0
    assert result.environment.versions["torch"] == torch.__version__


def test_onnxruntime_bench_records_engine_and_small_errors(art: pa.Artifacts) -> None:
    assert art.bench_ort is not None and art.engine is not None
    data = json.loads(art.bench_ort.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(_schema()).validate(data)
    result = read_bench(art.bench_ort)
    sidecar = read_sidecar(sidecar_path(art.engine))
    assert result.engine is not None
    assert (result.engine.sha256, result.engine.bytes) == (sidecar.engine_sha256, sidecar.engine_bytes)
    assert result.engine.source_onnx == f"{pa.MODEL}.sim.onnx"
    acc = result.accuracy
    max_abs = acc.max_abs_error
    assert max_abs is not None and 0 < max_abs < 1e-3  # FP32 kernels differ from torch's in the last bits
    assert acc.tensors["inst_valid"].mismatches == 0 and acc.tensors["stuff_present"].mismatches == 0
    assert acc.instances_matched == acc.instances_reference > 0
    assert acc.panoptic.pixel_agreement > 0.999
    assert result.notes and "native FP32" in result.notes[0]


def test_invalid_result_files_are_named(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_torch is not None
    data = json.loads(art.bench_torch.read_text(encoding="utf-8"))
    data["precision"] = "fp64"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BenchError, match=r"bad\.json: invalid benchmark result: key 'precision'"):
        read_bench(bad)
    del data["latency"]
    data["precision"] = "fp32"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BenchError, match=r"bad\.json: invalid benchmark result: .*'latency' is a required"):
        read_bench(bad)
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(BenchError, match=r"bad\.json: not valid JSON"):
        read_bench(bad)


def test_images_must_be_the_reference_images(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.reference is not None
    with pytest.raises(BenchError, match=r"reference images \['coffee', 'rocket', 'chelsea'\] differ"):
        run_bench(BenchSpec(
            "torch", "fp32", config=pa.CONFIG, opts=pa.OPTS, reference=art.reference,
            images=art.images[:2], weights=art.weights, device="cpu",
        ))  # fmt: skip


def test_combinations_that_cannot_run_are_refused_with_a_reason(art: pa.Artifacts) -> None:
    assert combo_support("torch", "fp32", "cpu")[0]
    ok, reason = combo_support("torch", "int8", "cpu")
    assert not ok and "no INT8 path" in reason
    ok, reason = combo_support("torch", "fp16", "cpu")
    assert not ok and "FP16 CPU" in reason
    ok, reason = combo_support("torch_compile", "fp32", "cpu")
    assert not ok and "CUDA only" in reason
    assert combo_support("onnxruntime", "fp16")[0]
    from panoptic_deploy.engines.tensorrt import tensorrt_available

    assert combo_support("tensorrt", "fp32") == tensorrt_available()
    assert art.reference is not None
    with pytest.raises(BenchError, match="cannot run this benchmark here: PyTorch has no INT8 path"):
        run_bench(BenchSpec("torch", "int8", config=pa.CONFIG, reference=art.reference, device="cpu"))


def test_ground_truth_pq(art: pa.Artifacts, tmp_path: Path) -> None:
    """Ground truth = the torch reference's own panoptic maps: PQ 1; then one segment removed from the
    ground truth (its pixels void): still PQ 1 on the others, its prediction ignored (> half on void)."""
    from panoptic_deploy.categories import COCO_CATEGORIES
    from panoptic_deploy.panoptic_format import (
        PanopticAnnotation,
        SegmentInfo,
        segments_from_model_output,
        write_panoptic_json,
        write_panoptic_png,
    )

    assert art.reference is not None and art.bench_torch is not None
    ref = read_reference(art.reference)
    annotations = []
    for k, r in enumerate(ref.images):
        seg = r.panoptic.panoptic_seg.copy()
        infos = list(segments_from_model_output(r.panoptic.segments))
        if k == 0:
            dropped = infos.pop()
            seg[seg == dropped.id] = 0
        infos = [SegmentInfo(s.id, s.category_id, False, int((seg == s.id).sum())) for s in infos]
        write_panoptic_png(tmp_path / "gt" / f"{r.name}.png", seg)
        annotations.append(PanopticAnnotation(k, f"{r.name}.png", tuple(infos)))
    write_panoptic_json(tmp_path / "gt.json", annotations, COCO_CATEGORIES)
    result = run_bench(BenchSpec(
        "torch", "fp32", config=pa.CONFIG, opts=pa.OPTS, reference=art.reference, weights=art.weights,
        device="cpu", warmup=0, iterations=1, min_seconds=0.4, threads=2, gt_json=tmp_path / "gt.json",
        gt_dir=tmp_path / "gt",
    ))  # fmt: skip
    # Count and time: one run would do, but the timed phase lasts at least 0.4 s.
    assert result.settings.timed_seconds >= 0.4 and result.settings.stopped_by == "min_iterations+min_seconds"
    net = result.latency.network
    assert net.count >= 1 and net.count * net.min_ms <= 1000 * result.settings.timed_seconds
    gt = result.ground_truth
    assert gt is not None and gt.num_images == 3
    assert (gt.all.pq, gt.all.sq, gt.all.rq) == (1.0, 1.0, 1.0)
    assert gt.all.n == gt.things.n + gt.stuff.n > 0
    with pytest.raises(BenchError, match="needs both gt_json and gt_dir"):
        run_bench(
            BenchSpec(
                "torch", "fp32", config=pa.CONFIG, reference=art.reference, gt_json=tmp_path / "gt.json"
            )
        )


# ---------------------------------------------------------------------------------------------------------
# Building blocks


def test_latency_statistics_by_hand() -> None:
    stats = timing_stats([4.0, 1.0, 3.0, 2.0], 0.5)
    assert (stats.mean_ms, stats.p50_ms, stats.min_ms, stats.max_ms, stats.count) == (2.5, 2.5, 1.0, 4.0, 4)
    # sample stdev of 1, 2, 3, 4: sqrt(5 / 3); CoV = that / 2.5 = 0.5164 > 0.5: flagged
    stdev = (5 / 3) ** 0.5
    assert stats.stdev_ms == pytest.approx(stdev) and stats.cov == pytest.approx(stdev / 2.5)
    assert stats.unstable and not timing_stats([4.0, 1.0, 3.0, 2.0], 0.52).unstable
    assert stats.p90_ms is None and stats.p99_ms is None  # 4 samples: no percentile above the median
    with pytest.raises(TimingError, match="no samples"):
        timing_stats([])


def test_run_length_round_trip() -> None:
    rng = np.random.default_rng(3)
    seg = np.repeat(rng.integers(0, 5, (6, 4)), 3, axis=1).astype(np.int32)  # runs of three
    code = rle_encode(seg)
    pairs = np.asarray(code.split(), np.int64).reshape(-1, 2)
    assert pairs[:, 1].sum() == seg.size and (pairs[:, 1] >= 1).all()
    np.testing.assert_array_equal(rle_decode(code, 6, 12), seg)
    assert rle_encode(np.array([[7, 7, 0], [0, 0, 7]])) == "7 2 0 3 7 1"
    with pytest.raises(BenchError, match="covers 6 pixels"):
        rle_decode("7 2 0 3 7 1", 2, 4)


def test_compile_falls_back_to_the_heads_when_the_whole_network_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.compile itself is replaced: compiling a module "fails" at its first call, a function compiles."""
    from panoptic_deploy.bench import runners as bench

    class CodegenError(RuntimeError):
        pass

    class Net(torch.nn.Module):
        def forward_heads(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

        def decode(self, heads: torch.Tensor) -> torch.Tensor:
            return heads * 2

    modes: list[str] = []

    def fake_compile(fn: Any, mode: str = "default") -> Any:
        modes.append(mode)
        if isinstance(fn, torch.nn.Module):

            def fail(x: torch.Tensor) -> torch.Tensor:
                raise CodegenError("list indices must be integers\nsecond line")

            return fail
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    notes: list[str] = []
    network = bench._CompiledNetwork(Net(), notes, "reduce-overhead")  # type: ignore[arg-type]
    x = torch.arange(3.0)
    assert network(x).tolist() == [2.0, 4.0, 6.0]
    assert network(x).tolist() == [2.0, 4.0, 6.0]
    assert modes == ["reduce-overhead", "reduce-overhead"]  # the whole network, then forward_heads
    assert notes == [
        "torch.compile of the whole network failed (CodegenError: list indices must be integers); compiled "
        "forward_heads (backbone, FPN, heads) only, the fixed-size decode runs eagerly"
    ]
    network.fn = lambda x: (_ for _ in ()).throw(CodegenError("again"))
    with pytest.raises(CodegenError, match="again"):
        network(x)


def test_bad_timing_policy_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"^timing: min_seconds must be >= 0, got -1"):
        run_bench(BenchSpec("torch", "fp32", "no.yaml", tmp_path / "none.npz", min_seconds=-1))


def test_unknown_compile_mode_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"^compile mode 'fast' is not one of default, reduce-overhead, "):
        run_bench(BenchSpec(
            "torch_compile", "fp32", config="no.yaml", reference=tmp_path / "none.npz", compile_mode="fast"
        ))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Storage that scales: raw outputs of a fidelity subset, panoptic maps as COCO panoptic PNG + JSON


def _random_panoptic(rng: np.random.Generator, name: str) -> Any:
    from panoptic_deploy.bench.results import ImagePanoptic
    from panoptic_deploy.categories import COCO

    height, width = (int(v) for v in rng.integers(5, 40, 2))
    ids = rng.choice(rng.integers(1, 2**24 - 1, 6), (height, width)).astype(np.int32)
    ids[rng.random((height, width)) < 0.2] = 0  # void
    segments = []
    for seg_id in sorted(set(np.unique(ids).tolist()) - {0}):
        isthing = bool(rng.integers(0, 2))
        # contiguous ids as the model writes them: things 0..79, stuff 1..53 (0 is the stuff head's "things")
        category = int(rng.integers(0, 80)) if isthing else int(rng.integers(1, 54))
        dataset_id = COCO.dataset_id(category, isthing)
        segments.append({
            "id": seg_id, "category_id": category, "dataset_category_id": dataset_id,
            "coco_category_id": dataset_id, "isthing": isthing,
            "score": float(rng.random()) if isthing else None, "area": int((ids == seg_id).sum()),
            "instance_id": int(rng.integers(0, 100)) if isthing else None,
        })  # fmt: skip
    return ImagePanoptic(name, ids, tuple(segments))


def test_panoptic_set_round_trips_exactly_and_is_coco_panoptic(tmp_path: Path) -> None:
    from panoptic_deploy.bench.panoptic_store import read_panoptic_set, write_panoptic_set
    from panoptic_deploy.categories import COCO
    from panoptic_deploy.panoptic_format import load_panoptic_json, read_panoptic_png

    rng = np.random.default_rng()
    images = [_random_panoptic(rng, f"im{k}") for k in range(int(rng.integers(2, 5)))]
    path = write_panoptic_set(tmp_path / "set", images, COCO)
    back = read_panoptic_set(tmp_path / "set")
    assert [b.name for b in back] == [i.name for i in images]
    for mine, theirs in zip(back, images, strict=True):
        np.testing.assert_array_equal(mine.panoptic_seg, theirs.panoptic_seg)
        assert mine.panoptic_seg.dtype == np.int32 and mine.segments == theirs.segments
    # A COCO panoptic dataset in its own right: dataset ids, pixel areas, PNG ids.
    coco = load_panoptic_json(path, require_categories=True)
    for ann, image in zip(coco.annotations, images, strict=True):
        assert [(s.id, s.category_id, s.area) for s in ann.segments_info] == [
            (s["id"], s["dataset_category_id"], s["area"]) for s in image.segments
        ]
        np.testing.assert_array_equal(read_panoptic_png(tmp_path / "set" / ann.file_name), image.panoptic_seg)
    # Named images, in the order asked; a missing one or an incomplete set is named.
    names = [images[-1].name, images[0].name]
    assert [b.name for b in read_panoptic_set(tmp_path / "set", names)] == names
    with pytest.raises(BenchError, match=r"panoptic\.json: no panoptic map of image 'nope'"):
        read_panoptic_set(tmp_path / "set", ["nope"])
    path.unlink()
    with pytest.raises(BenchError, match=r"set: panoptic maps incomplete or missing \(no panoptic\.json\)"):
        read_panoptic_set(tmp_path / "set")


def test_fidelity_subset_keeps_pq_exactly_and_the_bench_file_small(art: pa.Artifacts, tmp_path: Path) -> None:
    """Raw outputs of the first image only: the PQ against torch FP32 is over every image and equals the
    full reference's to the last bit; the tensor errors are over the subset."""
    from panoptic_deploy.bench.panoptic_store import read_panoptic_set
    from panoptic_deploy.bench.reference import reference_panoptic_dir, write_reference

    assert art.reference is not None and art.bench_torch is not None
    small = tmp_path / "small.npz"
    ref = write_reference(pa.CONFIG, art.weights, art.images, small, pa.INPUT_HW, pa.OPTS, fidelity_images=1)
    assert [r.outputs is not None for r in ref.images] == [True, False, False]
    full = read_reference(art.reference)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(ref.images[0].outputs[name], full.images[0].outputs[name])  # type: ignore[index]
    # 2 of 3 images' raw outputs gone: the .npz shrinks by about that much (the maps are PNGs beside it).
    assert small.stat().st_size < 0.5 * Path(art.reference).stat().st_size
    assert reference_panoptic_dir(small) == tmp_path / "small.panoptic"
    for mine, theirs in zip(ref.images, full.images, strict=True):
        np.testing.assert_array_equal(mine.panoptic.panoptic_seg, theirs.panoptic.panoptic_seg)
        assert mine.panoptic.segments == theirs.panoptic.segments

    result = run_bench(BenchSpec(
        "torch", "fp32", config=pa.CONFIG, opts=pa.OPTS, reference=small, weights=art.weights, device="cpu",
        warmup=0, iterations=1, min_seconds=0.0, threads=2, panoptic_dir=tmp_path / "maps",
        example_image="rocket.png", output=tmp_path / "b.json",
    ))  # fmt: skip
    before = read_bench(art.bench_torch)
    assert result.accuracy.panoptic == before.accuracy.panoptic  # same PQ, SQ, RQ, pixel agreement, images
    assert result.accuracy.tensor_images == 1 and before.accuracy.tensor_images == 3
    assert [p.name for p in result.panoptic] == ["rocket"]
    maps = read_panoptic_set(tmp_path / "maps")
    assert [m.name for m in maps] == ["coffee", "rocket", "chelsea"]
    for mine, theirs in zip(maps, full.images, strict=True):  # torch FP32 = the reference, image by image
        np.testing.assert_array_equal(mine.panoptic_seg, theirs.panoptic.panoptic_seg)
    with pytest.raises(BenchError, match=r"example image 'nope\.png' is not among the evaluation images"):
        run_bench(BenchSpec("torch", "fp32", pa.CONFIG, small, opts=pa.OPTS, example_image="nope.png"))
