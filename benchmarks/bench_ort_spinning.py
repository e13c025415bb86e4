"""ONNX Runtime's spinning intra-op threads against the host post-processing that follows each run.

Run from the repository root on an exported model (``panoptic-deploy export ... --output model.onnx``):

    PYTHONPATH=src python benchmarks/bench_ort_spinning.py --onnx model.onnx \
        --image demo/images/eval/coffee.png --threads 16 --order 0,1,0,1,0,1

For each entry of ``--order`` (1 = ``session.intra_op.allow_spinning`` on, ONNX Runtime's default; 0 = off,
what ``engines.onnxruntime.ort_session_options`` sets) a new CPU session runs the network, then
``postprocess`` runs right after it, 8 times; the medians of the last 6 (ms) are printed. Alternating the
order shows drift.
"""

from __future__ import annotations

import argparse
import statistics
import time

import onnxruntime as ort
import torch

from panoptic_deploy.config import load_config
from panoptic_deploy.modeling.panoptic_fcn import inference_params_from_config, input_params_from_config
from panoptic_deploy.postprocess import postprocess
from panoptic_deploy.preprocess import prepare_image, read_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--config", default="configs/PanopticFCN-R50-400-3x-FAST-nodeform.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--order", default="0,1,0,1")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    input_params, inference = input_params_from_config(cfg), inference_params_from_config(cfg)
    prepared = prepare_image(read_image(args.image, input_params.input_format), input_params)
    x = prepared.tensor.numpy()
    for spin in args.order.split(","):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        network, post = [], []
        for run in range(8):
            t0 = time.perf_counter()
            outputs = session.run(None, {session.get_inputs()[0].name: x})
            t1 = time.perf_counter()
            postprocess(
                dict(zip(names, outputs, strict=True)), prepared.image_size, prepared.orig_size, inference
            )
            t2 = time.perf_counter()
            if run >= 2:
                network.append((t1 - t0) * 1e3)
                post.append((t2 - t1) * 1e3)
        print(
            f"allow_spinning={spin} threads={args.threads}: network {statistics.median(network):.1f} ms, "
            f"postprocess {statistics.median(post):.1f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
