"""Rule fp16_onnx: mixed FP16 model (FP32 I/O); value ranges from the branch's first evaluation image."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.export import prepare_verify_inputs  # noqa: E402
from panoptic_deploy.precision import convert_fp16  # noqa: E402
from panoptic_deploy.vocab import INPUT_NAME  # noqa: E402

(image,) = prepare_verify_inputs(
    snakemake.params.config,
    [snakemake.input.image],
    snakemake.params.input_hw,
    opts=snakemake.params.opts,
    buckets=snakemake.params.buckets,
)
report = convert_fp16(
    snakemake.input.onnx,
    snakemake.output[0],
    {INPUT_NAME: image},
    data_max=snakemake.params.data_max,
    keep_fp32_op_types=snakemake.params.keep_fp32_op_types,
    keep_fp32_nodes=snakemake.params.keep_fp32_nodes,
)
print(report)
