"""Rule engine_onnxruntime: the CPU-provider-optimised ONNX model of one precision, plus its JSON sidecar."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.engines.onnxruntime import build_ort_engine  # noqa: E402

sidecar = build_ort_engine(
    snakemake.input.onnx,
    snakemake.output.engine,
    precision=snakemake.wildcards.precision,
    threads=snakemake.params.threads,
)
print(f"built {snakemake.output.engine} in {sidecar.build_seconds} s")
