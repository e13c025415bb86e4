"""Rule calibration_cache: activation ranges of the FP32 model on the calibration images (the tracked
artifact); see panoptic_deploy.precision.calibration_batches for how images are fitted to the input."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.precision import calibrate, calibration_batches  # noqa: E402

report = calibrate(
    snakemake.input.onnx,
    calibration_batches(
        snakemake.params.config, snakemake.input.images, snakemake.params.input_hw, snakemake.params.opts
    ),
    snakemake.params.method,
    snakemake.output[0],
    percentile=snakemake.params.percentile,
    num_bins=snakemake.params.num_bins,
)
print(report)
