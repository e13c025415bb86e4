"""Rule simplify_onnx: onnxsim or onnxslim (config export.simplifier), kept only if it reproduces the export
on the branch's evaluation images; the simplifier is recorded in the model's metadata."""

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
from panoptic_deploy.export import prepare_verify_inputs, simplify_onnx  # noqa: E402

report = simplify_onnx(
    snakemake.input.onnx,
    snakemake.output[0],
    prepare_verify_inputs(
        snakemake.params.config, snakemake.input.images, snakemake.params.input_hw, opts=snakemake.params.opts
    ),
    simplifier=snakemake.params.simplifier,
    tolerance=Tolerance(atol=snakemake.params.atol, rtol=0.0, max_flips=0),
    threads=snakemake.threads,
)
print(report.summary())
