"""Rule export_onnx: the network at the branch's static input size to ONNX, checked against PyTorch."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.compare import Tolerance  # noqa: E402
from panoptic_deploy.export import export_onnx  # noqa: E402

report = export_onnx(
    snakemake.params.config,
    snakemake.input.weights,
    snakemake.output[0],
    snakemake.params.input_hw,
    snakemake.input.image,
    opts=snakemake.params.opts,
    opset=snakemake.params.opset,
    exporter=snakemake.params.exporter,
    tolerance=Tolerance(atol=snakemake.params.atol, rtol=snakemake.params.rtol, max_flips=0),
    threads=snakemake.threads,
    buckets=snakemake.params.buckets,
)
print(report.summary())
