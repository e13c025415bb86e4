"""Rule engine_onnxruntime: the CPU-provider-optimised ONNX model of one precision, plus its JSON sidecar."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.engines.onnxruntime import build_ort_engine  # noqa: E402

sidecar = build_ort_engine(
    snakemake.input.onnx,
    snakemake.output.engine,
    precision=snakemake.wildcards.precision,
    threads=snakemake.params.threads,
)
print(f"built {snakemake.output.engine} in {sidecar.build_seconds} s")
