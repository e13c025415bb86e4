"""Accuracy cost of size buckets (``model.input_sizes: {buckets: ...}``) against per-size branches.

Generates a many-size scene set (``make_dataset`` at 10 scene sizes that pad to 10 different network inputs
under the demo model's 320/400 test resize, 4 scenes each, with ground truth), plans it twice with the demo
config (``input_sizes: auto``: 10 branches; ``{buckets: [[320, 416], [416, 320]]}``: 2 branches) through
:func:`panoptic_deploy.plan.plan`, and runs every branch's torch FP32 CPU reference (the workflow's
``reference_outputs`` job: :func:`write_reference` with the branch's input size and buckets) with the trained
demo checkpoint. Prints PQ against the ground truth per mode, PQ and pixel agreement of the bucket results
against the per-size results (all images, and per padded size), and the wall time of the reference jobs.

Run from the repository root: ``python benchmarks/bucket_padding.py [--threads 2] [--out DIR]``;
``--out DIR --summarize-only`` prints the summary of an earlier run's references again.
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
from panoptic_deploy.bench.reference import read_reference, write_reference
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


def run_mode(cfg: dict[str, Any], out: Path, threads: int) -> tuple[int, float]:
    """Every branch's torch FP32 reference under ``out``: the branch count and the seconds taken."""
    the_plan = plan(cfg)
    start = time.perf_counter()
    for name, branch in the_plan.branches.items():
        model = the_plan.model_of(name)
        write_reference(
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
    return len(the_plan.branches), time.perf_counter() - start


def read_mode(folder: Path) -> dict[str, tuple[ImagePanoptic, tuple[int, ...]]]:
    """{image name: (panoptic result, network input H, W)} of the references in ``folder``."""
    results = {}
    for path in sorted(folder.glob("*.npz")):
        ref = read_reference(path)
        results.update({image.name: (image.panoptic, ref.input_shape[2:]) for image in ref.images})
    return results


def percent(value: float) -> float:
    return round(100 * value, 2)


def summarize(out: Path) -> dict[str, Any]:
    """PQ vs ground truth per mode, and bucket vs per-size agreement (all images, and per padded size)."""
    data = out / "data"
    categories = load_category_set(str(data / "panoptic.json"))
    modes = {mode: read_mode(out / mode) for mode in ("per_size", "buckets")}
    names = sorted(modes["per_size"])
    pairs = {mode: [results[n][0].pair(categories) for n in names] for mode, results in modes.items()}
    summary: dict[str, Any] = {"images": len(names)}
    for mode in modes:
        gt = ground_truth_pq(data / "panoptic.json", data / "panoptic", names, pairs[mode], categories)
        summary[mode] = {  # in percent, as the report prints them
            "pq": percent(gt.all.pq),
            "sq": percent(gt.all.sq),
            "rq": percent(gt.all.rq),
            "pq_things": percent(gt.things.pq),
            "pq_stuff": percent(gt.stuff.pq),
        }
    agreement = panoptic_agreement(pairs["buckets"], pairs["per_size"], names, categories)
    summary["buckets_vs_per_size"] = {
        "pq": percent(agreement.pq),
        "pixels": percent(agreement.pixel_agreement),
    }
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k, name in enumerate(names):
        by_size.setdefault(modes["per_size"][name][1], []).append(k)
    rows = []
    for size, ks in sorted(by_size.items()):
        part = panoptic_agreement([pairs["buckets"][k] for k in ks], [pairs["per_size"][k] for k in ks],
                                  [names[k] for k in ks], categories)  # fmt: skip
        bucket = modes["buckets"][names[ks[0]]][1]
        rows.append(f"{size[0]}x{size[1]} -> {bucket[0]}x{bucket[1]} ({len(ks)} images): "
                    f"PQ {percent(part.pq)}, pixels {percent(part.pixel_agreement)} %")  # fmt: skip
    summary["by_padded_size"] = rows
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="a new folder for the data and references")
    parser.add_argument("--summarize-only", action="store_true", help="summarize an earlier run's --out")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bucket-padding-"))
    timings = {}
    if not args.summarize_only:
        data = make_many_size_set(out / "data")
        for mode, sizes in (("per_size", "auto"), ("buckets", {"buckets": BUCKETS})):
            branches, seconds = run_mode(workflow_config(data, sizes), out / mode, args.threads)
            timings[mode] = {"branches": branches, "reference_seconds": round(seconds, 1)}
    print(json.dumps({"timings": timings, **summarize(out)}, indent=2))


if __name__ == "__main__":
    main()
