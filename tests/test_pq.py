"""Panoptic quality: every rule of the COCO panoptic API on hand-computed cases, malformed inputs, files."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from panoptic_deploy import cli
from panoptic_deploy.categories import CATEGORY_BY_ID, Category
from panoptic_deploy.cli.tools import run_pq_command
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.panoptic_format import (
    PanopticAnnotation,
    SegmentInfo,
    segments_from_model_output,
    write_panoptic_json,
    write_panoptic_png,
)
from panoptic_deploy.pq import PQResult, PQStat, compute_pq, pq_between, pq_from_arrays

FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "dcn"

PERSON, BICYCLE, TREE, SKY = 1, 2, 184, 187
CATS: tuple[Category, ...] = tuple(CATEGORY_BY_ID[i] for i in (PERSON, BICYCLE, TREE, SKY))
CAT_IDS = [c.id for c in CATS]


def seg(seg_id: int, category_id: int, iscrowd: bool = False, area: int | None = None) -> SegmentInfo:
    return SegmentInfo(id=seg_id, category_id=category_id, iscrowd=iscrowd, area=area)


def row(*ids: int) -> NDArray[np.int64]:
    """A 1 x N id map."""
    return np.array([ids], dtype=np.int64)


def stat_of(
    gt: NDArray[np.int64],
    gt_segs: Sequence[SegmentInfo],
    pred: NDArray[np.int64],
    pred_segs: Sequence[SegmentInfo],
) -> PQStat:
    return pq_from_arrays(gt, gt_segs, pred, pred_segs, CAT_IDS, image="test image")


# ---------------------------------------------------------------------------------------------------------
# Matching rules, hand-computed


def test_perfect_match_is_one() -> None:
    gt = row(1, 1, 2, 2, 2, 0)
    pred = row(7, 7, 9, 9, 9, 0)  # ids differ, pixels and categories agree
    s = stat_of(gt, [seg(1, PERSON), seg(2, SKY)], pred, [seg(7, PERSON), seg(9, SKY)])
    assert s.counts(PERSON) == (1, 0, 0, 1.0)
    assert s.counts(SKY) == (1, 0, 0, 1.0)
    r = PQResult.from_stat(s, CATS, 1)
    assert (r.all.pq, r.all.sq, r.all.rq, r.all.n) == (1.0, 1.0, 1.0, 2)
    assert (r.things.n, r.stuff.n) == (1, 1)


def test_iou_exactly_half_is_not_a_match() -> None:
    # GT 4 px, prediction 2 of them: IoU = 2 / (2 + 4 - 2) = 0.5, not > 0.5.
    gt = row(1, 1, 1, 1)
    pred = row(5, 5, 0, 0)
    s = stat_of(gt, [seg(1, PERSON)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 1, 1, 0.0)


def test_iou_just_above_half_is_a_match() -> None:
    # GT 5 px, prediction 3 of them: IoU = 3 / 5 = 0.6.
    gt = row(1, 1, 1, 1, 1)
    pred = row(5, 5, 5, 0, 0)
    s = stat_of(gt, [seg(1, PERSON)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (1, 0, 0, pytest.approx(0.6, abs=1e-15))


def test_prediction_on_void_leaves_the_union() -> None:
    # GT 4 px + 4 VOID px; prediction covers all 8: IoU = 4 / (8 + 4 - 4 - 4) = 1
    # (it would be 4/8 = 0.5, no match, if VOID pixels stayed in the union).
    gt = row(1, 1, 1, 1, 0, 0, 0, 0)
    pred = row(5, 5, 5, 5, 5, 5, 5, 5)
    s = stat_of(gt, [seg(1, PERSON)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (1, 0, 0, 1.0)


def test_prediction_on_crowd_stays_in_the_union_and_exactly_half_is_a_false_positive() -> None:
    # GT person 4 px + person crowd 4 px; prediction covers all 8:
    # IoU = 4 / (8 + 4 - 4) = 0.5 -> no match; 4 of 8 px on crowd is not MORE than half -> FP; GT -> FN.
    gt = row(1, 1, 1, 1, 2, 2, 2, 2)
    pred = row(5, 5, 5, 5, 5, 5, 5, 5)
    s = stat_of(gt, [seg(1, PERSON), seg(2, PERSON, iscrowd=True)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 1, 1, 0.0)


def test_prediction_more_than_half_on_crowd_of_its_category_is_ignored() -> None:
    # 5 of 9 predicted px on the person crowd -> not an FP; the non-crowd GT is still an FN.
    gt = row(1, 1, 1, 1, 2, 2, 2, 2, 2)
    pred = row(5, 5, 5, 5, 5, 5, 5, 5, 5)
    s = stat_of(gt, [seg(1, PERSON), seg(2, PERSON, iscrowd=True)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 1, 0.0)


def test_crowd_is_never_matched_nor_a_false_negative() -> None:
    # The prediction equals the crowd region: no TP, no FN (crowd), no FP (all on crowd).
    gt = row(2, 2, 2, 2, 0)
    pred = row(5, 5, 5, 5, 0)
    s = stat_of(gt, [seg(2, PERSON, iscrowd=True)], pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 0, 0.0)
    # ... so the category does not count at all.
    r = PQResult.from_stat(s, CATS, 1)
    assert r.all.n == 0
    assert (r.all.pq, r.all.sq, r.all.rq) == (0.0, 0.0, 0.0)


def test_crowd_of_another_category_does_not_excuse_a_prediction() -> None:
    gt = row(2, 2, 2, 2, 0)
    pred = row(5, 5, 5, 5, 0)
    s = stat_of(gt, [seg(2, PERSON, iscrowd=True)], pred, [seg(5, BICYCLE)])
    assert s.counts(BICYCLE) == (0, 1, 0, 0.0)
    assert s.counts(PERSON) == (0, 0, 0, 0.0)


def test_void_and_crowd_add_up_for_the_false_positive_rule() -> None:
    # Prediction 5 px: 2 on VOID + 1 on person crowd + 2 on a bicycle -> 3/5 > 0.5 -> ignored.
    gt = row(0, 0, 2, 3, 3, 3, 3, 3)
    pred = row(5, 5, 5, 5, 5, 0, 0, 0)
    gt_segs = [seg(2, PERSON, iscrowd=True), seg(3, BICYCLE)]
    s = stat_of(gt, gt_segs, pred, [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 0, 0.0)
    assert s.counts(BICYCLE) == (0, 0, 1, 0.0)
    # Exactly half on VOID (2 of 4) is a false positive.
    s = stat_of(row(0, 0, 3, 3), [seg(3, BICYCLE)], row(5, 5, 5, 5), [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 1, 0, 0.0)
    # More than half on VOID (3 of 5) is ignored.
    s = stat_of(row(0, 0, 0, 3, 3), [seg(3, BICYCLE)], row(5, 5, 5, 5, 5), [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 0, 0.0)


def test_only_the_last_crowd_segment_of_a_category_excuses_predictions() -> None:
    # Two person crowds; the API keeps the last one listed (id 3). A prediction on crowd 2 is an FP.
    gt = row(2, 2, 3, 3)
    gt_segs = [seg(2, PERSON, iscrowd=True), seg(3, PERSON, iscrowd=True)]
    s = stat_of(gt, gt_segs, row(5, 5, 0, 0), [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 1, 0, 0.0)
    s = stat_of(gt, gt_segs, row(0, 0, 5, 5), [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 0, 0.0)
    # Listed the other way round, crowd 2 is the one kept.
    s = stat_of(gt, gt_segs[::-1], row(5, 5, 0, 0), [seg(5, PERSON)])
    assert s.counts(PERSON) == (0, 0, 0, 0.0)


def test_different_categories_never_match() -> None:
    gt = row(1, 1, 1, 1)
    pred = row(5, 5, 5, 5)
    s = stat_of(gt, [seg(1, PERSON)], pred, [seg(5, BICYCLE)])
    assert s.counts(PERSON) == (0, 0, 1, 0.0)
    assert s.counts(BICYCLE) == (0, 1, 0, 0.0)


def test_ground_truth_area_comes_from_the_json_like_the_api() -> None:
    # GT 4 px but its JSON says area 6: IoU = 4 / (4 + 6 - 4) = 2/3. A prediction's JSON area is ignored.
    gt = row(1, 1, 1, 1)
    pred = row(5, 5, 5, 5)
    s = stat_of(gt, [seg(1, PERSON, area=6)], pred, [seg(5, PERSON, area=100)])
    tp, fp, fn, iou = s.counts(PERSON)
    assert (tp, fp, fn) == (1, 0, 0)
    assert iou == pytest.approx(2 / 3, abs=1e-15)


def test_averages_count_only_categories_that_occur() -> None:
    # person: GT a (4 px) matched exactly, GT b missed -> TP 1, FN 1, IoU sum 1.
    # sky: one prediction on non-VOID tree GT... tree: FN 1; sky: FP 1. bicycle: absent -> not counted.
    gt = row(1, 1, 1, 1, 2, 2, 3, 3, 3)
    pred = row(5, 5, 5, 5, 0, 0, 6, 6, 6)
    s = stat_of(gt, [seg(1, PERSON), seg(2, PERSON), seg(3, TREE)], pred, [seg(5, PERSON), seg(6, SKY)])
    r = PQResult.from_stat(s, CATS, 1)
    person = r.per_class[PERSON]
    assert (person.tp, person.fp, person.fn) == (1, 0, 1)
    assert person.pq == pytest.approx(1 / 1.5, abs=1e-15)
    assert (person.sq, person.rq) == (1.0, pytest.approx(1 / 1.5, abs=1e-15))
    # SQ is 0 where TP = 0, and such a category still counts in the averages.
    assert (r.per_class[TREE].pq, r.per_class[TREE].sq, r.per_class[TREE].rq) == (0.0, 0.0, 0.0)
    assert (r.per_class[TREE].fn, r.per_class[SKY].fp) == (1, 1)
    assert r.per_class[BICYCLE] == r.per_class[BICYCLE].__class__(0.0, 0.0, 0.0, 0, 0, 0)
    assert (r.all.n, r.things.n, r.stuff.n) == (3, 1, 2)
    assert r.all.pq == pytest.approx((2 / 3) / 3, abs=1e-15)
    assert r.all.sq == pytest.approx(1 / 3, abs=1e-15)
    assert r.all.rq == pytest.approx((2 / 3) / 3, abs=1e-15)
    assert (r.things.pq, r.things.sq) == (pytest.approx(2 / 3, abs=1e-15), 1.0)
    assert (r.stuff.pq, r.stuff.sq, r.stuff.rq) == (0.0, 0.0, 0.0)


def test_things_and_stuff_follow_isthing_of_the_given_categories() -> None:
    gt = row(1, 1)
    s = stat_of(gt, [seg(1, TREE)], row(5, 5), [seg(5, TREE)])
    relabelled = [Category(c.id, c.name, not c.isthing) for c in CATS]  # tree now a "thing"
    r = PQResult.from_stat(s, relabelled, 1)
    assert (r.things.n, r.stuff.n, r.things.pq) == (1, 0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Against a plain per-segment implementation of the same rules, on fresh random inputs


def naive_stat(
    gt: NDArray[np.int64],
    gt_segs: Sequence[SegmentInfo],
    pred: NDArray[np.int64],
    pred_segs: Sequence[SegmentInfo],
) -> dict[int, list[float]]:
    """Straight loops over segment pairs with boolean masks: {category: [tp, fp, fn, iou_sum]}."""
    out = {c: [0.0, 0.0, 0.0, 0.0] for c in CAT_IDS}
    void = gt == 0
    matched_gt, matched_pred = set(), set()
    for g in gt_segs:
        gm = gt == g.id
        g_area = g.area if g.area is not None else int(gm.sum())
        for p in pred_segs:
            pm = pred == p.id
            if g.iscrowd or g.category_id != p.category_id:
                continue
            inter = int((gm & pm).sum())
            union = int(pm.sum()) + g_area - inter - int((pm & void).sum())
            if inter and inter / union > 0.5:
                out[g.category_id][0] += 1
                out[g.category_id][3] += inter / union
                matched_gt.add(g.id)
                matched_pred.add(p.id)
    crowd = {g.category_id: g.id for g in gt_segs if g.iscrowd}
    for g in gt_segs:
        if g.id not in matched_gt and not g.iscrowd:
            out[g.category_id][2] += 1
    for p in pred_segs:
        if p.id in matched_pred:
            continue
        pm = pred == p.id
        ignored = int((pm & void).sum())
        if p.category_id in crowd:
            ignored += int((pm & (gt == crowd[p.category_id])).sum())
        if ignored / pm.sum() <= 0.5:
            out[p.category_id][1] += 1
    return out


def random_pair(
    rng: np.random.Generator, h: int, w: int
) -> tuple[NDArray[np.int64], list[SegmentInfo], NDArray[np.int64], list[SegmentInfo]]:
    """Rectangles painted over each other; the prediction is a shifted, partly repainted copy."""

    def paint(n: int) -> NDArray[np.int64]:
        ids = np.zeros((h, w), np.int64)
        for k in range(1, n + 1):
            y, x = rng.integers(0, h), rng.integers(0, w)
            ids[y : y + rng.integers(2, h // 2 + 3), x : x + rng.integers(2, w // 2 + 3)] = k
        return ids

    gt = paint(int(rng.integers(1, 9)))
    gt[rng.random((h, w)) < 0.1 * rng.random()] = 0
    pred = np.roll(gt, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    extra = paint(int(rng.integers(0, 4)))
    pred = np.where(extra > 0, extra + 50, pred)
    pred[rng.random((h, w)) < 0.05 * rng.random()] = 0
    # Large, sparse ids as in real PNGs.
    for ids in (gt, pred):
        u = np.unique(ids[ids > 0])
        ids[ids > 0] = (1 + rng.choice(2**24 - 1, len(u), replace=False))[np.searchsorted(u, ids[ids > 0])]
    gt_segs = [
        seg(
            int(i), int(rng.choice(CAT_IDS[:2] if rng.random() < 0.7 else CAT_IDS)), bool(rng.random() < 0.25)
        )
        for i in np.unique(gt[gt > 0])
    ]
    gt_cat = {s.id: s.category_id for s in gt_segs}
    pred_segs = []
    for i in np.unique(pred[pred > 0]):
        under = gt[pred == i]
        major = int(np.bincount(np.unique(under, return_inverse=True)[1]).argmax())
        g = int(np.unique(under)[major])
        cat = gt_cat[g] if g in gt_cat and rng.random() < 0.8 else int(rng.choice(CAT_IDS))
        pred_segs.append(seg(int(i), cat))
    return gt, gt_segs, pred, pred_segs


@pytest.fixture
def seed() -> int:
    return secrets.randbits(32)


def test_vectorised_equals_plain_loops_on_random_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        gt, gs, pred, ps = random_pair(rng, int(rng.integers(4, 30)), int(rng.integers(4, 30)))
        s = stat_of(gt, gs, pred, ps)
        ref = naive_stat(gt, gs, pred, ps)
        for c in CAT_IDS:
            tp, fp, fn, iou = s.counts(c)
            assert (tp, fp, fn) == tuple(ref[c][:3]), f"seed {seed}, category {c}"
            assert iou == pytest.approx(ref[c][3], abs=1e-12), f"seed {seed}, category {c}"


# ---------------------------------------------------------------------------------------------------------
# Malformed inputs: one error naming the image and the id


MALFORMED = [
    (
        row(1, 1),
        [seg(1, PERSON)],
        row(5, 6),
        [seg(5, PERSON)],
        "predicted segment id 6 is in the PNG but not",
    ),
    (
        row(1, 1),
        [seg(1, PERSON)],
        row(5, 5),
        [seg(5, PERSON), seg(8, PERSON)],
        "predicted segment id 8 is in segments_info but not in the PNG",
    ),
    (row(1, 2), [seg(1, PERSON)], row(5, 5), [seg(5, PERSON)], "ground-truth segment id 2 is in the PNG"),
    (
        row(1, 1),
        [seg(1, PERSON), seg(3, SKY)],
        row(5, 5),
        [seg(5, PERSON)],
        "ground-truth segment id 3 is in segments_info but not in the PNG",
    ),
    (
        row(1, 1),
        [seg(1, PERSON)],
        row(5, 5),
        [seg(5, 12)],
        "predicted segment id 5 has unknown category_id 12",
    ),
    (row(1, 1), [seg(1, 999)], row(5, 5), [seg(5, PERSON)], "ground-truth segment id 1 has unknown category"),
    (
        row(1, 1),
        [seg(1, PERSON)],
        np.array([[5], [5]]),
        [seg(5, PERSON)],
        r"prediction size \(2, 1\) \(H, W\) differs from ground truth \(1, 2\)",
    ),
    (
        row(1, 1),
        [seg(1, PERSON)],
        row(5, 5),
        [seg(5, PERSON), seg(5, SKY)],
        "predicted segment id 5 is listed twice",
    ),
    (row(1, 1), [seg(1, PERSON)], row(-5, -5), [seg(5, PERSON)], "predicted id map has negative id -5"),
]


@pytest.mark.parametrize(("gt", "gt_segs", "pred", "pred_segs", "message"), MALFORMED)
def test_malformed_arrays_raise_one_clear_error(
    gt: NDArray[np.int64],
    gt_segs: list[SegmentInfo],
    pred: NDArray[np.int64],
    pred_segs: list[SegmentInfo],
    message: str,
) -> None:
    with pytest.raises(PanopticFormatError, match=r"^test image: " + message):
        stat_of(gt, gt_segs, pred, pred_segs)


# ---------------------------------------------------------------------------------------------------------
# Files


def write_dataset(
    root: Path,
    images: Sequence[
        tuple[NDArray[np.int64], Sequence[SegmentInfo], NDArray[np.int64], Sequence[SegmentInfo]]
    ],
) -> tuple[Path, Path, Path, Path]:
    """GT in full COCO form; predictions in results form, reversed order, other file names."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_anns, pred_anns = [], []
    for i, (gt, gs, pred, ps) in enumerate(images):
        image_id = 1000 + i
        write_panoptic_png(gt_dir / f"{image_id:012d}.png", gt)
        write_panoptic_png(pred_dir / f"pred_{i}.png", pred)
        gt_anns.append(PanopticAnnotation(image_id, f"{image_id:012d}.png", tuple(gs)))
        pred_anns.append(PanopticAnnotation(image_id, f"pred_{i}.png", tuple(ps)))
    write_panoptic_json(root / "gt.json", gt_anns, CATS)
    pred_json = root / "pred.json"
    pred_json.write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "image_id": a.image_id,
                        "file_name": a.file_name,
                        "segments_info": [
                            {"id": s.id, "category_id": s.category_id} for s in a.segments_info
                        ],
                    }
                    for a in reversed(pred_anns)
                ]
            }
        )
    )
    return root / "gt.json", gt_dir, pred_json, pred_dir


def test_compute_pq_from_files_equals_summed_arrays_for_any_worker_count(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = [random_pair(rng, int(rng.integers(8, 40)), int(rng.integers(8, 40))) for _ in range(12)]
    paths = write_dataset(tmp_path, images)
    expected = PQStat.zeros(CAT_IDS)
    for im in images:
        expected += stat_of(*im)
    want = PQResult.from_stat(expected, CATS, len(images)).to_json()
    got1 = compute_pq(*paths, workers=1).to_json()
    got2 = compute_pq(*paths, workers=2).to_json()
    assert got1 == want, f"seed {seed}"
    assert got2 == got1, f"seed {seed}"
    # Independently of the code under test: the plain loops of naive_stat summed over the images, and PQ by
    # its definition, averaged over the categories that occur (things and stuff from CATS).
    sums = {c: np.zeros(4) for c in CAT_IDS}
    for im in images:
        for c, counts in naive_stat(*im).items():
            sums[c] += counts
    occurring = [c for c in CATS if sums[c.id][:3].sum() > 0]
    for c in CATS:
        tp, fp, fn, iou = sums[c.id]
        entry = got1["per_class"][str(c.id)]
        assert (entry["tp"], entry["fp"], entry["fn"]) == (tp, fp, fn), f"seed {seed}, category {c.id}"
        denominator = tp + fp / 2 + fn / 2
        want_pq = iou / denominator if denominator else 0.0
        assert entry["pq"] == pytest.approx(want_pq, abs=1e-12), f"seed {seed}, category {c.id}"
    for name, members in (
        ("All", occurring),
        ("Things", [c for c in occurring if c.isthing]),
        ("Stuff", [c for c in occurring if not c.isthing]),
    ):
        pqs = [sums[c.id][3] / (sums[c.id][0] + sums[c.id][1] / 2 + sums[c.id][2] / 2) for c in members]
        assert got1[name]["n"] == len(members), f"seed {seed}, {name}"
        assert got1[name]["pq"] == pytest.approx(np.mean(pqs) if pqs else 0.0, abs=1e-12), f"seed {seed}"


def test_pq_command_prints_and_writes_api_structure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # person matched (IoU 4/5), sky missed; bicycle and tree absent. All: PQ (0.8 + 0) / 2, SQ (0.8 + 0) / 2,
    # RQ (1 + 0) / 2 over n = 2 categories.
    gt = np.array([[1, 1, 1, 1, 1], [2, 2, 2, 2, 2]])
    pred = np.array([[7, 7, 7, 7, 0], [0, 0, 0, 0, 0]])
    paths = write_dataset(tmp_path, [(gt, [seg(1, PERSON), seg(2, SKY)], pred, [seg(7, PERSON)])])
    out_json = tmp_path / "out" / "pq.json"
    args = ["pq", "--gt-json", str(paths[0]), "--gt-dir", str(paths[1]), "--pred-json", str(paths[2]),
            "--pred-dir", str(paths[3]), "--json", str(out_json), "--workers", "1"]  # fmt: skip
    code = cli.main(args)
    assert code == 0
    printed = capsys.readouterr().out
    assert "person" in printed and "sky" in printed and "bicycle" not in printed
    assert "All       |  40.0   40.0   50.0     2" in printed
    data = json.loads(out_json.read_text())
    assert set(data) >= {"All", "Things", "Stuff", "per_class"}
    assert data["All"] == {"pq": pytest.approx(0.4), "sq": pytest.approx(0.4), "rq": 0.5, "n": 2}
    assert data["Things"] == {"pq": pytest.approx(0.8), "sq": pytest.approx(0.8), "rq": 1.0, "n": 1}
    assert data["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    assert set(data["per_class"]) == {str(c) for c in CAT_IDS}
    assert data["per_class"][str(SKY)] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert data["num_images"] == 1
    assert not list(out_json.parent.glob(".*tmp*"))


def one_image(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    return write_dataset(tmp_path, [(row(1, 1), [seg(1, PERSON)], row(5, 5), [seg(5, PERSON)])])


def test_missing_png_is_named(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    (paths[3] / "pred_0.png").unlink()
    with pytest.raises(
        PanopticFormatError, match=r"image 1000 \(000000001000.png\): predicted PNG .*pred_0.png not"
    ):
        compute_pq(*paths, workers=1)


def test_missing_png_in_a_worker_is_named(tmp_path: Path) -> None:
    images = [(row(1, 1), [seg(1, PERSON)], row(5, 5), [seg(5, PERSON)])] * 3
    paths = write_dataset(tmp_path, images)
    (paths[1] / "000000001001.png").unlink()
    with pytest.raises(PanopticFormatError, match=r"image 1001 .*ground-truth PNG .* not found"):
        compute_pq(*paths, workers=2)


def test_missing_prediction_for_an_image_is_named(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    paths[2].write_text(json.dumps({"annotations": []}))
    with pytest.raises(PanopticFormatError, match=r"no prediction for image 1000 \(000000001000.png\)"):
        compute_pq(*paths, workers=1)


def test_predictions_for_unknown_images_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    data = json.loads(paths[2].read_text())
    data["annotations"].append({"image_id": 5, "file_name": "x.png", "segments_info": []})
    paths[2].write_text(json.dumps(data))
    result = compute_pq(*paths, workers=1)
    assert result.ignored_predictions == 1
    assert "ignored: 1 prediction(s)" in result.format_table()


def test_size_mismatch_from_files_is_named(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    write_panoptic_png(paths[3] / "pred_0.png", np.array([[5], [5]]))
    with pytest.raises(PanopticFormatError, match=r"image 1000 .*prediction size \(2, 1\)"):
        compute_pq(*paths, workers=1)


def test_unknown_category_in_prediction_json_is_named(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    data = json.loads(paths[2].read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 91
    paths[2].write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"image 1000 .*segment id 5 has unknown category_id 91"):
        compute_pq(*paths, workers=1)


def test_cli_reports_errors_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = one_image(tmp_path)
    write_panoptic_png(paths[3] / "pred_0.png", row(5, 6))
    args = ["pq", "--gt-json", str(paths[0]), "--gt-dir", str(paths[1]), "--pred-json", str(paths[2]),
            "--pred-dir", str(paths[3]), "--workers", "1"]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: image 1000 (000000001000.png): predicted segment id 6 is in the PNG but not in segments_info"
    ]


def test_run_pq_command_returns_zero(tmp_path: Path) -> None:
    paths = one_image(tmp_path)
    code = run_pq_command(
        gt_json=str(paths[0]),
        gt_dir=str(paths[1]),
        pred_json=str(paths[2]),
        pred_dir=str(paths[3]),
        workers=1,
    )
    assert code == 0


# ---------------------------------------------------------------------------------------------------------
# In memory: engine output against the torch reference


def test_pq_between_reference_fixture_and_a_perturbed_copy() -> None:
    info = json.loads((FIXTURES / "astronaut.segments.json").read_text())["segments_info"]
    pan = np.load(FIXTURES / "astronaut.npz")["panoptic_seg"]
    ref_segs = segments_from_model_output(info)
    same = pq_between([(pan, ref_segs)], [(pan.copy(), ref_segs)])
    counted = {s.category_id for s in ref_segs}
    assert same.all.n == len(counted)
    assert (same.all.pq, same.all.sq, same.all.rq) == (1.0, 1.0, 1.0)
    # Drop segment 1 from the prediction (VOID there): its category gets an FN, nothing else changes.
    dropped = np.where(pan == 1, 0, pan)
    cat1 = ref_segs[0].category_id
    r = pq_between([(dropped, ref_segs[1:])], [(pan, ref_segs)], names=["astronaut"])
    k = r.per_class[cat1]
    n_cat1 = sum(s.category_id == cat1 for s in ref_segs)
    assert (k.tp, k.fp, k.fn) == (n_cat1 - 1, 0, 1)
    with pytest.raises(
        PanopticFormatError, match=r"^image astronaut: predicted segment id 1 is in segments_info"
    ):
        pq_between([(dropped, ref_segs)], [(pan, ref_segs)], names=["astronaut"])
