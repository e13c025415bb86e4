"""Accuracy cost of size buckets (``model.input_sizes: {buckets: ...}``) against per-size branches.

Generates a many-size scene set (``make_dataset`` at 10 scene sizes that pad to 10 different network inputs
under the demo model's 320/400 test resize, 4 scenes each, with ground truth), plans it twice with the demo
config (``input_sizes: auto``: 10 branches; ``{buckets: [[320, 416], [416, 320]]}``: 2 branches) through
:func:`panoptic_deploy.plan.plan`, and runs every branch's torch FP32 CPU reference (the workflow's
``reference_outputs`` job: :func:`write_reference` with the branch's input size and buckets) with the trained
demo checkpoint. Prints PQ against the ground truth per mode, PQ and pixel agreement of the bucket results
against the per-size results, and the wall time of the reference jobs.

Run from the repository root: ``python benchmarks/bucket_padding.py [--threads 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from panoptic_deploy.bench.accuracy import ground_truth_pq
from panoptic_deploy.bench.reference import write_reference
from panoptic_deploy.bench.results import ImagePanoptic
from panoptic_deploy.categories import load_category_set
from panoptic_deploy.compare import panoptic_agreement
from panoptic_deploy.dataset import make_dataset
from panoptic_deploy.plan import plan

ROOT = Path(__file__).resolve().parents[1]
# Scene sizes (H, W) -> padded input at test resize 320/400: 320x352, 320x384, 320x416, 288x416, 256x416,
# and the portrait mirrors.
LANDSCAPE = ((256, 272), (256, 300), (256, 320), (208, 320), (192, 330))
SCENE_SIZES = LANDSCAPE + tuple((w, h) for h, w in LANDSCAPE)
PER_SIZE = 4
BUCKETS = [[320, 416], [416, 320]]


def make_many_size_set(out: Path) -> Path:
    """``out/images``, ``out/panoptic``, ``out/panoptic.json``: 4 scenes of each size (seeds 101..110)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: list[dict[str, Any]] = []
    for folder in ("images", "panoptic"):
        (out / folder).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        for k, size in enumerate(SCENE_SIZES):
            part = Path(scratch) / str(k)
            make_dataset(101 + k, PER_SIZE, part, size)
            data = json.loads((part / "panoptic.json").read_text(encoding="utf-8"))
            categories = data["categories"]
            for image, ann in zip(data["images"], data["annotations"], strict=True):
                stem = f"s{k}_{Path(image['file_name']).stem}"
                shutil.copy2(part / "images" / image["file_name"], out / "images" / f"{stem}.png")
                shutil.copy2(part / "panoptic" / ann["file_name"], out / "panoptic" / f"{stem}.png")
                image_id = len(images)
                images.append({**image, "id": image_id, "file_name": f"{stem}.png"})
                annotations.append({**ann, "image_id": image_id, "file_name": f"{stem}.png"})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    (out / "panoptic.json").write_text(json.dumps(gt), encoding="utf-8")
    return out


def workflow_config(data: Path, input_sizes: Any) -> dict[str, Any]:
    """The demo config (config/config.yaml) on the many-size set, validated with its defaults filled in."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    cfg["model"]["input_sizes"] = input_sizes
    cfg["evaluation"] = {
        "images": str(data / "images"),
        "gt_json": str(data / "panoptic.json"),
        "gt_dir": str(data / "panoptic"),
    }
    validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


def run_mode(cfg: dict[str, Any], out: Path, threads: int) -> tuple[dict[str, ImagePanoptic], int, float]:
    """Every branch's torch FP32 reference: {image name: panoptic result}, branch count, seconds."""
    the_plan = plan(cfg)
    results: dict[str, ImagePanoptic] = {}
    start = time.perf_counter()
    for name, branch in the_plan.branches.items():
        model = the_plan.model_of(name)
        ref = write_reference(
            model.config,
            model.weights,
            branch.images,
            out / f"{name}.npz",
            branch.input_hw,
            model.opts,
            threads=threads,
            categories=load_category_set(model.categories),
            buckets=model.buckets,
        )
        results.update({image.name: image.panoptic for image in ref.images})
    return results, len(the_plan.branches), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the data and references here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bucket-padding-"))
    data = make_many_size_set(out / "data")
    categories = load_category_set(str(data / "panoptic.json"))
    summary: dict[str, Any] = {"images": len(SCENE_SIZES) * PER_SIZE, "scene_sizes": SCENE_SIZES}
    by_mode = {}
    for mode, sizes in (("per_size", "auto"), ("buckets", {"buckets": BUCKETS})):
        results, branches, seconds = run_mode(workflow_config(data, sizes), out / mode, args.threads)
        names = sorted(results)
        pairs = [results[n].pair(categories) for n in names]
        gt = ground_truth_pq(data / "panoptic.json", data / "panoptic", names, pairs, categories)
        summary[mode] = {  # PQ, SQ, RQ in percent, as the report prints them
            "branches": branches,
            "reference_seconds": round(seconds, 1),
            "pq": round(100 * gt.all.pq, 2),
            "sq": round(100 * gt.all.sq, 2),
            "rq": round(100 * gt.all.rq, 2),
            "pq_things": round(100 * gt.things.pq, 2),
            "pq_stuff": round(100 * gt.stuff.pq, 2),
        }
        by_mode[mode] = pairs
    agreement = panoptic_agreement(by_mode["buckets"], by_mode["per_size"], names, categories)
    summary["buckets_vs_per_size"] = {
        "pq": round(100 * agreement.pq, 2),
        "pixel_agreement": round(agreement.pixel_agreement, 5),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
