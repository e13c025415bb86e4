"""``panoptic-deploy make-dataset``: deterministic, valid, non-trivial generated panoptic scenes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from panoptic_deploy.cli import main
from panoptic_deploy.dataset import (
    MIN_THING_AREA,
    SCENE_CATEGORIES,
    STUFF_IDS,
    THING_IDS,
    DatasetError,
    generate_scene,
    make_dataset,
    parse_size,
    scene_category_set,
)
from panoptic_deploy.panoptic_format import load_panoptic_json, read_panoptic_png
from panoptic_deploy.pq import compute_pq

SMALL = (96, 128)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 scenes at the default size (256x320)."""
    out = tmp_path_factory.mktemp("ds") / "scenes"
    make_dataset(7, 24, out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    make_dataset(5, 3, tmp_path / "a", SMALL)
    make_dataset(5, 3, tmp_path / "b", SMALL)
    make_dataset(6, 3, tmp_path / "c", SMALL)
    a, b, c = (_file_hashes(tmp_path / n) for n in "abc")
    assert len(a) == 3 + 3 + 1
    assert a == b
    assert set(a) == set(c)
    differing = [name for name in a if a[name] != c[name]]
    assert len(differing) == len(a)  # every image, every PNG and the JSON (its seed) differ


def test_scene_depends_on_seed_and_index_only(tmp_path: Path) -> None:
    make_dataset(5, 2, tmp_path / "two", SMALL)
    make_dataset(5, 4, tmp_path / "four", SMALL)
    two, four = _file_hashes(tmp_path / "two"), _file_hashes(tmp_path / "four")
    for name, digest in two.items():
        if name != "panoptic.json":  # its info.count and lists differ
            assert four[name] == digest


def test_pixels_are_pinned() -> None:
    """Pixel content and segments of three scenes, pinned: a change here changes every generated dataset
    (and, failing on one machine only, would show a machine dependence)."""
    digest = hashlib.sha256()
    for index in range(3):
        scene = generate_scene(0, index)
        digest.update(scene.image.tobytes())
        digest.update(scene.id_map.astype("<u4").tobytes())
        digest.update(json.dumps(scene.segments, sort_keys=True).encode())
    assert digest.hexdigest() == PINNED


PINNED = "9c402d2ad79f12a6f512101caf17d3142e656a389cae2cbfb1a46f8413fee1c8"


def test_jpeg_option(tmp_path: Path) -> None:
    make_dataset(5, 2, tmp_path / "j", SMALL, image_format="jpg")
    data = json.loads((tmp_path / "j" / "panoptic.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["00000.jpg", "00001.jpg"]
    for im in data["images"]:
        with Image.open(tmp_path / "j" / "images" / im["file_name"]) as img:
            assert img.format == "JPEG" and img.size == (SMALL[1], SMALL[0])


# ---------------------------------------------------------------------------------------------------------
# Validity


def test_layout_and_every_pixel_in_exactly_one_listed_segment(dataset: Path) -> None:
    data = json.loads((dataset / "panoptic.json").read_text())
    assert set(data) == {"info", "images", "annotations", "categories"}
    assert data["info"]["seed"] == 7 and data["info"]["count"] == 24 and data["info"]["size"] == [256, 320]
    assert data["categories"] == [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
        for c in SCENE_CATEGORIES
    ]
    assert len(data["images"]) == len(data["annotations"]) == 24
    for im, ann in zip(data["images"], data["annotations"], strict=True):
        assert im["id"] == ann["image_id"]
        assert Path(im["file_name"]).stem == Path(ann["file_name"]).stem
        with Image.open(dataset / "images" / im["file_name"]) as img:
            assert img.mode == "RGB" and img.size == (im["width"], im["height"]) == (320, 256)
        ids = read_panoptic_png(dataset / "panoptic" / ann["file_name"])
        assert ids.shape == (256, 320)
        assert ids.min() > 0  # no VOID
        segs = ann["segments_info"]
        assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
        assert set(np.unique(ids).tolist()) == {s["id"] for s in segs}
        for s in segs:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == int(mask.sum())
            assert s["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                 int(ys.max() - ys.min() + 1)]  # fmt: skip
            assert s["iscrowd"] == 0
            assert s["category_id"] in THING_IDS + STUFF_IDS
            if s["category_id"] in THING_IDS:
                assert s["area"] >= MIN_THING_AREA
        stuff_cats = [s["category_id"] for s in segs if s["category_id"] in STUFF_IDS]
        assert len(stuff_cats) == len(set(stuff_cats))  # one segment per stuff category


def test_pq_of_ground_truth_against_itself_is_100(dataset: Path) -> None:
    gt = dataset / "panoptic.json"
    result = compute_pq(gt, dataset / "panoptic", gt, dataset / "panoptic", workers=1)
    assert result.num_images == 24
    assert (result.all.pq, result.things.pq, result.stuff.pq) == (1.0, 1.0, 1.0)
    assert (result.things.n, result.stuff.n) == (6, 4)
    load_panoptic_json(gt, require_categories=True)  # strict parser accepts it


# ---------------------------------------------------------------------------------------------------------
# Not trivial: classes, sizes, occlusion, appearance


def _segments(dataset: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads((dataset / "panoptic.json").read_text())
    return [(ann, s) for ann in data["annotations"] for s in ann["segments_info"]]


def test_all_classes_and_a_wide_size_range_occur(dataset: Path) -> None:
    segs = _segments(dataset)
    assert {s["category_id"] for _, s in segs} == set(THING_IDS) | set(STUFF_IDS)
    things = [s for _, s in segs if s["category_id"] in THING_IDS]
    sides = [max(s["bbox"][2], s["bbox"][3]) for s in things]
    assert min(sides) <= 10  # ~8 px objects
    assert max(sides) >= 100  # up to about half of the 256 px side
    assert np.median(sides) >= 16  # most objects are not tiny
    per_image = {}
    for ann, s in segs:
        per_image.setdefault(ann["image_id"], []).append(s)
    assert all(any(s["category_id"] in STUFF_IDS for s in v) for v in per_image.values())
    assert (
        sum(
            len({s["category_id"] for s in v if s["category_id"] in STUFF_IDS}) > 1
            for v in per_image.values()
        )
        > 8
    )


def test_instances_of_one_class_touch_or_occlude_each_other(dataset: Path) -> None:
    """Same-class instances share a boundary (4-neighbours) in several images."""
    data = json.loads((dataset / "panoptic.json").read_text())
    touching_images = 0
    for ann in data["annotations"]:
        ids = read_panoptic_png(dataset / "panoptic" / ann["file_name"]).astype(np.int64)
        cat = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        pairs = set()
        for a, b in ((ids[:, 1:], ids[:, :-1]), (ids[1:, :], ids[:-1, :])):
            edge = a != b
            pairs |= set(zip(a[edge].tolist(), b[edge].tolist(), strict=True))
        if any(cat[p] == cat[q] and cat[p] in THING_IDS for p, q in pairs):
            touching_images += 1
    assert touching_images >= 4


def test_colour_does_not_give_the_class(dataset: Path) -> None:
    """Per class, the mean colours of its segments spread widely (instances get random colours; stuff
    palettes overlap), and different classes overlap in mean colour."""
    data = json.loads((dataset / "panoptic.json").read_text())
    means: dict[int, list[Any]] = {}
    for im, ann in zip(data["images"], data["annotations"], strict=True):
        rgb = np.asarray(Image.open(dataset / "images" / im["file_name"]).convert("RGB"), np.float64)
        ids = read_panoptic_png(dataset / "panoptic" / ann["file_name"])
        for s in ann["segments_info"]:
            means.setdefault(s["category_id"], []).append(rgb[ids == s["id"]].mean(axis=0))
    for cat in THING_IDS:
        spread = np.asarray(means[cat]).std(axis=0)
        assert spread.mean() > 35, (cat, spread)
    # A nearest-class-mean classifier on mean colour is poor for things.
    centres = {c: np.mean(means[c], axis=0) for c in THING_IDS}
    hits = total = 0
    for c in THING_IDS:
        for m in means[c]:
            total += 1
            hits += min(centres, key=lambda k: float(np.sum((centres[k] - m) ** 2))) == c
    assert hits / total < 0.4


# ---------------------------------------------------------------------------------------------------------
# Command line and arguments


def test_cli_writes_a_dataset_and_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["make-dataset", "--seed", "3", "--count", "2", "--output", str(out), "--size", "64x96"]) == 0
    first = _file_hashes(out)
    assert len(first) == 5
    assert main(["make-dataset", "--seed", "3", "--count", "1", "--output", str(out), "--size", "64x96"]) == 2
    assert "not empty" in capsys.readouterr().err
    (out / "images" / "mine.txt").write_text("kept")
    args = ["make-dataset", "--seed", "3", "--count", "1", "--output", str(out), "--size", "64x96", "--force"]
    assert main(args) == 0
    after = _file_hashes(out)
    assert set(after) == {"images/00000.png", "panoptic/00000.png", "panoptic.json", "images/mine.txt"}
    assert after["images/00000.png"] == first["images/00000.png"]


@pytest.mark.parametrize("text", ["256", "0x10", "64x", "axb", "5000x64", "32x64"])
def test_bad_size(text: str) -> None:
    with pytest.raises(DatasetError, match="--size"):
        parse_size(text)


def test_size_parses() -> None:
    assert parse_size("256x320") == (256, 320)
    assert parse_size("320X320") == (320, 320)


def test_bad_count_and_seed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--count"):
        make_dataset(1, 0, tmp_path / "x")
    with pytest.raises(DatasetError, match="--seed"):
        make_dataset(-1, 1, tmp_path / "x")


def test_scene_category_set_mapping() -> None:
    cats = scene_category_set()
    assert cats.thing_dataset_id_to_contiguous_id == {i: k for k, i in enumerate(THING_IDS)}
    assert cats.stuff_dataset_id_to_contiguous_id == {i: k + 1 for k, i in enumerate(STUFF_IDS)}
    assert (cats.num_things, cats.num_stuff) == (6, 4)
