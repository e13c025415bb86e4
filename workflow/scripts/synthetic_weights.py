"""Rule synthetic_weights: deterministic synthetic weights for the model config (the demo's checkpoint)."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.weights import write_synthetic_checkpoint  # noqa: E402

write_synthetic_checkpoint(
    snakemake.params.config, snakemake.params.seed, snakemake.output[0], opts=snakemake.params.opts
)
