"""Stage timings of the host path (``predict.Predictor``) against the device path
(``predict.DevicePredictor``, eager and, on CUDA, captured as one CUDA graph), per image.

Run from the repository root (issue 12 items 1-2; on a GPU machine with ``--device cuda``):

    PYTHONPATH=src python3 benchmarks/bench_device_pipeline.py --device cuda [--iters 200] [--json out.json]
    PYTHONPATH=src python3 benchmarks/bench_device_pipeline.py --device cuda --weights synthetic \\
        --config configs/PanopticFCN-R50-400-3x-FAST-nodeform.yaml

Stages, p50 in ms over ``--iters`` calls after ``--warmup`` (CUDA events around each stage on CUDA, wall clock
on a CPU); every stage starts from what a user has (the decoded uint8 image on the host) or from the previous
stage's output, already on the device:
- ``pre_host`` (PIL resize + normalise + copy to the device), ``pre_device`` (``prepare_on_device``);
- ``network`` (``PanopticFCN.forward`` on the padded input);
- ``post_host`` (``postprocess`` from the network outputs to the host result), ``post_device``
  (``postprocess_on_device`` + one copy back + ``unpack_result``);
- ``e2e_host``, ``e2e_device`` (image on the host -> ``PanopticResult`` on the host) and, on CUDA,
  ``e2e_graph`` (``DevicePredictor.capture()``: copy in, replay, one copy out, unpack).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from panoptic_deploy.categories import load_category_set
from panoptic_deploy.postprocess import postprocess
from panoptic_deploy.postprocess_device import postprocess_on_device, unpack_result
from panoptic_deploy.predict import DevicePredictor, Predictor
from panoptic_deploy.preprocess import prepare_image, prepare_on_device, read_image
from panoptic_deploy.weights import write_synthetic_checkpoint

ROOT = Path(__file__).parents[1]


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """p50 of ``fn`` in ms (CUDA events on CUDA, wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            began = time.perf_counter()
            fn()
            samples.append(1000 * (time.perf_counter() - began))
    return statistics.median(samples)


@torch.no_grad()
def bench_image(host: Predictor, path: Path, device: torch.device, warmup: int, iters: int) -> dict[str, Any]:
    model, params = host.model, host.model.input_params
    image = read_image(path, params.input_format)
    prepared = prepare_image(image, params)
    net_input = prepared.tensor.to(device)
    outputs = model(net_input)
    predictor = DevicePredictor(model, image.shape[:2], device)
    predictor(image)
    sizes = (prepared.image_size, prepared.orig_size)
    row: dict[str, Any] = {
        "image": path.name,
        "orig_hw": list(image.shape[:2]),
        "input_hw": list(predictor.input_hw),
    }
    stages: dict[str, Callable[[], Any]] = {
        "pre_host": lambda: prepare_image(image, params).tensor.to(device),
        "pre_device": lambda: prepare_on_device(image, params, device),
        "network": lambda: model(net_input),
        "post_host": lambda: postprocess(outputs, *sizes, model.inference),
        "post_device": lambda: unpack_result(
            postprocess_on_device(outputs, *sizes, model.inference).cpu(), predictor.layout
        ),
        "e2e_host": lambda: host(image),
        "e2e_device": lambda: predictor(image),
    }
    if device.type == "cuda":
        captured = predictor.capture()
        stages["e2e_graph"] = lambda: captured(image)
    for name, fn in stages.items():
        row[name] = timed(fn, device, warmup, iters)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "PanopticFCN-R50-demo-scenes.yaml")
    parser.add_argument("--weights", default=str(ROOT / "demo" / "model" / "panopticfcn_scenes.pth"),
                        help="a checkpoint, or 'synthetic' (SEED=1, COCO categories)")  # fmt: skip
    parser.add_argument("--categories", default=str(ROOT / "demo" / "scenes" / "eval" / "panoptic.json"))
    parser.add_argument("--images", type=Path, nargs="+",
                        default=sorted((ROOT / "demo" / "images" / "eval").glob("*.png")))  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        weights, categories = args.weights, load_category_set(args.categories)
        if args.weights == "synthetic":
            weights = str(Path(scratch) / "synthetic.pth")
            write_synthetic_checkpoint(args.config, 1, weights)
            categories = load_category_set("coco")
        host = Predictor.from_files(args.config, weights, device=device, categories=categories)
    rows = [bench_image(host, path, device, args.warmup, args.iters) for path in args.images]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "config": str(args.config), "rows": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
