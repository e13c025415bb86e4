"""Rule polygraphy_files: a branch's evaluation inputs and torch FP32 outputs as Polygraphy JSON."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.polygraphy_io import write_reference_for_polygraphy  # noqa: E402

count = write_reference_for_polygraphy(
    snakemake.input.reference,
    snakemake.params.config,
    snakemake.output.inputs,
    snakemake.output.outputs,
    opts=snakemake.params.opts,
    max_images=snakemake.params.images,
)
print(f"wrote {snakemake.output.inputs} and {snakemake.output.outputs}: {count} image(s)")
