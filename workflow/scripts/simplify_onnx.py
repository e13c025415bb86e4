"""Rule simplify_onnx: onnxsim or onnxslim (config export.simplifier), kept only if it reproduces the export
on the branch's evaluation images; the simplifier is recorded in the model's metadata."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.compare import Tolerance  # noqa: E402
from panoptic_deploy.export import prepare_verify_inputs, simplify_onnx  # noqa: E402

report = simplify_onnx(
    snakemake.input.onnx,
    snakemake.output[0],
    prepare_verify_inputs(
        snakemake.params.config,
        snakemake.input.images,
        snakemake.params.input_hw,
        opts=snakemake.params.opts,
        buckets=snakemake.params.buckets,
    ),
    simplifier=snakemake.params.simplifier,
    tolerance=Tolerance(atol=snakemake.params.atol, rtol=0.0, max_flips=0),
    threads=snakemake.threads,
)
print(report.summary())
