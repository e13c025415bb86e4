"""Rule int8_onnx: explicit Q/DQ INT8 model whose activation scales all come from the calibration cache."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.precision import quantize_int8  # noqa: E402

report = quantize_int8(
    snakemake.input.onnx,
    snakemake.input.cache,
    snakemake.output[0],
    high_precision=snakemake.params.high_precision,
    exclude_op_types=snakemake.params.exclude_op_types,
    exclude_nodes=snakemake.params.exclude_nodes,
)
print(report)
