"""Rule trtexec_tensorrt: trtexec's GPU compute time of one TensorRT engine as JSON, its output in the log."""

import logging
from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.engines.trtexec import run_trtexec, write_trtexec_check  # noqa: E402
from panoptic_deploy.gpu import check_gpu  # noqa: E402

check_gpu(snakemake.wildcards.gpu)

check, output = run_trtexec(
    snakemake.input.engine,
    iterations=snakemake.params.iterations,
    cuda_graph=snakemake.params.cuda_graph,
    profile=snakemake.output.profile,
    layer_info=snakemake.output.layer_info,
)
print(output)
write_trtexec_check(check, snakemake.output.check)
median = check.gpu_compute_median_ms
print(f"{check.engine}: trtexec GPU compute median {median} ms, CUDA graph {check.cuda_graph}")
for warning in check.warnings:
    logging.warning("%s: trtexec warned: %s", check.engine, warning)
