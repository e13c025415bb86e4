"""Rule engine_tensorrt: a strongly typed TensorRT engine of one precision, plus its JSON sidecar."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

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
