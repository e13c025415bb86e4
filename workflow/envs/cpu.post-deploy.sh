#!/usr/bin/env bash
# Run by `snakemake --sdm conda` once, inside the new environment: install this repository's package into it
# (no dependency resolution: the environment file already pins everything, torch included).
# Snakemake runs a copy of this script from .snakemake/conda/, in its working directory (the repository root,
# or .test/ under --directory .test), so the checkout is found from there, not from this file's folder.
set -euo pipefail
repo=$PWD
until grep -qs '^name = "panoptic-deploy"' "$repo/pyproject.toml"; do
    if [ "$repo" = / ]; then
        echo "post-deploy: no panoptic-deploy checkout at or above $PWD" >&2
        exit 1
    fi
    repo=$(dirname "$repo")
done
python -m pip install --no-deps -e "$repo"
