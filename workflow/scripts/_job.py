"""The first call of every workflow script: this job's output goes to its log file.

Snakemake puts this folder on ``sys.path`` for ``script:`` jobs, so each script imports this module.
"""

import logging
import sys
from pathlib import Path
from typing import Any


def log_to_job_file(snakemake: Any) -> None:
    """Send everything this job prints, warns or raises to its rule's ``log:`` file (line-buffered, so a
    killed job's log ends at its last line) and log INFO there. Call it before importing the package: an
    import error then lands in the log file too."""
    sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
