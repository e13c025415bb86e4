"""Rule reference_outputs: torch FP32 (CPU) outputs and panoptic results on the branch's evaluation images."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.bench import write_reference  # noqa: E402
from panoptic_deploy.categories import load_category_set  # noqa: E402

reference = write_reference(
    snakemake.params.config,
    snakemake.input.weights,
    snakemake.input.images,
    snakemake.output[0],
    snakemake.params.input_hw,
    opts=snakemake.params.opts,
    model_name=snakemake.wildcards.model,
    threads=snakemake.threads,
    categories=load_category_set(snakemake.params.categories),
)
print(f"wrote {snakemake.output[0]}: {len(reference.images)} image(s)")
