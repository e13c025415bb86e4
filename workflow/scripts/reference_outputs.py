"""Rule reference_outputs: torch FP32 (CPU) outputs and panoptic results on the branch's evaluation images."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.bench.reference import write_reference  # noqa: E402
from panoptic_deploy.categories import load_category_set  # noqa: E402

reference = write_reference(
    snakemake.params.config,
    snakemake.input.weights,
    snakemake.input.images,
    snakemake.output.reference,
    snakemake.params.input_hw,
    opts=snakemake.params.opts,
    model_name=snakemake.wildcards.model,
    threads=snakemake.threads,
    categories=load_category_set(snakemake.params.categories),
    buckets=snakemake.params.buckets,
    fidelity_images=snakemake.params.fidelity_images,
)
kept = sum(1 for image in reference.images if image.outputs is not None)
print(
    f"wrote {snakemake.output.reference}: {len(reference.images)} image(s), raw outputs of {kept}; "
    f"panoptic maps in {snakemake.output.panoptic}"
)
