"""Defaults of every setting the workflow config and the library share, read from the one place that
states them: the workflow's config schema (``workflow/schemas/config.schema.yaml``; the package's
``schemas/config.schema.yaml`` is a link to it, so a wheel ships the same file).

Before, the schema, the library and the CLI each wrote their own numbers and they had drifted (benchmark
warm-up runs: 2 in the schema, 1 in the library and the CLI). The library now asks :func:`schema_default`,
so ``panoptic-deploy bench`` without ``--warmup`` runs what ``make report`` runs.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

CONFIG_SCHEMA = "schemas/config.schema.yaml"  # in the package


@cache
def config_schema() -> dict[str, Any]:
    """The workflow config's JSON schema (YAML), as shipped with the package."""
    text = resources.files("panoptic_deploy").joinpath(CONFIG_SCHEMA).read_text("utf-8")
    schema: dict[str, Any] = yaml.safe_load(text)
    return schema


def schema_default(section: str, key: str) -> Any:
    """The schema's default of config key ``section.key`` (e.g. ``bench.warmup``); KeyError for a key the
    schema does not define with a default (a typo here must not pass silently)."""
    return config_schema()["properties"][section]["properties"][key]["default"]
