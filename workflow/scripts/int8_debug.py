"""Rule int8_debug: the INT8 gate's rows, FP32 vs INT8 tensor by tensor and the sensitivity search
(panoptic_deploy.int8_job). A fresh process: ModelOpt's quantize, run earlier in the same process, patches
ONNX Runtime's calibrators (the search re-quantizes only after its comparison)."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.int8_job import run_int8_debug  # noqa: E402

run = run_int8_debug(
    model=snakemake.wildcards.model,
    mode=snakemake.params.mode,
    fp32_onnx=snakemake.input.fp32,
    int8_onnx=snakemake.input.int8,
    cache=snakemake.input.cache,
    images=snakemake.input.images,
    reference=snakemake.input.reference,
    config=snakemake.params.config,
    opts=snakemake.params.opts,
    bench_files=snakemake.input.bench,
    gates_config=snakemake.params.gates,
    high_precision=snakemake.params.high_precision,
    exclude_op_types=snakemake.params.exclude_op_types,
    exclude_nodes=snakemake.params.exclude_nodes,
    search_evaluations=snakemake.params.search_evaluations,
    threads=snakemake.threads,
    output=snakemake.output[0],
)
print(f"{run.model}: {run.status}")
if run.debug is not None and run.debug.search is not None:
    print(run.debug.search.config_snippet(), end="")
