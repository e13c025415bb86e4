"""Rule int8_onnx: explicit Q/DQ INT8 model whose activation scales all come from the calibration cache."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.precision import quantize_int8  # noqa: E402

report = quantize_int8(
    snakemake.input.onnx,
    snakemake.input.cache,
    snakemake.output[0],
    high_precision=snakemake.params.high_precision,
    exclude_op_types=snakemake.params.exclude_op_types,
    exclude_nodes=snakemake.params.exclude_nodes,
)
print(report)
