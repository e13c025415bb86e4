"""Category sets: COCO by default, custom COCO-panoptic ``categories`` lists, detectron2 contiguous ids,
errors; and a custom set end to end (predict --categories --coco-json -> pq)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pipeline_artifacts as pa
from panoptic_deploy.categories import (
    COCO,
    NUM_STUFF_CLASSES,
    NUM_THING_CLASSES,
    STUFF_CONTIGUOUS_TO_COCO,
    THING_CONTIGUOUS_TO_COCO,
    Category,
    CategorySet,
    load_category_set,
)
from panoptic_deploy.cli import main
from panoptic_deploy.config import load_config
from panoptic_deploy.dataset import make_dataset, scene_category_set
from panoptic_deploy.errors import PanopticDeployError, PanopticFormatError
from panoptic_deploy.panoptic_format import load_panoptic_json, read_panoptic_png, segments_from_model_output
from panoptic_deploy.pq import compute_pq
from panoptic_deploy.predict import load_model
from panoptic_deploy.weights import write_synthetic_checkpoint

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
SMALL = [
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT",
    "16",
]
HEADS_6_4 = ["MODEL.POSITION_HEAD.THING.NUM_CLASSES", "6", "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES", "5"]

# A Cityscapes-like set, ids out of order and not contiguous, no colours for two of them.
CUSTOM = [
    {"id": 26, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 24, "name": "person", "isthing": 1},
    {"id": 21, "name": "vegetation", "isthing": 0},
    {"id": 23, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
]


# ---------------------------------------------------------------------------------------------------------
# The mapping


def test_coco_is_the_default_and_matches_the_legacy_tables() -> None:
    assert load_category_set(None) is COCO
    assert load_category_set("coco") is COCO
    assert (COCO.num_things, COCO.num_stuff) == (NUM_THING_CLASSES, NUM_STUFF_CLASSES) == (80, 53)
    assert COCO.is_coco
    assert [COCO.dataset_id(c, True) for c in range(80)] == list(THING_CONTIGUOUS_TO_COCO)
    assert {c: COCO.dataset_id(c, False) for c in range(1, 54)} == STUFF_CONTIGUOUS_TO_COCO
    COCO.check_head_sizes(80, 54)
    COCO.check_config(load_config(CONFIG))


def test_custom_set_follows_detectron2_metadata_convention() -> None:
    cats = CategorySet.from_json(CUSTOM, "custom.json")
    assert [c.id for c in cats.categories] == [7, 21, 23, 24, 26]
    assert cats.thing_dataset_id_to_contiguous_id == {24: 0, 26: 1}  # things by id -> 0..T-1
    assert cats.stuff_dataset_id_to_contiguous_id == {7: 1, 21: 2, 23: 3}  # stuff by id -> 1..S (0 = things)
    assert (cats.num_things, cats.num_stuff) == (2, 3)
    assert not cats.is_coco
    for dataset_id in (7, 21, 23, 24, 26):
        contiguous, isthing = cats.contiguous(dataset_id)
        assert cats.dataset_id(contiguous, isthing) == dataset_id
    assert cats.category(1, True).name == "car"
    assert cats.category(3, False).color == (70, 130, 180)
    # Missing colours come from the palette, distinct and not black.
    assert cats.by_id[24].color != (0, 0, 0) and cats.by_id[21].color != (0, 0, 0)
    cats.check_head_sizes(2, 4)


def test_contiguous_ids_outside_the_set_are_errors() -> None:
    cats = CategorySet.from_json(CUSTOM, "custom.json")
    with pytest.raises(PanopticFormatError, match=r"thing category_id 2 is outside 0\.\.1"):
        cats.dataset_id(2, True)
    with pytest.raises(PanopticFormatError, match=r"stuff category_id 0 is outside 1\.\.3"):
        cats.dataset_id(0, False)
    with pytest.raises(PanopticFormatError, match="unknown category id 1 "):
        cats.contiguous(1)


def test_segments_from_model_output_use_the_set() -> None:
    cats = scene_category_set()
    segs = [{"id": 1, "category_id": 2, "isthing": False}, {"id": 2, "category_id": 5, "isthing": True}]
    assert [s.category_id for s in segments_from_model_output(segs, cats)] == [12, 6]
    assert [s.category_id for s in segments_from_model_output(segs)] == [93, 6]  # COCO: blanket, bus


def test_load_full_json_and_bare_list(tmp_path: Path) -> None:
    full = tmp_path / "panoptic.json"
    full.write_text(json.dumps({"images": [], "annotations": [], "categories": CUSTOM}))
    bare = tmp_path / "cats.json"
    bare.write_text(json.dumps(CUSTOM))
    a, b = load_category_set(full), load_category_set(str(bare))
    assert a.categories == b.categories
    assert a.source == str(full)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"images": []}', "no 'categories' list"),
        ('{"categories": 3}', "'categories' must be a list"),
        ("[]", "the category list is empty"),
        ('[{"id": 1, "isthing": 1}, {"id": 1, "isthing": 0}]', "category id 1 listed twice"),
        ('[{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}]', "no stuff category"),
        ('[{"id": 1, "isthing": 0}]', "no thing category"),
        ('[{"id": 0, "isthing": 1}, {"id": 2, "isthing": 0}]', "not a positive integer"),
        ('[{"id": 1, "isthing": 2}, {"id": 2, "isthing": 0}]', "'isthing' must be 0 or 1"),
        ('[{"id": "a", "isthing": 1}]', "'id' must be an integer"),
        ('[{"name": "x", "isthing": 1}]', "missing key 'id'"),
    ],
)
def test_bad_category_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "cats.json"
    path.write_text(content)
    with pytest.raises(PanopticFormatError, match=message) as info:
        load_category_set(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_category_file(tmp_path: Path) -> None:
    with pytest.raises(PanopticFormatError, match="category file not found"):
        load_category_set(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------------------
# Head sizes


def test_head_size_mismatch_is_one_line_naming_both() -> None:
    cats = scene_category_set()
    with pytest.raises(PanopticFormatError) as info:
        cats.check_config(load_config(CONFIG), str(CONFIG))
    msg = str(info.value)
    assert "\n" not in msg
    assert "THING.NUM_CLASSES = 80" in msg and "STUFF.NUM_CLASSES = 54" in msg  # the config's
    assert "generated scenes" in msg and "expects 6 and 5" in msg  # the category set's
    cats.check_config(load_config(CONFIG, HEADS_6_4))
    with pytest.raises(PanopticFormatError, match="expects 80 and 54"):
        COCO.check_config(load_config(CONFIG, HEADS_6_4))


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic weights of the R50 config with 6 thing / 5 stuff channels, and a dataset."""
    root = tmp_path_factory.mktemp("custom")
    weights = root / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, weights, opts=[*SMALL, *HEADS_6_4])
    make_dataset(11, 3, root / "ds", (64, 96))
    return weights, root / "ds"


def test_load_model_checks_head_sizes(scene_model: tuple[Path, Path]) -> None:
    weights, _ = scene_model
    with pytest.raises(PanopticDeployError, match="do not match the category set coco"):
        load_model(CONFIG, weights, [*SMALL, *HEADS_6_4], categories=COCO)
    load_model(CONFIG, weights, [*SMALL, *HEADS_6_4], categories=scene_category_set())


def test_predict_cli_mismatch_is_one_line(
    tmp_path: Path, scene_model: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    weights, ds = scene_model
    image = ds / "images" / "00000.png"
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--no-progress",
               "--output", str(tmp_path / "o"), "--opts", *SMALL, *HEADS_6_4, "--", str(image)])  # fmt: skip
    assert rc == 2  # COCO (the default) does not fit 6 / 5 heads
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "do not match the category set coco" in err


# ---------------------------------------------------------------------------------------------------------
# End to end: predict with the dataset's categories -> one COCO predictions JSON -> pq


def test_predict_coco_json_with_custom_categories_reads_in_pq(
    tmp_path: Path, scene_model: tuple[Path, Path]
) -> None:
    weights, ds = scene_model
    gt_json = ds / "panoptic.json"
    out, pred_json = tmp_path / "pred", tmp_path / "pred.json"
    images = sorted((ds / "images").iterdir())
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--no-progress",
               "--categories", str(gt_json), "--coco-json", str(pred_json), "--output", str(out),
               "--opts", *SMALL, *HEADS_6_4, "--", *map(str, images)])  # fmt: skip
    assert rc == 0
    cats = load_category_set(gt_json)
    pred = load_panoptic_json(pred_json, require_categories=True)
    assert pred.categories == cats.categories
    assert [a.image_id for a in pred.annotations] == ["00000", "00001", "00002"]
    for ann in pred.annotations:
        ids = read_panoptic_png(out / ann.file_name)
        assert {s.id for s in ann.segments_info} == set(np.unique(ids).tolist()) - {0}
        doc = json.loads((out / f"{ann.image_id}.json").read_text())
        for seg, entry in zip(ann.segments_info, doc["segments_info"], strict=True):
            # Per-image JSON: the network's contiguous id + isthing, and the dataset's own id.
            assert seg.category_id == entry["dataset_category_id"] in cats.by_id
            assert cats.contiguous(seg.category_id) == (entry["category_id"], entry["isthing"])
            assert "coco_category_id" not in entry
    result = compute_pq(gt_json, ds / "panoptic", pred_json, out, workers=1)
    assert result.num_images == 3 and result.ignored_predictions == 0
    assert 0.0 <= result.all.pq <= 1.0
    assert main(["pq", "--gt-json", str(gt_json), "--gt-dir", str(ds / "panoptic"),
                 "--pred-json", str(pred_json), "--pred-dir", str(out), "--workers", "1"]) == 0  # fmt: skip


def test_pq_matches_by_image_id_before_file_name(tmp_path: Path) -> None:
    """GT ids are integers; predictions named by stem match by file name only where no id matches."""
    make_dataset(2, 2, tmp_path / "ds", (64, 96))
    gt_json = tmp_path / "ds" / "panoptic.json"
    data = json.loads(gt_json.read_text())
    by_stem = [dict(a, image_id=Path(a["file_name"]).stem) for a in data["annotations"]]
    (tmp_path / "p.json").write_text(json.dumps({"annotations": by_stem}))
    result = compute_pq(
        gt_json, tmp_path / "ds" / "panoptic", tmp_path / "p.json", tmp_path / "ds" / "panoptic", 1
    )
    assert result.all.pq == 1.0 and result.ignored_predictions == 0
    # One annotation by id, the other under a foreign name: an error naming the image.
    (tmp_path / "q.json").write_text(
        json.dumps({"annotations": [data["annotations"][0], dict(by_stem[1], file_name="zzz.png")]})
    )
    with pytest.raises(PanopticFormatError, match="no prediction for image 1"):
        compute_pq(
            gt_json, tmp_path / "ds" / "panoptic", tmp_path / "q.json", tmp_path / "ds" / "panoptic", 1
        )
    # Two predictions with one file-name stem (other folders, other ids): ambiguous, refused by name.
    twin = dict(by_stem[1], image_id="copy", file_name="other/" + by_stem[1]["file_name"])
    (tmp_path / "r.json").write_text(json.dumps({"annotations": [*by_stem, twin]}))
    with pytest.raises(PanopticFormatError, match=r"r\.json: predictions .* have the same file name stem"):
        compute_pq(
            gt_json, tmp_path / "ds" / "panoptic", tmp_path / "r.json", tmp_path / "ds" / "panoptic", 1
        )


def test_category_type_is_unchanged() -> None:
    """The per-category record is the same small dataclass for COCO and custom sets."""
    cat = scene_category_set().by_id[1]
    assert isinstance(cat, Category) and cat.isthing and cat.name == "circle"


# ---------------------------------------------------------------------------------------------------------
# Reference, bench and report carry the model's set


def test_reference_bench_and_report_use_the_models_categories(tmp_path: Path) -> None:
    from panoptic_deploy.bench.reference import read_reference, write_reference
    from panoptic_deploy.bench.results import read_bench
    from panoptic_deploy.bench.run import BenchSpec, run_bench
    from panoptic_deploy.panoptic_format import write_panoptic_json
    from panoptic_deploy.report import write_report

    opts = [*pa.OPTS, *HEADS_6_4]
    weights = tmp_path / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, weights, opts=opts)
    ds = tmp_path / "ds"
    make_dataset(4, 2, ds, pa.INPUT_HW)
    cats = load_category_set(ds / "panoptic.json")
    images = sorted((ds / "images").iterdir())
    with pytest.raises(PanopticDeployError, match="do not match the category set coco"):
        write_reference(CONFIG, weights, images, tmp_path / "coco.npz", pa.INPUT_HW, opts)
    write_reference(CONFIG, weights, images, tmp_path / "ref.npz", pa.INPUT_HW, opts, categories=cats)
    ref = read_reference(tmp_path / "ref.npz")
    assert ref.categories.categories == cats.categories
    for image in ref.images:
        for s in image.panoptic.segments:
            assert cats.dataset_id(s["category_id"], s["isthing"]) == s["dataset_category_id"]

    out = tmp_path / "bench.json"
    result = run_bench(BenchSpec(
        "torch", "fp32", config=CONFIG, opts=opts, reference=tmp_path / "ref.npz", weights=weights,
        device="cpu", warmup=0, iterations=1, threads=2, gt_json=ds / "panoptic.json", gt_dir=ds / "panoptic",
        output=out,
    ))  # fmt: skip
    assert result.accuracy.panoptic.pq == 1.0  # torch FP32 against its own reference
    assert result.ground_truth is not None and result.ground_truth.num_images == 2
    back = read_bench(out)
    assert back.categories is not None and back.categories.categories == cats.categories

    # Ground truth with other categories than the model's: one line naming both.
    other = tmp_path / "other.json"
    data = json.loads((ds / "panoptic.json").read_text())
    write_panoptic_json(other, [], COCO.categories)
    other.write_text(json.dumps(dict(json.loads(other.read_text()), annotations=data["annotations"])))
    with pytest.raises(PanopticDeployError, match="not the model's category set") as info:
        run_bench(BenchSpec(
            "torch", "fp32", config=CONFIG, opts=opts, reference=tmp_path / "ref.npz", weights=weights,
            device="cpu", warmup=0, iterations=1, gt_json=other, gt_dir=ds / "panoptic",
        ))  # fmt: skip
    assert "\n" not in str(info.value)

    summary = write_report([out], tmp_path / "report.md", plots_dir=tmp_path / "plots")
    assert any(Path(p).name.startswith("panoptic") for p in summary.plots)
