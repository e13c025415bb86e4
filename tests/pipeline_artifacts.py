"""Pipeline artefacts shared by test_export.py, test_bench.py and test_report.py (built once per process).

The model is the demo's nodeform R50 config at a tiny input (64×96) with narrow heads (64 channels, one conv
per head, 20 instance slots) so that one real dynamo export takes about a minute on 2 cores; the ResNet-50
backbone and every op of the network are kept. The three evaluation images are the fixture photos shrunk to
a few dozen pixels (all pad to 64×96). Each artefact is created lazily and cached in this module, so the
three test modules share one export whichever of them runs first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
PHOTOS = ROOT / "tests" / "fixtures" / "images"
OPTS = [
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.SEMANTIC_FPN.CONVS_DIM", "64",
    "MODEL.POSITION_HEAD.CONVS_DIM", "64", "MODEL.POSITION_HEAD.NUM_CONVS", "1",
    "MODEL.KERNEL_HEAD.CONVS_DIM", "64", "MODEL.KERNEL_HEAD.NUM_CONVS", "1",
    "MODEL.FEATURE_ENCODER.CONVS_DIM", "32", "MODEL.FEATURE_ENCODER.NUM_CONVS", "1",
    "MODEL.POSITION_HEAD.THING.TOP_NUM", "20",
]  # fmt: skip
INPUT_HW = (64, 96)
MODEL = "tiny_64x96"
# (fixture photo, shrunk size (w, h)): every one resizes to 64×96 under MIN 64 / MAX 96.
SMALL_IMAGES = {"coffee": (120, 80), "rocket": (128, 85), "chelsea": (135, 90)}


@dataclass
class Artifacts:
    root: Path
    weights: Path
    images: list[Path]
    onnx: Path | None = None
    export_report: Any = None
    sim_onnx: Path | None = None
    simplify_report: Any = None
    engine: Path | None = None
    reference: Path | None = None
    bench_torch: Path | None = None
    bench_ort: Path | None = None


_CACHE: dict[str, Artifacts] = {}


def base(factory: pytest.TempPathFactory) -> Artifacts:
    """Weights and small images."""
    if "base" not in _CACHE:
        from panoptic_deploy.weights import write_synthetic_checkpoint

        root = factory.mktemp("pipeline")
        images = []
        for name, size in SMALL_IMAGES.items():
            with Image.open(PHOTOS / f"{name}.png") as photo:
                small = photo.convert("RGB").resize(size, Image.Resampling.BILINEAR)
            small.save(root / f"{name}.png")
            images.append(root / f"{name}.png")
        weights = root / "weights.pth"
        write_synthetic_checkpoint(CONFIG, 1, weights, OPTS)
        _CACHE["base"] = Artifacts(root, weights, images)
    return _CACHE["base"]


def exported(factory: pytest.TempPathFactory) -> Artifacts:
    """+ the ONNX export (checked on the first image)."""
    art = base(factory)
    if art.onnx is None:
        from panoptic_deploy.export import export_onnx

        path = art.root / f"{MODEL}.onnx"
        art.export_report = export_onnx(CONFIG, art.weights, path, INPUT_HW, art.images[0], OPTS)
        art.onnx = path
    return art


def simplified(factory: pytest.TempPathFactory) -> Artifacts:
    """+ the simplified model (checked on all three images)."""
    art = exported(factory)
    if art.sim_onnx is None:
        from panoptic_deploy.export import prepare_verify_inputs, simplify_onnx

        assert art.onnx is not None
        path = art.root / f"{MODEL}.sim.onnx"
        inputs = prepare_verify_inputs(CONFIG, art.images, INPUT_HW, OPTS)
        art.simplify_report = simplify_onnx(art.onnx, path, inputs)
        art.sim_onnx = path
    return art


def engine(factory: pytest.TempPathFactory) -> Artifacts:
    """+ the ONNX Runtime FP32 engine of the simplified model."""
    art = simplified(factory)
    if art.engine is None:
        from panoptic_deploy.engines.onnxruntime import build_ort_engine

        assert art.sim_onnx is not None
        path = art.root / "engines" / f"{MODEL}.fp32.onnx"
        build_ort_engine(art.sim_onnx, path, precision="fp32", threads=2)
        art.engine = path
    return art


def reference(factory: pytest.TempPathFactory) -> Artifacts:
    """+ the torch FP32 reference of the three images."""
    art = base(factory)
    if art.reference is None:
        from panoptic_deploy.bench.reference import write_reference

        path = art.root / "reference" / f"{MODEL}.npz"
        write_reference(CONFIG, art.weights, art.images, path, INPUT_HW, OPTS, threads=2)
        art.reference = path
    return art


def benches(factory: pytest.TempPathFactory) -> Artifacts:
    """+ benchmark JSONs of torch FP32 and ONNX Runtime FP32."""
    art = engine(factory)
    reference(factory)
    if art.bench_torch is None or art.bench_ort is None:
        from panoptic_deploy.bench.run import BenchSpec, run_bench

        assert art.reference is not None
        art.bench_torch = art.root / "bench" / "torch" / f"{MODEL}.fp32.json"
        run_bench(BenchSpec(
            "torch", "fp32", config=CONFIG, opts=OPTS, reference=art.reference, output=art.bench_torch,
            weights=art.weights, images=art.images, device="cpu", warmup=1, iterations=4, min_seconds=0.0,
            threads=2, example_image="rocket.png",
        ))  # fmt: skip
        art.bench_ort = art.root / "bench" / "onnxruntime" / f"{MODEL}.fp32.json"
        run_bench(BenchSpec(
            "onnxruntime", "fp32", config=CONFIG, opts=OPTS, reference=art.reference, output=art.bench_ort,
            engine=art.engine, images=art.images, warmup=1, iterations=4, min_seconds=0.0, threads=2,
            example_image="rocket.png",
        ))  # fmt: skip
    return art
