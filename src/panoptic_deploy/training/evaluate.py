"""PQ of a model against a COCO-panoptic folder's ground truth (for training runs; the pipeline's own PQ
goes through ``predict`` + ``pq``). Predictions use the inference path unchanged (:class:`Predictor`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from panoptic_deploy.categories import CategorySet
from panoptic_deploy.modeling import PanopticFCN
from panoptic_deploy.panoptic_format import SegmentInfo, load_panoptic_json, read_panoptic_png
from panoptic_deploy.pq import PQResult, PQStat, pq_from_arrays
from panoptic_deploy.predict import Predictor, load_model
from panoptic_deploy.preprocess import read_image


def evaluate_model(
    model: PanopticFCN,
    dataset_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    limit: int | None = None,
    progress: bool = False,
) -> PQResult:
    """PQ of ``model`` (eval mode, FrozenBN) on the first ``limit`` images of ``dataset_dir``."""
    root = Path(dataset_dir)
    gt = load_panoptic_json(root / "panoptic.json", require_categories=True)
    categories = CategorySet.load(root / "panoptic.json")
    images = {img.id: img.file_name for img in gt.images}
    predictor = Predictor(model, device)
    category_ids = [c.id for c in categories.categories]
    stat = PQStat.zeros(category_ids)
    annotations = gt.annotations[:limit] if limit is not None else gt.annotations
    for ann in tqdm(annotations, desc="evaluate", unit="img", disable=not progress):
        image = read_image(root / "images" / images[ann.image_id], model.input_params.input_format)
        result = predictor(image)
        pred_segments = [
            SegmentInfo(s.id, categories.dataset_id(s.category_id, s.isthing), False, s.area)
            for s in result.segments
        ]
        gt_ids = read_panoptic_png(root / "panoptic" / ann.file_name)
        stat += pq_from_arrays(
            gt_ids, ann.segments_info, result.panoptic_seg, pred_segments, category_ids, image=ann.file_name
        )
    return PQResult.from_stat(stat, categories.categories, len(annotations))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PQ of a checkpoint on generated datasets")
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", required=True, nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", default=None, help="write {dataset: PQ result} here")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    model = load_model(args.config, args.weights, args.opts, args.device)
    out = {}
    for folder in args.dataset:
        result = evaluate_model(model, folder, args.device, args.limit)
        print(f"== {folder}")
        print(result.format_table())
        out[folder] = result.to_json()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
