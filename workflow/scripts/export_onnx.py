"""Rule export_onnx: the network at the branch's static input size to ONNX, checked against PyTorch."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

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
)
print(report.summary())
