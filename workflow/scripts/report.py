"""Rule report: results/report.md and its plots from the benchmark JSONs (and trtexec cross-checks), plus
what did not run here."""

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.report import write_report  # noqa: E402

summary = write_report(
    snakemake.input.bench,
    snakemake.output.report,
    plots_dir=Path(snakemake.output.latency).parent,
    skipped=snakemake.params.skipped,
    example_image=snakemake.params.example_image,
    trtexec_files=snakemake.input.trtexec,
)
print(summary)
