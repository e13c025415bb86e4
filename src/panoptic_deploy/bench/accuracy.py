"""PQ of a benchmark's panoptic results against COCO panoptic ground truth, when a dataset is given.

Ground truth is optional (the demo's trained model has it; synthetic weights do not); the agreement with the
torch FP32 reference is measured in :mod:`panoptic_deploy.bench.run` through :mod:`panoptic_deploy.compare`.
The workflow plan checks the category sets at parse time with
:func:`panoptic_deploy.categories.check_ground_truth_categories` (also used here), so a wrong dataset fails
before any job runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panoptic_deploy.bench.results import GroundTruthPQ, PQSummary
from panoptic_deploy.categories import COCO, CategorySet, check_ground_truth_categories
from panoptic_deploy.compare import PanopticPair
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.fileio import PathLike


def ground_truth_pq(
    gt_json: PathLike,
    gt_dir: PathLike,
    names: Sequence[str],
    pairs: Sequence[PanopticPair],
    categories: CategorySet = COCO,
) -> GroundTruthPQ:
    """PQ of ``pairs`` (one per evaluation image, named by file stem; dataset ids of ``categories``)
    against a COCO panoptic dataset, whose categories must be those of the model."""
    from panoptic_deploy.panoptic_format import load_panoptic_json, read_panoptic_png
    from panoptic_deploy.pq import PQResult, PQStat, pq_from_arrays

    gt = load_panoptic_json(gt_json, require_categories=True)
    assert gt.categories is not None
    check_ground_truth_categories(gt.categories, categories, str(gt_json))
    by_stem = {Path(a.file_name).stem: a for a in gt.annotations}
    category_ids = [c.id for c in gt.categories]
    stat = PQStat.zeros(category_ids)
    for name, (pred_ids, pred_segments) in zip(names, pairs, strict=True):
        ann = by_stem.get(name)
        if ann is None:
            raise PanopticFormatError(f"{gt_json}: no annotation for evaluation image '{name}'")
        png = Path(gt_dir) / ann.file_name
        if not png.is_file():
            raise PanopticFormatError(f"{ann.describe()}: ground-truth PNG {png} not found")
        stat += pq_from_arrays(
            read_panoptic_png(png),
            ann.segments_info,
            pred_ids,
            pred_segments,
            category_ids,
            image=ann.describe(),
        )
    result = PQResult.from_stat(stat, gt.categories, len(names))

    def summary(m: Any) -> PQSummary:
        return PQSummary(m.pq, m.sq, m.rq, m.n)

    return GroundTruthPQ(
        str(gt_json), len(names), summary(result.all), summary(result.things), summary(result.stuff)
    )
