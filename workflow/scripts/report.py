"""Rule report: results/report.md and its plots from the benchmark JSONs (and trtexec cross-checks), plus
what did not run here."""

from pathlib import Path
from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.gates import read_verdict  # noqa: E402
from panoptic_deploy.report import write_report  # noqa: E402

summary = write_report(
    snakemake.input.bench,
    snakemake.output.report,
    plots_dir=Path(snakemake.output.latency).parent,
    skipped=snakemake.params.skipped,
    example_image=snakemake.params.example_image,
    trtexec_files=snakemake.input.trtexec,
    verdict=read_verdict(snakemake.input.verdict),
    int8_debug_files=snakemake.input.int8_debug,
)
print(summary)
