"""Panoptic quality (PQ = SQ x RQ) with the semantics of the COCO panoptic API's ``pq_compute``.

Per image and category (Kirillov et al., "Panoptic Segmentation"; cocodataset/panopticapi):

* A ground-truth segment g and a predicted segment p of the same category match when
  ``IoU = |g & p| / (|g| + |p| - |g & p| - |p & VOID|) > 0.5`` (strictly). Predicted pixels on VOID
  (ground-truth id 0) leave the union; predicted pixels on crowd do not. IoU > 0.5 makes matches unique.
* Crowd segments (``iscrowd = 1``) are never matched and never false negatives.
* An unmatched non-crowd ground-truth segment is a false negative.
* An unmatched prediction is a false positive unless more than half of its pixels lie on VOID or on the
  crowd segment of its category (the API keeps one crowd segment per category and image: the last one in
  ``segments_info``).
* Ground-truth areas are the JSON's ``area`` where given (as the API does), else pixel counts; predicted
  areas are always pixel counts.

Per category: ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP`` (0 when TP = 0),
``RQ = TP / (TP + FP/2 + FN/2)``. All / Things / Stuff average over the ground-truth categories (``isthing``
from the ground-truth ``categories``) with ``TP + FP + FN > 0``; ``n`` is how many. With ``n = 0`` the
averages are 0 (the API divides by zero there).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy.categories import COCO_CATEGORIES, Category
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.panoptic_format import (
    VOID,
    ImageId,
    PanopticAnnotation,
    SegmentInfo,
    load_panoptic_json,
    read_panoptic_png,
)

IdMap = NDArray[np.integer[Any]]
"""(H, W) segment ids, 0 = VOID."""

_LOW32 = np.uint64(0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------------------
# Per-image statistics


@dataclass
class PQStat:
    """Per-category sums over some images; arrays of shape (C,) aligned with ``category_ids`` (ascending)."""

    category_ids: NDArray[np.int64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    fn: NDArray[np.int64]
    iou: NDArray[np.float64]

    @classmethod
    def zeros(cls, category_ids: Iterable[int]) -> PQStat:
        """Empty statistics for these categories."""
        cats = _category_array(category_ids)
        c = len(cats)
        return cls(cats, np.zeros(c, np.int64), np.zeros(c, np.int64), np.zeros(c, np.int64), np.zeros(c))

    def __iadd__(self, other: PQStat) -> PQStat:
        if not np.array_equal(self.category_ids, other.category_ids):
            raise ValueError("PQStat: cannot add statistics over different category sets")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self

    def counts(self, category_id: int) -> tuple[int, int, int, float]:
        """(TP, FP, FN, IoU sum) of one category."""
        k = int(np.searchsorted(self.category_ids, category_id))
        if k >= len(self.category_ids) or self.category_ids[k] != category_id:
            raise KeyError(category_id)
        return int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])


def _category_array(category_ids: Iterable[int]) -> NDArray[np.int64]:
    return np.unique(np.fromiter(category_ids, dtype=np.int64))


@dataclass(frozen=True)
class _SegmentTable:
    """One image's segments sorted by id: arrays of shape (S,)."""

    ids: NDArray[np.int64]
    category: NDArray[np.int64]  # index into the category array
    iscrowd: NDArray[np.bool_]
    json_area: NDArray[np.int64]  # -1 where the JSON has none
    designated_crowd: NDArray[np.bool_]  # the crowd segment the FP rule uses for its category


def _segment_table(
    segments: Sequence[SegmentInfo], cats: NDArray[np.int64], image: str, what: str
) -> _SegmentTable:
    ids = np.fromiter((s.id for s in segments), np.int64, len(segments))
    cat_ids = np.fromiter((s.category_id for s in segments), np.int64, len(segments))
    crowd = np.fromiter((s.iscrowd for s in segments), np.bool_, len(segments))
    area = np.fromiter((-1 if s.area is None else s.area for s in segments), np.int64, len(segments))
    if len(np.unique(ids)) != len(ids):
        dup = next(i for i in ids.tolist() if (ids == i).sum() > 1)
        raise PanopticFormatError(f"{image}: {what} segment id {dup} is listed twice")
    if np.any(ids == VOID):
        raise PanopticFormatError(f"{image}: {what} segment id 0 is reserved for VOID")
    k = np.searchsorted(cats, cat_ids)
    known = (k < len(cats)) & (cats[np.minimum(k, len(cats) - 1)] == cat_ids) if len(cats) else k < 0
    if not np.all(known):
        j = int(np.flatnonzero(~known)[0])
        raise PanopticFormatError(
            f"{image}: {what} segment id {int(ids[j])} has unknown category_id {int(cat_ids[j])}"
        )
    # The API keeps a dict category -> crowd segment id, so the last crowd segment of a category wins.
    last_crowd = {s.category_id: s.id for s in segments if s.iscrowd}
    designated = np.isin(ids, np.fromiter(last_crowd.values(), np.int64, len(last_crowd)))
    order = np.argsort(ids, kind="stable")
    return _SegmentTable(ids[order], k[order], crowd[order], area[order], designated[order])


def _check_ids(present: NDArray[np.int64], table: _SegmentTable, image: str, what: str) -> None:
    """Every non-VOID id of the PNG is in the JSON and every JSON id is in the PNG."""
    in_png = present[present != VOID]
    extra = np.setdiff1d(in_png, table.ids, assume_unique=True)
    if len(extra):
        raise PanopticFormatError(
            f"{image}: {what} segment id {int(extra[0])} is in the PNG but not in segments_info"
        )
    missing = np.setdiff1d(table.ids, in_png, assume_unique=True)
    if len(missing):
        raise PanopticFormatError(
            f"{image}: {what} segment id {int(missing[0])} is in segments_info but not in the PNG"
        )


def _as_id_map(ids: IdMap, image: str, what: str) -> NDArray[np.uint64]:
    if ids.ndim != 2:
        raise PanopticFormatError(f"{image}: {what} id map must be 2-D (H, W), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise PanopticFormatError(f"{image}: {what} id map must be integer, got {ids.dtype}")
    if np.issubdtype(ids.dtype, np.signedinteger) and ids.size and int(ids.min()) < 0:
        raise PanopticFormatError(f"{image}: {what} id map has negative id {int(ids.min())}")
    if ids.dtype.itemsize > 4 and ids.size and int(ids.max()) > 0xFFFFFFFF:
        raise PanopticFormatError(f"{image}: {what} id map has id {int(ids.max())} above 2^32-1")
    return ids.astype(np.uint64)


def pq_from_arrays(
    gt_ids: IdMap,
    gt_segments: Sequence[SegmentInfo],
    pred_ids: IdMap,
    pred_segments: Sequence[SegmentInfo],
    category_ids: Iterable[int],
    *,
    image: str = "image",
) -> PQStat:
    """PQ statistics of one image.

    ``gt_ids`` and ``pred_ids`` are (H, W) id maps (0 = VOID); the segment lists must name exactly the
    non-VOID ids of their map, with categories from ``category_ids``. ``image`` names the image in errors.
    Returns (C,) per-category TP/FP/FN counts and IoU sums.
    """
    cats = _category_array(category_ids)
    if gt_ids.shape != pred_ids.shape:
        raise PanopticFormatError(
            f"{image}: prediction size {tuple(pred_ids.shape)} (H, W) differs from ground truth"
            f" {tuple(gt_ids.shape)}"
        )
    gt_table = _segment_table(gt_segments, cats, image, "ground-truth")
    pred_table = _segment_table(pred_segments, cats, image, "predicted")

    # All (gt id, pred id) pairs and their intersections with one sort of the combined ids.
    combined = (_as_id_map(gt_ids, image, "ground-truth") << np.uint64(32)) | _as_id_map(
        pred_ids, image, "predicted"
    )
    pairs, inter = np.unique(combined.ravel(), return_counts=True)
    pair_gt = (pairs >> np.uint64(32)).astype(np.int64)  # sorted
    pair_pred = (pairs & _LOW32).astype(np.int64)
    inter = inter.astype(np.int64)

    # Pixel areas. pair_gt is sorted, so each gt id is one run of pairs.
    starts = np.flatnonzero(np.r_[True, pair_gt[1:] != pair_gt[:-1]])
    gt_present, gt_pixels = pair_gt[starts], np.add.reduceat(inter, starts)
    pred_present, pred_inverse = np.unique(pair_pred, return_inverse=True)
    pred_pixels = np.zeros(len(pred_present), np.int64)
    np.add.at(pred_pixels, pred_inverse, inter)
    _check_ids(gt_present, gt_table, image, "ground-truth")
    _check_ids(pred_present, pred_table, image, "predicted")

    # Areas per segment (table order). Ground truth: the JSON's area where given, like the API.
    gt_count = gt_pixels[np.searchsorted(gt_present, gt_table.ids)]
    gt_area = np.where(gt_table.json_area >= 0, gt_table.json_area, gt_count)
    pred_area = pred_pixels[np.searchsorted(pred_present, pred_table.ids)]

    # Predicted pixels on VOID, per predicted segment.
    pred_void = np.zeros(len(pred_table.ids), np.int64)
    on_void = (pair_gt == VOID) & (pair_pred != VOID)
    pred_void[np.searchsorted(pred_table.ids, pair_pred[on_void])] = inter[on_void]

    # Pairs of two real segments: matches and crowd overlaps.
    both = np.flatnonzero((pair_gt != VOID) & (pair_pred != VOID))
    gi = np.searchsorted(gt_table.ids, pair_gt[both])
    pj = np.searchsorted(pred_table.ids, pair_pred[both])
    i_both = inter[both]
    same_cat = gt_table.category[gi] == pred_table.category[pj]
    union = pred_area[pj] + gt_area[gi] - i_both - pred_void[pj]
    # IoU > 0.5 as integers: 2 * intersection > union (the same decision as the float test).
    match = same_cat & ~gt_table.iscrowd[gi] & (2 * i_both > union)
    iou = i_both[match] / union[match]

    c = len(cats)
    gt_matched = np.zeros(len(gt_table.ids), np.bool_)
    gt_matched[gi[match]] = True
    pred_matched = np.zeros(len(pred_table.ids), np.bool_)
    pred_matched[pj[match]] = True
    match_cat = gt_table.category[gi[match]]
    tp = np.bincount(match_cat, minlength=c)
    iou_sum = np.bincount(match_cat, weights=iou, minlength=c)

    fn_mask = ~gt_matched & ~gt_table.iscrowd
    fn = np.bincount(gt_table.category[fn_mask], minlength=c)

    # A prediction more than half on VOID + the crowd segment of its category is ignored, not an FP.
    ignored = pred_void.copy()
    on_crowd = same_cat & gt_table.designated_crowd[gi]
    np.add.at(ignored, pj[on_crowd], i_both[on_crowd])
    fp_mask = ~pred_matched & ~(2 * ignored > pred_area)
    fp = np.bincount(pred_table.category[fp_mask], minlength=c)

    return PQStat(
        cats, tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64), iou_sum.astype(np.float64)
    )


# ---------------------------------------------------------------------------------------------------------
# Averages and the result


@dataclass(frozen=True)
class PQMetrics:
    """PQ, SQ, RQ (fractions, 0..1) averaged over ``n`` categories."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass(frozen=True)
class ClassPQ:
    """One category's PQ, SQ, RQ (fractions) and its counts."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int


def _class_pq(tp: int, fp: int, fn: int, iou: float) -> ClassPQ:
    if tp + fp + fn == 0:
        return ClassPQ(0.0, 0.0, 0.0, 0, 0, 0)
    denom = tp + 0.5 * fp + 0.5 * fn
    return ClassPQ(iou / denom, iou / tp if tp else 0.0, tp / denom, tp, fp, fn)


@dataclass(frozen=True)
class PQResult:
    """PQ over a set of images, as ``pq_compute`` reports it (plus per-class counts)."""

    all: PQMetrics
    things: PQMetrics
    stuff: PQMetrics
    per_class: dict[int, ClassPQ]  # every category of ``categories``, keyed by category id
    categories: tuple[Category, ...]
    num_images: int
    ignored_predictions: int = 0  # prediction annotations for images absent from the ground truth

    @classmethod
    def from_stat(
        cls, stat: PQStat, categories: Sequence[Category], num_images: int, ignored_predictions: int = 0
    ) -> PQResult:
        """Average accumulated statistics over ``categories`` (ground-truth order, ``isthing`` from them)."""
        per_class: dict[int, ClassPQ] = {}
        for cat in categories:
            tp, fp, fn, iou = stat.counts(cat.id)
            per_class[cat.id] = _class_pq(tp, fp, fn, iou)

        def average(isthing: bool | None) -> PQMetrics:
            pq = sq = rq = 0.0
            n = 0
            for cat in categories:
                k = per_class[cat.id]
                if (isthing is not None and cat.isthing != isthing) or k.tp + k.fp + k.fn == 0:
                    continue
                n += 1
                pq += k.pq
                sq += k.sq
                rq += k.rq
            return PQMetrics(pq / n, sq / n, rq / n, n) if n else PQMetrics(0.0, 0.0, 0.0, 0)

        return cls(
            all=average(None),
            things=average(True),
            stuff=average(False),
            per_class=per_class,
            categories=tuple(categories),
            num_images=num_images,
            ignored_predictions=ignored_predictions,
        )

    def to_json(self) -> dict[str, Any]:
        """The COCO panoptic API's result structure; per-class entries also carry tp/fp/fn."""
        out: dict[str, Any] = {}
        for name, m in (("All", self.all), ("Things", self.things), ("Stuff", self.stuff)):
            out[name] = {"pq": m.pq, "sq": m.sq, "rq": m.rq, "n": m.n}
        out["per_class"] = {
            str(cid): {"pq": k.pq, "sq": k.sq, "rq": k.rq, "tp": k.tp, "fp": k.fp, "fn": k.fn}
            for cid, k in self.per_class.items()
        }
        out["num_images"] = self.num_images
        out["ignored_predictions"] = self.ignored_predictions
        return out

    def format_table(self, per_class: bool = True) -> str:
        """Human-readable table: per-class rows (categories that occur), then All / Things / Stuff."""
        lines = []
        if per_class:
            lines.append(f"{'id':>4s} {'category':24s} {'kind':5s} | {'PQ':>5s} {'SQ':>5s} {'RQ':>5s} |"
                         f" {'TP':>6s} {'FP':>6s} {'FN':>6s}")  # fmt: skip
            lines.append("-" * len(lines[0]))
            for cat in sorted(self.categories, key=lambda c: c.id):
                k = self.per_class[cat.id]
                if k.tp + k.fp + k.fn == 0:
                    continue
                lines.append(
                    f"{cat.id:4d} {cat.name[:24]:24s} {'thing' if cat.isthing else 'stuff':5s} |"
                    f" {100 * k.pq:5.1f} {100 * k.sq:5.1f} {100 * k.rq:5.1f} | {k.tp:6d} {k.fp:6d} {k.fn:6d}"
                )
            lines.append("")
        lines.append(f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
        lines.append("-" * 38)
        for name, m in (("All", self.all), ("Things", self.things), ("Stuff", self.stuff)):
            lines.append(f"{name:10s}| {100 * m.pq:5.1f}  {100 * m.sq:5.1f}  {100 * m.rq:5.1f} {m.n:5d}")
        lines.append(f"images: {self.num_images}")
        if self.ignored_predictions:
            lines.append(
                f"ignored: {self.ignored_predictions} prediction(s) for images not in the ground truth"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class _ImageTask:
    gt_png: Path
    pred_png: Path
    gt: PanopticAnnotation
    pred: PanopticAnnotation
    category_ids: tuple[int, ...]


def _evaluate_task(task: _ImageTask) -> PQStat:
    """Read one image's two PNGs and compute its statistics (runs in a worker process)."""
    image = task.gt.describe()
    if not task.gt_png.is_file():
        raise PanopticFormatError(f"{image}: ground-truth PNG {task.gt_png} not found")
    if not task.pred_png.is_file():
        raise PanopticFormatError(f"{image}: predicted PNG {task.pred_png} not found")
    return pq_from_arrays(
        read_panoptic_png(task.gt_png),
        task.gt.segments_info,
        read_panoptic_png(task.pred_png),
        task.pred.segments_info,
        task.category_ids,
        image=image,
    )


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _map_tasks(tasks: Sequence[_ImageTask], workers: int) -> Iterable[PQStat]:
    """Per-image statistics in task order, from ``workers`` processes."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_evaluate_task, tasks)
        return
    # fork: workers start in milliseconds and never re-import the caller's __main__ (forkserver and spawn
    # do, which breaks scripts read from stdin). The parent should not be running threads of its own
    # (e.g. torch's); callers that are pass workers=1.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    with multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(_evaluate_task, tasks, chunksize=chunksize)


def compute_pq(
    gt_json: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    pred_json: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    workers: int | None = None,
) -> PQResult:
    """PQ of COCO panoptic predictions against ground truth, like the COCO panoptic API's ``pq_compute``.

    Every ground-truth annotation needs a prediction with the same ``image_id`` (in any order) or, failing
    that, a prediction whose ``image_id`` is no ground-truth id and whose PNG ``file_name`` has the same
    stem (what ``predict --coco-json`` writes: the image name as ``image_id``); PNGs are found through each
    annotation's ``file_name``. Categories (and ``isthing``) come from the ground truth.
    ``workers``: processes (None = available CPUs). Per-image sums are added in ground-truth order, so the
    result does not depend on ``workers``.
    """
    gt = load_panoptic_json(gt_json, require_categories=True)
    pred = load_panoptic_json(pred_json)
    assert gt.categories is not None  # require_categories
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not Path(folder).is_dir():
            raise PanopticFormatError(f"{folder}: {what} PNG folder not found")

    pred_by_image: dict[ImageId, PanopticAnnotation] = {a.image_id: a for a in pred.annotations}
    gt_images = {a.image_id for a in gt.annotations}
    pred_by_stem: dict[str, PanopticAnnotation] = {}
    for a in pred.annotations:
        if a.image_id in gt_images:
            continue
        twin = pred_by_stem.setdefault(Path(a.file_name).stem, a)
        if twin is not a:  # two predictions that file-name matching cannot tell apart
            raise PanopticFormatError(
                f"{pred_json}: predictions {twin.describe()} and {a.describe()} have the same file name stem"
            )
    category_ids = tuple(c.id for c in gt.categories)
    tasks = []
    used: set[ImageId] = set()
    for ann in gt.annotations:
        pred_ann = pred_by_image.get(ann.image_id) or pred_by_stem.get(Path(ann.file_name).stem)
        if pred_ann is None:
            raise PanopticFormatError(f"{pred_json}: no prediction for {ann.describe()}")
        if pred_ann.image_id in used:
            raise PanopticFormatError(f"{pred_json}: prediction {pred_ann.describe()} matches two images")
        used.add(pred_ann.image_id)
        tasks.append(
            _ImageTask(
                Path(gt_dir) / ann.file_name, Path(pred_dir) / pred_ann.file_name, ann, pred_ann, category_ids
            )
        )
    ignored = sum(1 for a in pred.annotations if a.image_id not in used)

    stat = PQStat.zeros(category_ids)
    for image_stat in _map_tasks(tasks, _default_workers() if workers is None else workers):
        stat += image_stat
    return PQResult.from_stat(stat, gt.categories, len(tasks), ignored)


def pq_between(
    pred_pairs: Sequence[tuple[IdMap, Sequence[SegmentInfo]]],
    ref_pairs: Sequence[tuple[IdMap, Sequence[SegmentInfo]]],
    categories: Sequence[Category] = COCO_CATEGORIES,
    names: Sequence[str] | None = None,
) -> PQResult:
    """PQ of in-memory predictions against in-memory references (e.g. an engine against torch FP32).

    Each pair is one image's (H, W) id map and its segments (COCO category ids; convert model output with
    ``panoptic_format.segments_from_model_output``). The reference plays the ground truth (no crowd, so
    only VOID is ignored). ``names`` name the images in errors.
    """
    if len(pred_pairs) != len(ref_pairs):
        raise PanopticFormatError(
            f"pq_between: {len(pred_pairs)} predictions but {len(ref_pairs)} references"
        )
    if names is not None and len(names) != len(ref_pairs):
        raise PanopticFormatError(f"pq_between: {len(names)} names for {len(ref_pairs)} images")
    category_ids = [c.id for c in categories]
    stat = PQStat.zeros(category_ids)
    for i, ((pred_ids, pred_segs), (ref_ids, ref_segs)) in enumerate(zip(pred_pairs, ref_pairs, strict=True)):
        image = f"image {names[i]}" if names is not None else f"image #{i}"
        stat += pq_from_arrays(ref_ids, ref_segs, pred_ids, pred_segs, category_ids, image=image)
    return PQResult.from_stat(stat, categories, len(ref_pairs))
