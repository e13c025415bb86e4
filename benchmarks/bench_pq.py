"""Benchmark of ``panoptic_deploy.pq``: images per second on synthetic 640x480 panoptic pairs.

Each ground-truth image is a Voronoi partition into ~20 segments (COCO categories, some crowd, a VOID band);
its prediction moves every seed a little, swaps a few categories and adds VOID. The script writes the
pairs as COCO panoptic PNG + JSON in a temporary folder and times

* ``pq_from_arrays`` alone on decoded id maps (no I/O),
* ``compute_pq`` end to end (JSON, PNG decoding, matching) with 1 and 2 worker processes,
* optionally the COCO panoptic API's single-core loop, when ``panopticapi`` is importable
  (``--compare-panopticapi``), with a check that both give the same PQ.

Run: ``python benchmarks/bench_pq.py [--images 200] [--repeats 5]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from numpy.typing import NDArray

from panoptic_deploy.categories import COCO_CATEGORIES
from panoptic_deploy.panoptic_format import (
    PanopticAnnotation,
    SegmentInfo,
    read_panoptic_png,
    write_panoptic_json,
    write_panoptic_png,
)
from panoptic_deploy.pq import compute_pq, pq_from_arrays

H, W = 480, 640


def voronoi(seeds: NDArray[np.float64]) -> NDArray[np.int64]:
    """(H, W) index of the nearest seed, 1-based."""
    yy, xx = np.mgrid[0:H, 0:W]
    best = np.full((H, W), np.inf)
    label = np.zeros((H, W), np.int64)
    for k, (y, x) in enumerate(seeds):
        d = (yy - y) ** 2 + (xx - x) ** 2
        closer = d < best
        best[closer] = d[closer]
        label[closer] = k + 1
    return label


def make_pair(
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], list[SegmentInfo], NDArray[np.int64], list[SegmentInfo]]:
    n = int(rng.integers(16, 25))
    seeds = rng.random((n, 2)) * (H, W)
    cats = rng.choice([c.id for c in COCO_CATEGORIES], n)
    gt_label = voronoi(seeds)
    pred_label = voronoi(seeds + rng.normal(0, 12, seeds.shape))
    gt_label[:, :8] = 0  # a VOID band, as COCO has around unlabeled areas
    pred_label[rng.random((H, W)) < 0.01] = 0
    gt_ids = rng.choice(2**24 - 1, n, replace=False) + 1  # sparse ids as in real PNGs
    pred_ids = rng.choice(2**24 - 1, n, replace=False) + 1
    gt = np.where(gt_label > 0, gt_ids[gt_label - 1], 0)
    pred = np.where(pred_label > 0, pred_ids[pred_label - 1], 0)
    things = {c.id for c in COCO_CATEGORIES if c.isthing}
    # COCO ground truth carries each segment's area (the API reads it); predictions do not need one.
    gt_segs = [
        SegmentInfo(int(gt_ids[k]), int(cats[k]), bool(cats[k] in things and rng.random() < 0.05), int(area))
        for k, area in enumerate(np.bincount(gt_label.ravel(), minlength=n + 1)[1:])
        if area > 0
    ]
    pred_cats = np.where(rng.random(n) < 0.1, rng.choice([c.id for c in COCO_CATEGORIES], n), cats)
    pred_segs = [
        SegmentInfo(int(pred_ids[k]), int(pred_cats[k])) for k in range(n) if np.any(pred_label == k + 1)
    ]
    return gt, gt_segs, pred, pred_segs


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-panopticapi", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    pairs = [make_pair(rng) for _ in range(args.images)]
    segs_per_image = statistics.mean(len(p[1]) for p in pairs)
    category_ids = [c.id for c in COCO_CATEGORIES]
    rows: list[tuple[str, tuple[float, float]]] = []

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gt_anns, pred_anns = [], []
        for i, (gt, gs, pred, ps) in enumerate(pairs):
            write_panoptic_png(root / "gt" / f"{i:012d}.png", gt)
            write_panoptic_png(root / "pred" / f"{i:012d}.png", pred)
            gt_anns.append(PanopticAnnotation(i, f"{i:012d}.png", tuple(gs)))
            pred_anns.append(PanopticAnnotation(i, f"{i:012d}.png", tuple(ps)))
        write_panoptic_json(root / "gt.json", gt_anns, COCO_CATEGORIES)
        write_panoptic_json(root / "pred.json", pred_anns)
        paths = (root / "gt.json", root / "gt", root / "pred.json", root / "pred")

        decoded = [
            (read_panoptic_png(root / "gt" / a.file_name), read_panoptic_png(root / "pred" / a.file_name))
            for a in gt_anns
        ]

        def arrays_only() -> None:
            for (gt, pred), (_, gs, _, ps) in zip(decoded, pairs, strict=True):
                pq_from_arrays(gt, gs, pred, ps, category_ids)

        def decode_only() -> None:
            for a in gt_anns:
                read_panoptic_png(root / "gt" / a.file_name)
                read_panoptic_png(root / "pred" / a.file_name)

        rows.append(
            ("`pq_from_arrays` only (decoded id maps, 1 process)", median_time(arrays_only, args.repeats))
        )
        rows.append(
            ("PNG decoding only (2 PNGs per image, 1 process)", median_time(decode_only, args.repeats))
        )
        result: dict[int, Any] = {}
        for workers in (1, 2):
            result[workers] = compute_pq(*paths, workers=workers).to_json()
            rows.append(
                (
                    f"`compute_pq` end to end, {workers} worker process{'es' if workers > 1 else ''}",
                    median_time(functools.partial(compute_pq, *paths, workers=workers), args.repeats),
                )
            )
        assert result[1] == result[2]

        if args.compare_panopticapi:
            from panopticapi.evaluation import PQStat, pq_compute_single_core  # type: ignore[import-not-found]

            gt_json = json.loads(paths[0].read_text())
            pred_json = json.loads(paths[2].read_text())
            categories = {c["id"]: c for c in gt_json["categories"]}
            matched = list(zip(gt_json["annotations"], pred_json["annotations"], strict=True))

            def api() -> Any:
                return pq_compute_single_core(0, matched, str(paths[1]), str(paths[3]), categories)

            stat = api()
            assert isinstance(stat, PQStat)
            for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
                ref, _ = stat.pq_average(categories, isthing=isthing)
                ours = result[1][name]
                diff = max(abs(ref[k] - ours[k]) for k in ("pq", "sq", "rq"))
                assert ref["n"] == ours["n"] and diff < 1e-12, (name, ref, ours)
            rows.append(
                ("COCO panoptic API `pq_compute_single_core`, 1 process", median_time(api, args.repeats))
            )

    print(f"- images: {args.images} synthetic {W}x{H} pairs, {segs_per_image:.1f} GT segments per image")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load}"
    )
    print(f"- Python {platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__}")
    print(f"- median of {args.repeats} runs; PQ of the synthetic set: {100 * result[1]['All']['pq']:.1f}\n")
    print("| what | images/s (wall) | 5000 images (wall) | CPU ms per image |")
    print("| --- | ---: | ---: | ---: |")
    for name, (wall, cpu) in rows:
        rate = args.images / wall
        print(f"| {name} | {rate:.0f} | {5000 / rate:.0f} s | {1000 * cpu / args.images:.1f} |")


if __name__ == "__main__":
    main()
