"""Rule verdict: results/verdict.json, the release gates (config 'gates') of every planned benchmark row."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.gates import (  # noqa: E402
    ExpectedRow,
    gates_from_config,
    verdict_of_files,
    write_verdict,
)

expected = [ExpectedRow.from_json(row) for row in snakemake.params.expected]
verdict = verdict_of_files(expected, gates_from_config(snakemake.params.gates))
write_verdict(verdict, snakemake.output[0])
print(f"wrote {snakemake.output[0]}: {verdict.status} ({len(verdict.rows)} gate row(s))")
