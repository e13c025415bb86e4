"""Panoptic agreement of the device pre-/post-processing (``predict.DevicePredictor``) with the host path
(``predict.Predictor``), on the trained demo model, the 16 demo scenes and the 4 reference photos.

Run from the repository root (CPU is enough; ``--device cuda`` on a GPU machine):

    PYTHONPATH=src python3 benchmarks/device_pipeline_agreement.py [--device cpu] [--json out.json]

Per image set it reports:
- ``device_pre``: PQ / SQ / RQ and pixel agreement of the full device path against the host path (the
  reference plays ground truth); the two differ by the resampling of the pre-processing only;
- ``device_post_exact``: on how many images host pre-processing + device post-processing gives exactly the
  host result (segments and panoptic map), i.e. that the device post-processing changes nothing;
- the input difference: largest |device - host| network input value and the fraction of values that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptic_deploy.categories import load_category_set
from panoptic_deploy.compare import panoptic_agreement, panoptic_pair
from panoptic_deploy.postprocess_device import postprocess_on_device, unpack_result
from panoptic_deploy.predict import DevicePredictor, Predictor, segments_info
from panoptic_deploy.preprocess import prepare_image, prepare_on_device, read_image

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-demo-scenes.yaml"
WEIGHTS = ROOT / "demo" / "model" / "panopticfcn_scenes.pth"
CATEGORIES = ROOT / "demo" / "scenes" / "eval" / "panoptic.json"
IMAGE_SETS = {
    "demo scenes": ROOT / "demo" / "scenes" / "eval" / "images",
    "reference photos": ROOT / "demo" / "images" / "eval",
}


@torch.no_grad()
def measure_set(host: Predictor, folder: Path, device: torch.device) -> dict[str, Any]:
    cats = host.categories
    params = host.model.input_params
    tests, refs, names = [], [], []
    exact_post = 0
    max_diff, differing, values = 0.0, 0, 0
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    for path in paths:
        image = read_image(path, params.input_format)
        want = host(image)
        device_predictor = DevicePredictor(host.model, image.shape[:2], device)
        got = device_predictor(image)
        tests.append(panoptic_pair(got.panoptic_seg, segments_info(got, cats), cats))
        refs.append(panoptic_pair(want.panoptic_seg, segments_info(want, cats), cats))
        names.append(path.name)
        prepared = prepare_image(image, params)
        outputs = host.model(prepared.tensor.to(device))
        packed = postprocess_on_device(outputs, prepared.image_size, prepared.orig_size, host.model.inference)
        post = unpack_result(packed.cpu(), device_predictor.layout)
        exact_post += post.segments == want.segments and np.array_equal(post.panoptic_seg, want.panoptic_seg)
        diff = (prepare_on_device(image, params, device).cpu() - prepared.tensor).abs()
        max_diff = max(max_diff, float(diff.max()))
        differing += int(torch.count_nonzero(diff))
        values += diff.numel()
    agreement = panoptic_agreement(tests, refs, names, cats)
    return {
        "images": len(paths),
        "device_pre": agreement.to_json(),
        "device_post_exact": exact_post,
        "input_max_abs_diff": max_diff,
        "input_fraction_differing": differing / values,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    host = Predictor.from_files(CONFIG, WEIGHTS, device=device, categories=load_category_set(CATEGORIES))
    results = {name: measure_set(host, folder, device) for name, folder in IMAGE_SETS.items()}
    results["torch"] = torch.__version__
    results["device"] = str(device)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
