"""Rule engine_tensorrt: a strongly typed TensorRT engine of one precision, plus its JSON sidecar."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.engines.tensorrt import build_trt_engine  # noqa: E402
from panoptic_deploy.gpu import check_gpu  # noqa: E402

# The path names the GPU type; a plan built on another card would be filed under the wrong one.
gpu = check_gpu(snakemake.wildcards.gpu)
print(f"GPU {gpu.name} (compute capability {gpu.compute_capability}, driver {gpu.driver})")

sidecar = build_trt_engine(
    snakemake.input.onnx,
    snakemake.output.engine,
    workspace_bytes=snakemake.params.workspace_bytes,
    optimization_level=snakemake.params.optimization_level,
    timing_cache_path=snakemake.params.timing_cache,
    input_shape=snakemake.params.input_shape,
    precision=snakemake.wildcards.precision,
    gpu_type=snakemake.wildcards.gpu,
)
print(f"built {snakemake.output.engine} in {sidecar.build_seconds} s")
