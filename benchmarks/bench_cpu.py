"""Eager CPU latency of our PanopticFCN, stage by stage, beside the official-style post-processing.

Run from the repository root:

    PYTHONPATH=src:tests python benchmarks/bench_cpu.py --threads 2 --repeats 5

Per reference photo (nodeform R50-400-3x-FAST, synthetic weights SEED=1): pre-processing, the
convolutional network (``forward_heads``), our fixed-size decode + host post-processing, the straightforward
official-style post-processing of spec §6 (``tests/reference_impl.py``: ``unique``, boolean indexing,
Python loops) on the same head outputs, and the whole predictor call. Rounds are interleaved (every stage
of every image once per round); each figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from panoptic_deploy.config import load_config
from panoptic_deploy.modeling import build_model
from panoptic_deploy.postprocess import postprocess
from panoptic_deploy.predict import Predictor
from panoptic_deploy.preprocess import prepare_image, read_image
from panoptic_deploy.weights import synthetic_state_dict
from reference_impl import reference_inference

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
IMAGES = [
    ROOT / "tests" / "fixtures" / "images" / f"{n}.png" for n in ("astronaut", "chelsea", "coffee", "rocket")
]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = build_model(load_config(CONFIG))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state_dict(shapes, 1).items()})
    predictor = Predictor(model)
    images = {p.name: read_image(p) for p in IMAGES}
    stages = ("preprocess", "network", "decode+postprocess", "official-style postprocess", "predictor")
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in stages} for n in images}
    with torch.no_grad():
        for image in images.values():  # warm-up
            predictor(image)
        for _ in range(args.repeats):
            for name, image in images.items():
                t = times[name]
                prepared = prepare_image(image, model.input_params)
                t["preprocess"].append(timed(lambda: prepare_image(image, model.input_params)))
                heads = model.forward_heads(prepared.tensor)
                t["network"].append(timed(lambda: model.forward_heads(prepared.tensor)))
                t["decode+postprocess"].append(
                    timed(
                        lambda: postprocess(
                            model.decode(heads), prepared.image_size, prepared.orig_size, model.inference
                        )
                    )
                )
                t["official-style postprocess"].append(
                    timed(lambda: reference_inference(model, heads, prepared.image_size, prepared.orig_size))
                )
                t["predictor"].append(timed(lambda: predictor(image)))
    medians = {n: {s: statistics.median(v) for s, v in t.items()} for n, t in times.items()}
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(env))
    print("| image | " + " | ".join(f"{s} (ms)" for s in stages) + " |")
    print("|---|" + "---|" * len(stages))
    for name, m in medians.items():
        print(f"| {name} | " + " | ".join(f"{m[s]:.0f}" for s in stages) + " |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "medians_ms": medians, "raw_ms": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
