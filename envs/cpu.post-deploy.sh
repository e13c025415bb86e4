#!/usr/bin/env bash
# Run by `snakemake --sdm conda` once, inside the new environment: install this repository's package into it
# (no dependency resolution: the environment file already pins everything, torch included).
set -euo pipefail
python -m pip install --no-deps -e "$(dirname "$0")/.."
