"""Size buckets (config ``model.input_sizes: {buckets: [[H, W], ...]}``): the one image -> network input
rule (geometry.padded_input_size), the plan's branches, the jobs' padding into the bucket (reference and
benchmark on the tiny model), and a dry run of a many-size image set through Snakemake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline_artifacts as pa
from panoptic_deploy.errors import ConfigError, ImageError, NoBucketError
from panoptic_deploy.geometry import padded_input_size, padded_shape, resized_shape, smallest_bucket
from panoptic_deploy.plan import plan
from test_plan import config_for
from test_workflow import TINY_CONFIG, _combined, _write_config, job_counts, make_workdir, snakemake

# ---------------------------------------------------------------------------------------------------------
# The rule


def test_smallest_bucket_is_the_least_area_that_holds_the_size() -> None:
    buckets = [(416, 672), (672, 416), (416, 416), (480, 640)]
    assert smallest_bucket((416, 416), buckets) == (416, 416)
    assert smallest_bucket((416, 448), buckets) == (416, 672)  # 279552 px < 480×640 = 307200
    assert smallest_bucket((448, 448), buckets) == (480, 640)
    assert smallest_bucket((448, 416), buckets) == (672, 416)
    assert smallest_bucket((704, 416), buckets) is None
    # Equal areas: the first listed.
    assert smallest_bucket((416, 416), [(416, 672), (672, 416)]) == (416, 672)
    assert smallest_bucket((416, 416), [(672, 416), (416, 672)]) == (672, 416)


def test_padded_input_size_with_buckets_against_brute_force() -> None:
    rng = np.random.default_rng()
    buckets = [tuple(int(v) for v in 32 * rng.integers(2, 12, 2)) for _ in range(4)]
    for _ in range(300):
        # Sides from 8: a 1-pixel side can exceed the aspect ratio the test resize allows (798x1 -> 300x0),
        # which is an ImageError of its own (tested with the bad inputs), not a bucket question.
        height, width = (int(v) for v in rng.integers(8, 900, 2))
        padded = padded_shape(*resized_shape(height, width, 64, 300))
        assert padded_input_size(height, width, 64, 300) == padded
        holding = [b for b in buckets if b[0] >= padded[0] and b[1] >= padded[1]]
        if not holding:
            with pytest.raises(NoBucketError, match=rf"{width}×{height} pixels .* {padded[0]}x{padded[1]}"):
                padded_input_size(height, width, 64, 300, buckets)
            continue
        got = padded_input_size(height, width, 64, 300, buckets)
        area = min(h * w for h, w in holding)
        assert got == next(b for b in holding if b[0] * b[1] == area)


@pytest.mark.parametrize(
    ("sizes", "error"),
    [
        ({"buckets": [[416, 608], [608, 416]]}, None),
        ({"buckets": [[416, 600]]}, "600 is not a multiple of 32"),
        ({"buckets": [[416]]}, "[416] is too short"),
        ({"buckets": []}, "[] should be non-empty"),
        ({"buckets": [[64, 64], [64, 64]]}, "has non-unique elements"),
        ({"bucket": [[64, 64]]}, "is not valid under any of the given schemas"),
    ],
)
def test_the_schema_checks_the_buckets(sizes: Any, error: str | None) -> None:
    import jsonschema
    import yaml
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load((pa.ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text("utf-8"))
    found = best_match(jsonschema.Draft202012Validator(schema).iter_errors({"model": {"input_sizes": sizes}}))
    if error is None:
        assert found is None
    else:
        assert found is not None and error in found.message, found


# ---------------------------------------------------------------------------------------------------------
# The plan


def test_buckets_plan_one_branch_per_bucket_used(tmp_path: Path) -> None:
    # eval0 300×200 and eval1 330×220 resize to 64×96, eval2 200×300 to 96×64 (config_for's images).
    buckets = [[64, 128], [128, 64], [96, 96], [256, 256]]
    p = plan(config_for(tmp_path, model={"input_sizes": {"buckets": buckets}}))
    assert {b: (br.height, br.width, len(br.images)) for b, br in p.branches.items()} == {
        "m_64x128": (64, 128, 2),  # 8192 px beats 96×96 = 9216
        "m_128x64": (128, 64, 1),
    }  # no image needs 96×96 or 256×256: no branch
    assert p.model_of("m_64x128").bucket_list == buckets
    assert plan(config_for(tmp_path)).model_of("m_64x96").bucket_list is None
    with pytest.raises(ConfigError) as info:
        plan(config_for(tmp_path, model={"input_sizes": {"buckets": [[64, 128]]}}))
    assert str(info.value) == (
        f"config key 'model.input_sizes': evaluation image '{tmp_path / 'eval' / 'eval2.png'}': image of "
        "200×300 pixels (W×H) pads to network input 96x64 (H x W), which none of the size buckets 64x128 "
        "holds"
    )


def test_model_sheet_rows_take_the_buckets(tmp_path: Path) -> None:
    sheet = tmp_path / "models.tsv"
    sheet.write_text(f"name\tconfig\tcheckpoint\topts\na\t{pa.CONFIG}\t\tINPUT.MIN_SIZE_TEST 64 "
                     "INPUT.MAX_SIZE_TEST 96\n", encoding="utf-8")  # fmt: skip
    p = plan(config_for(tmp_path, models=str(sheet), model={"input_sizes": {"buckets": [[96, 96]]}}))
    assert {b: len(br.images) for b, br in p.branches.items()} == {"a_96x96": 3}


# ---------------------------------------------------------------------------------------------------------
# The jobs: pre-processing, reference and benchmark pad into the bucket


def test_prepare_pads_into_the_bucket_and_refuses_another(tmp_path: Path) -> None:
    from panoptic_deploy.modeling.panoptic_fcn import InputParams
    from panoptic_deploy.preprocess import prepare_at_size, prepare_image

    rng = np.random.default_rng()
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)  # resizes to 64×90
    params = InputParams(min_size=64, max_size=96)
    own = prepare_at_size(path, params, (64, 96))
    buckets = [(128, 64), (64, 160), (96, 128)]
    into = prepare_at_size(path, params, (64, 160), buckets)
    assert into.tensor.shape == (1, 3, 64, 160) and into.image_size == own.image_size == (64, 90)
    assert torch.equal(into.tensor[..., :96], own.tensor) and not into.tensor[..., 96:].any()
    bgr = np.ascontiguousarray(np.asarray(Image.open(path))[:, :, ::-1])
    assert torch.equal(prepare_image(bgr, params, buckets).tensor,
                       into.tensor)  # fmt: skip
    with pytest.raises(ImageError, match=r"noise\.png: pads to network input 64x160 .* exported for 96x128"):
        prepare_at_size(path, params, (96, 128), buckets)
    with pytest.raises(NoBucketError, match=r"noise\.png: image of 70×50 pixels .* 64x96 .* 32x320 holds$"):
        prepare_at_size(path, params, (64, 96), [(32, 320)])


def test_bucket_reference_and_bench(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from panoptic_deploy.bench.reference import read_reference
    from panoptic_deploy.bench.run import BenchSpec, run_bench
    from panoptic_deploy.cli import main
    from panoptic_deploy.compare import as_numpy_outputs
    from panoptic_deploy.predict import load_model
    from panoptic_deploy.preprocess import prepare_at_size

    art = pa.reference(tmp_path_factory)
    per_size = read_reference(art.reference)  # type: ignore[arg-type]
    buckets = [[64, 128], [128, 64]]
    path = tmp_path / "bucket.npz"
    # Through the CLI: without --input-hw the size is the first image's bucket (64×96 -> 64×128).
    model_args = ["--config", str(pa.CONFIG), "--weights", str(art.weights), "--opts", *pa.OPTS]
    assert main(["reference", *model_args, "--output", str(path), "--bucket", "64", "128", "--bucket", "128",
                 "64", "--threads", "2", "--", *map(str, art.images)]) == 0  # fmt: skip
    ref = read_reference(path)
    assert ref.buckets == ((64, 128), (128, 64)) and per_size.buckets is None
    assert ref.input_shape == (1, 3, 64, 128)
    model = load_model(pa.CONFIG, art.weights, pa.OPTS)
    for mine, theirs in zip(ref.images, per_size.images, strict=True):
        assert (mine.image_size, mine.orig_size) == (theirs.image_size, theirs.orig_size)
        assert mine.panoptic.panoptic_seg.shape == theirs.panoptic.panoptic_seg.shape == mine.orig_size
        x = prepare_at_size(mine.path, model.input_params, (64, 128), ref.buckets).tensor
        with torch.no_grad():
            stuff = as_numpy_outputs(model(x))["stuff_probs"]
        np.testing.assert_array_equal(mine.outputs["stuff_probs"], stuff)
        assert stuff.shape[-2:] == (16, 32)  # stride 4 of the 64×128 bucket
    result = run_bench(BenchSpec("torch", "fp32", config=pa.CONFIG, reference=path, weights=art.weights,
                                 opts=pa.OPTS, device="cpu", warmup=0, iterations=1, threads=2))  # fmt: skip
    assert result.accuracy.max_abs_error == 0.0 and result.accuracy.panoptic.pixel_agreement == 1.0
    meta = json.loads(str(np.load(path)["meta"]))
    assert meta["buckets"] == buckets and meta["input_shape"] == [1, 3, 64, 128]


# ---------------------------------------------------------------------------------------------------------
# The workflow: 40 images of 10 padded sizes -> 2 branches


def _many_sizes(folder: Path, rng: np.random.Generator) -> set[tuple[int, int]]:
    """40 tiny images, 4 of each of 10 padded sizes under test resize 64/256: landscape 64×W and portrait
    H×64 for W, H in 96..224 (multiples of 32); random widths inside each size class. Returns the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = set()
    for k in range(40):
        long_side = 96 + 32 * (k % 5) - int(rng.integers(0, 31))  # pads up to 96 + 32·(k % 5)
        height, width = (64, long_side) if k % 10 < 5 else (long_side, 64)
        Image.new("L", (width, height), int(rng.integers(0, 256))).save(folder / f"im{k:02d}.png")
        sizes.add(padded_input_size(height, width, 64, 256))
    return sizes


def test_forty_images_of_ten_sizes_plan_two_bucket_branches(tmp_path: Path) -> None:
    rng = np.random.default_rng()
    workdir = make_workdir(tmp_path / "w", eval_images=())
    assert len(_many_sizes(workdir / "images" / "eval", rng)) == 10
    cfg: dict[str, Any] = json.loads(json.dumps(TINY_CONFIG))
    cfg["model"]["opts"] = ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 256]
    counts = {}
    for name, sizes in (("auto", "auto"), ("buckets", {"buckets": [[64, 224], [224, 64]]})):
        cfg["model"]["input_sizes"] = sizes
        _write_config(workdir, cfg)
        proc = snakemake(workdir, "--dry-run", "--cores", "1", "results/report.md")
        assert proc.returncode == 0, _combined(proc)
        counts[name] = job_counts(proc.stdout)
    per_branch = {"export_onnx": 1, "simplify_onnx": 1, "fp16_onnx": 1, "calibration_cache": 1,
                  "int8_onnx": 1, "engine_onnxruntime": 3, "reference_outputs": 1, "bench_torch": 1,
                  "bench_engine": 3, "int8_debug": 1}  # fmt: skip
    once = {"synthetic_weights": 1, "verdict": 1, "report": 1}
    assert counts["auto"] == {**{rule: 10 * n for rule, n in per_branch.items()}, **once}
    assert counts["buckets"] == {**{rule: 2 * n for rule, n in per_branch.items()}, **once}
    assert sum(counts["auto"].values()) == 143 and sum(counts["buckets"].values()) == 31
    assert not (workdir / "results").exists()
