"""FP16 / INT8 fidelity of precision variants on ONNX Runtime CPU against the pipeline's torch FP32 reference.

Used for issue 13 (docs/precision.md, "Graph correctness"): FP16 with the GroupNorm normalisations
(InstanceNormalization) in FP16 or kept FP32 (``normalization_fp32``), and INT8 with the selection rule.
It reads the artefacts a pipeline run left in ``--results`` (``onnx/<model>.sim.onnx``,
``calibration/<model>.int8.cache``, ``reference/<model>.npz``), writes each variant's ONNX, ORT engine and
bench JSON under ``--out`` and prints one line per variant: PQ / SQ / RQ and pixel agreement against torch
FP32, and the instances matched.

    PYTHONPATH=src python benchmarks/graph_precision_fidelity.py --results results --out /tmp/variants \\
        fp16-norm16 fp16-norm32 int8+fp32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from panoptic_deploy.bench.reference import read_reference
from panoptic_deploy.bench.run import BenchSpec, run_bench
from panoptic_deploy.engines.onnxruntime import build_ort_engine
from panoptic_deploy.export import prepare_verify_inputs
from panoptic_deploy.modeling import INPUT_NAME
from panoptic_deploy.precision import convert_fp16, quantize_int8

VARIANTS = ("fp16-norm16", "fp16-norm32", "int8+fp32", "int8+fp16")


def build(
    variant: str, sim: Path, cache: Path, image: Path, config: str, hw: tuple[int, int], out: Path
) -> Path:
    path = out / f"{variant}.onnx"
    if variant.startswith("fp16"):
        (batch,) = prepare_verify_inputs(config, [image], hw)
        convert_fp16(sim, path, {INPUT_NAME: batch}, normalization_fp32=variant == "fp16-norm32")
    else:
        quantize_int8(sim, cache, path, high_precision=variant.split("+")[1])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", default="demo_416x608")
    parser.add_argument("--config", default="configs/PanopticFCN-R50-400-3x-FAST-nodeform.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    sim = args.results / "onnx" / f"{args.model}.sim.onnx"
    cache = args.results / "calibration" / f"{args.model}.int8.cache"
    reference = args.results / "reference" / f"{args.model}.npz"
    ref = read_reference(reference)
    images = [Path(image.path) for image in ref.images]
    hw = ref.input_shape[2:]
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        started = time.perf_counter()
        onnx_path = build(variant, sim, cache, images[0], args.config, hw, args.out)
        precision = variant.split("+")[0].split("-")[0]
        engine = args.out / "engines" / f"{variant}.onnx"
        build_ort_engine(onnx_path, engine, precision=precision, threads=args.threads)
        result = run_bench(BenchSpec(
            "onnxruntime", precision, config=args.config, reference=reference, images=images, engine=engine,
            output=args.out / f"{variant}.json", warmup=0, iterations=1, threads=args.threads,
        ))  # fmt: skip
        acc = result.accuracy
        pan = acc.panoptic
        classes = acc.tensors["inst_classes"]
        print(
            json.dumps(
                {
                    "variant": variant,
                    "pq": round(100 * pan.pq, 2),
                    "sq": round(100 * pan.sq, 2),
                    "rq": round(100 * pan.rq, 2),
                    "pixel_agreement": round(100 * pan.pixel_agreement, 3),
                    "instances": [acc.instances_reference, acc.instances_backend, acc.instances_matched],
                    "inst_classes_mismatches": classes.mismatches,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
