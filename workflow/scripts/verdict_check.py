"""Rule verdict_check: results/verdict.passed when the verdict is PASS; otherwise the job fails, printing each
row that did not pass to the terminal (and its log), after the report was written (it is an input)."""

import sys
from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

terminal = sys.stderr  # before the log takes over: the failing rows belong on the user's terminal too
log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.errors import first_line  # noqa: E402
from panoptic_deploy.fileio import write_text_atomic  # noqa: E402
from panoptic_deploy.gates import read_verdict, verdict_failure_lines  # noqa: E402

try:
    verdict = read_verdict(snakemake.input.verdict)
except Exception as exc:
    print(f"error: {first_line(exc)}", file=terminal)
    raise
if verdict.status != "PASS":
    lines = verdict_failure_lines(verdict, snakemake.input.verdict, snakemake.input.report)
    for stream in (terminal, sys.stderr):
        print("\n".join(lines), file=stream, flush=True)
    sys.exit(1)
summary = f"{verdict.status} {verdict.created}: {len(verdict.rows)} gate row(s)\n"
write_text_atomic(snakemake.output[0], summary)
print(f"wrote {snakemake.output[0]}")
