"""Rule synthetic_weights: deterministic synthetic weights for the model config (the demo's checkpoint)."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.weights import write_synthetic_checkpoint  # noqa: E402

write_synthetic_checkpoint(
    snakemake.params.config, snakemake.params.seed, snakemake.output[0], opts=snakemake.params.opts
)
