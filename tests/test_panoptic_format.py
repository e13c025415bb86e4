"""COCO panoptic format: id <-> RGB encoding, PNG and JSON round trips, malformed JSON, category tables."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from panoptic_deploy.categories import (
    CATEGORY_BY_ID,
    COCO_CATEGORIES,
    NUM_STUFF_CLASSES,
    NUM_THING_CLASSES,
    STUFF_CONTIGUOUS_TO_COCO,
    THING_CONTIGUOUS_TO_COCO,
    coco_id_from_contiguous,
    contiguous_from_coco,
)
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.panoptic_format import (
    ImageInfo,
    PanopticAnnotation,
    SegmentInfo,
    id_to_rgb,
    load_panoptic_json,
    read_panoptic_png,
    rgb_to_id,
    segments_from_model_output,
    write_panoptic_json,
    write_panoptic_png,
)

FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "dcn"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(32))


# ---------------------------------------------------------------------------------------------------------
# PNG


def test_id_encoding_is_r_plus_256g_plus_65536b() -> None:
    rgb = np.array([[[1, 2, 3], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    assert rgb_to_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 2**24 - 1, 0]]
    assert id_to_rgb(np.array([[197121]])).tolist() == [[[1, 2, 3]]]


def test_png_round_trip_keeps_every_id(tmp_path: Path, rng: np.random.Generator) -> None:
    ids = rng.integers(0, 2**24, size=(37, 53))
    ids[0, 0], ids[0, 1] = 0, 2**24 - 1
    path = tmp_path / "sub" / "x.png"
    write_panoptic_png(path, ids)
    back = read_panoptic_png(path)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, ids)
    # The file is an ordinary RGB PNG with the documented channel order.
    with Image.open(path) as img:
        assert img.mode == "RGB"
        px = np.asarray(img)[5, 7].astype(np.int64)
    assert px[0] + 256 * px[1] + 65536 * px[2] == ids[5, 7]
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temporary left behind


def test_write_png_rejects_ids_that_do_not_fit_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(PanopticFormatError, match=r"segment ids must lie in 0..16777215, got 0..16777216"):
        write_panoptic_png(tmp_path / "x.png", np.array([[0, 2**24]]))
    with pytest.raises(PanopticFormatError, match=r"must be 2-D"):
        write_panoptic_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.int64))
    assert list(tmp_path.iterdir()) == []


def test_read_png_single_channel_ids_and_errors(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 7], [9, 255]], np.uint8), mode="L").save(tmp_path / "l.png")
    assert read_panoptic_png(tmp_path / "l.png").tolist() == [[0, 7], [9, 255]]
    with pytest.raises(PanopticFormatError, match=r"nope.png: PNG not found"):
        read_panoptic_png(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(PanopticFormatError, match=r"bad.png: cannot decode PNG"):
        read_panoptic_png(tmp_path / "bad.png")
    Image.new("F", (2, 2)).save(tmp_path / "f.tiff")
    with pytest.raises(PanopticFormatError, match=r"f.tiff: unsupported PNG mode 'F'"):
        read_panoptic_png(tmp_path / "f.tiff")


# ---------------------------------------------------------------------------------------------------------
# JSON


def test_json_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    cats = tuple(COCO_CATEGORIES[i] for i in sorted(rng.choice(len(COCO_CATEGORIES), 5, replace=False)))
    anns = tuple(
        PanopticAnnotation(
            image_id=int(i),
            file_name=f"{int(i):012d}.png",
            segments_info=tuple(
                SegmentInfo(
                    id=int(s),
                    category_id=cats[int(rng.integers(len(cats)))].id,
                    iscrowd=bool(rng.random() < 0.3),
                    area=int(rng.integers(1, 10**6)) if rng.random() < 0.5 else None,
                )
                for s in rng.choice(2**24 - 1, int(rng.integers(0, 6)), replace=False) + 1
            ),
        )
        for i in rng.choice(10**6, 4, replace=False)
    )
    images = tuple(ImageInfo(a.image_id, a.file_name.replace(".png", ".jpg"), 640, 480) for a in anns)
    write_panoptic_json(tmp_path / "p.json", anns, cats, images)
    back = load_panoptic_json(tmp_path / "p.json", require_categories=True)
    assert back.annotations == anns
    assert back.categories == cats
    assert back.images == images
    # Results form: no categories, no images.
    write_panoptic_json(tmp_path / "r.json", anns)
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) == {"annotations"}
    assert load_panoptic_json(tmp_path / "r.json").categories is None


def test_results_form_with_bare_segments_loads(tmp_path: Path) -> None:
    bare = [{"image_id": 3, "file_name": "a.png", "segments_info": [{"id": 4, "category_id": 1}]}]
    for i, data in enumerate(({"annotations": bare}, bare)):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(data))
        loaded = load_panoptic_json(path)
        assert loaded.categories is None
        assert loaded.annotations == (PanopticAnnotation(3, "a.png", (SegmentInfo(4, 1, False, None),)),)
    with pytest.raises(PanopticFormatError, match=r"missing list 'categories'"):
        load_panoptic_json(tmp_path / "0.json", require_categories=True)


def _ann(**changes: Any) -> dict[str, Any]:
    ann: dict[str, Any] = {
        "image_id": 7,
        "file_name": "a.png",
        "segments_info": [{"id": 4, "category_id": 1}],
    }
    ann.update(changes)
    return ann


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"images": []}, r"missing list 'annotations'"),
        ({"annotations": [_ann(file_name=3)]}, r"annotations\[0\]: 'file_name' must be a non-empty string"),
        (
            {"annotations": [{"image_id": 1, "file_name": "a.png"}]},
            r"annotations\[0\]: missing key 'segments_info'",
        ),
        (
            {"annotations": [_ann(segments_info=[{"id": 4}])]},
            r"annotations\[0\] \(image 7\) segments_info\[0\]: missing key 'category_id'",
        ),
        (
            {"annotations": [_ann(segments_info=[{"id": "4", "category_id": 1}])]},
            r"segments_info\[0\]: 'id' must be an integer, got '4'",
        ),
        (
            {"annotations": [_ann(segments_info=[{"id": 4, "category_id": 1, "iscrowd": 2}])]},
            r"'iscrowd' must be 0 or 1, got 2",
        ),
        ({"annotations": [_ann(), _ann()]}, r"image_id 7 has more than one annotation"),
        (
            {"annotations": [_ann(segments_info=[{"id": 4, "category_id": 1}, {"id": 4, "category_id": 2}])]},
            r"image 7 \(a.png\): segment id 4 listed twice",
        ),
        (
            {"annotations": [_ann(segments_info=[{"id": 0, "category_id": 1}])]},
            r"image 7 \(a.png\): segment id 0 is reserved for VOID",
        ),
        (
            {"annotations": [], "categories": [{"id": 1, "isthing": 1}, {"id": 1, "isthing": 1}]},
            r"category id 1 listed twice",
        ),
        ({"annotations": [], "categories": [{"id": 1}]}, r"categories\[0\]: missing key 'isthing'"),
    ],
)
def test_malformed_json_raises_one_clear_error(tmp_path: Path, data: Any, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"^" + str(path).replace(".", r"\.") + ": .*" + message):
        load_panoptic_json(path)


def test_unreadable_json_files(tmp_path: Path) -> None:
    with pytest.raises(PanopticFormatError, match=r"x.json: JSON file not found"):
        load_panoptic_json(tmp_path / "x.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(PanopticFormatError, match=r"x.json: not valid JSON"):
        load_panoptic_json(tmp_path / "x.json")


# ---------------------------------------------------------------------------------------------------------
# Categories


def test_category_tables_match_spec_appendix_a() -> None:
    assert (len(COCO_CATEGORIES), NUM_THING_CLASSES, NUM_STUFF_CLASSES) == (133, 80, 53)
    assert sum(c.isthing for c in COCO_CATEGORIES) == 80
    assert [c.id for c in COCO_CATEGORIES] == sorted({c.id for c in COCO_CATEGORIES})
    # Spot values from the spec's tables.
    assert THING_CONTIGUOUS_TO_COCO[0] == 1 and CATEGORY_BY_ID[1].name == "person"
    assert THING_CONTIGUOUS_TO_COCO[11] == 13 and CATEGORY_BY_ID[13].name == "stop sign"
    assert THING_CONTIGUOUS_TO_COCO[60] == 67 and CATEGORY_BY_ID[67].name == "dining table"
    assert THING_CONTIGUOUS_TO_COCO[79] == 90 and CATEGORY_BY_ID[90].name == "toothbrush"
    assert STUFF_CONTIGUOUS_TO_COCO[1] == 92 and CATEGORY_BY_ID[92].name == "banner"
    assert STUFF_CONTIGUOUS_TO_COCO[40] == 187 and CATEGORY_BY_ID[187].name == "sky"
    assert STUFF_CONTIGUOUS_TO_COCO[53] == 200 and CATEGORY_BY_ID[200].name == "rug"
    assert 0 not in STUFF_CONTIGUOUS_TO_COCO  # the merged "things" channel has no COCO id
    # Things sorted by COCO id, all below every stuff id.
    assert list(THING_CONTIGUOUS_TO_COCO) == sorted(THING_CONTIGUOUS_TO_COCO)
    assert max(THING_CONTIGUOUS_TO_COCO) < min(STUFF_CONTIGUOUS_TO_COCO.values())
    # Colours: fixed and distinct.
    assert len({c.color for c in COCO_CATEGORIES}) == 133
    assert all(all(0 <= v <= 255 for v in c.color) for c in COCO_CATEGORIES)


def test_contiguous_coco_round_trip() -> None:
    for c in range(NUM_THING_CLASSES):
        coco = coco_id_from_contiguous(c, True)
        assert CATEGORY_BY_ID[coco].isthing
        assert contiguous_from_coco(coco) == (c, True)
    for c in range(1, NUM_STUFF_CLASSES + 1):
        coco = coco_id_from_contiguous(c, False)
        assert not CATEGORY_BY_ID[coco].isthing
        assert contiguous_from_coco(coco) == (c, False)
    with pytest.raises(PanopticFormatError, match=r"thing category_id 80 is outside 0..79"):
        coco_id_from_contiguous(80, True)
    with pytest.raises(PanopticFormatError, match=r"stuff category_id 0 is outside 1..53"):
        coco_id_from_contiguous(0, False)
    with pytest.raises(PanopticFormatError, match=r"unknown COCO panoptic category id 12"):
        contiguous_from_coco(12)


def test_segments_from_model_output_maps_to_coco_ids() -> None:
    info = json.loads((FIXTURES / "astronaut.segments.json").read_text())["segments_info"]
    segs = segments_from_model_output(info)
    assert [s.id for s in segs] == [d["id"] for d in info]
    for s, d in zip(segs, info, strict=True):
        table = THING_CONTIGUOUS_TO_COCO if d["isthing"] else STUFF_CONTIGUOUS_TO_COCO
        assert s.category_id == table[d["category_id"]]
        assert (s.iscrowd, s.area) == (False, None)
    # The first astronaut segment is contiguous thing 45 = COCO 51 (bowl); the last is stuff 44 = 191.
    assert (segs[0].category_id, segs[-1].category_id) == (51, 191)
    with pytest.raises(PanopticFormatError, match=r"segments\[0\] \(id 3\): stuff category_id 54 is outside"):
        segments_from_model_output([{"id": 3, "category_id": 54, "isthing": False}])
