"""The models a workflow config names: config ``model`` (one model) or the model sheet ``models`` (a TSV,
one row per model, as the snakemake-workflows template does for samples). Torch-free: the workflow plan
(:mod:`panoptic_deploy.plan`) reads it at parse time.

A :class:`ModelEntry` is a sheet row (name, config file, checkpoint, overrides, category set); the parsed
model config of one is :class:`panoptic_deploy.spec.ModelSpec`, built by the jobs.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoptic_deploy.errors import ConfigError

# Columns of the model sheet: name and config are required; an empty cell takes the 'model:' default.
SHEET_COLUMNS = ("name", "config", "checkpoint", "opts", "categories")
SHEET_REQUIRED = ("name", "config")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ModelEntry:
    """One model: a row of the model sheet, or config 'model'."""

    name: str
    config: str
    checkpoint: str | None  # None: synthetic weights (results/weights/<name>.pth)
    opts: tuple[str, ...]
    categories: str  # "coco" or a JSON file
    synthetic_seed: int
    input_sizes: str | tuple[tuple[int, int], ...]  # "auto", "buckets" or the pinned [H, W] sizes
    buckets: tuple[tuple[int, int], ...] | None = None  # the [H, W] size buckets (input_sizes "buckets")

    @property
    def weights(self) -> str:
        return self.checkpoint or f"results/weights/{self.name}.pth"

    @property
    def bucket_list(self) -> list[list[int]] | None:
        """The size buckets as [[H, W], ...] (a job parameter), None without buckets."""
        return None if self.buckets is None else [[h, w] for h, w in self.buckets]


def _opts(values: Iterable[Any]) -> tuple[str, ...]:
    """Model-config overrides as strings (YAML may give numbers or booleans)."""
    return tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values)


def _input_sizes(sizes: Any) -> dict[str, Any]:
    """The ModelEntry fields of config 'model.input_sizes': auto, a pinned list, or {buckets: [...]}."""
    if sizes == "auto":
        return {"input_sizes": "auto"}
    if isinstance(sizes, Mapping):
        return {"input_sizes": "buckets", "buckets": tuple((int(h), int(w)) for h, w in sizes["buckets"])}
    return {"input_sizes": tuple((int(h), int(w)) for h, w in sizes)}


def read_model_sheet(path: str | os.PathLike[str], defaults: Mapping[str, Any]) -> list[ModelEntry]:
    """The rows of a model sheet (tab-separated, a header row, ``#`` comments); ``defaults``: config 'model'.

    ``opts`` is a space-separated KEY VALUE list; an empty ``checkpoint`` means synthetic weights and an
    empty ``categories`` the 'model.categories' default.
    """
    sheet = Path(path)
    if not sheet.is_file():
        raise ConfigError(f"config key 'models': model sheet '{sheet}' does not exist")
    lines = [line for line in sheet.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    reader = csv.DictReader([line for line in lines if line.strip()], delimiter="\t")
    header = tuple(reader.fieldnames or ())
    missing = [c for c in SHEET_REQUIRED if c not in header]
    unknown = [c for c in header if c not in SHEET_COLUMNS]
    if missing or unknown:
        what = f"lacks column(s) {', '.join(missing)}" if missing else f"has unknown column(s) {unknown}"
        raise ConfigError(
            f"config key 'models': '{sheet}' {what} (columns: {', '.join(SHEET_COLUMNS)}, tab-separated)"
        )
    specs = []
    for number, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ConfigError(
                f"config key 'models': '{sheet}' row {number}: not {len(header)} tab-separated cells"
            )
        cells = {k: (v or "").strip() for k, v in row.items()}
        for column in SHEET_REQUIRED:
            if not cells[column]:
                raise ConfigError(f"config key 'models': '{sheet}' row {number}: empty '{column}'")
        specs.append(
            ModelEntry(
                name=cells["name"],
                config=cells["config"],
                checkpoint=cells.get("checkpoint") or None,
                opts=tuple(cells.get("opts", "").split()),
                categories=cells.get("categories") or str(defaults["categories"]),
                synthetic_seed=int(defaults["synthetic_seed"]),
                **_input_sizes(defaults["input_sizes"]),
            )
        )
    if not specs:
        raise ConfigError(f"config key 'models': model sheet '{sheet}' has no model row")
    return specs


def model_entries(config: Mapping[str, Any]) -> dict[str, ModelEntry]:
    """The models of config ``model`` (one) or of the model sheet ``models``, by name, checked."""
    model = config["model"]
    if config.get("models"):
        specs = read_model_sheet(config["models"], model)
    else:
        specs = [
            ModelEntry(
                name=model["name"],
                config=model["config"],
                checkpoint=model["checkpoint"],
                opts=_opts(model["opts"]),
                categories=model["categories"],
                synthetic_seed=int(model["synthetic_seed"]),
                **_input_sizes(model["input_sizes"]),
            )
        ]
    out: dict[str, ModelEntry] = {}
    for spec in specs:
        key = "models" if config.get("models") else "model.name"
        if not _NAME.fullmatch(spec.name):
            raise ConfigError(
                f"config key '{key}': model name {spec.name!r}: letters, digits, '-' and '_' only"
            )
        if spec.name in out:
            raise ConfigError(f"config key '{key}': two models are named '{spec.name}'")
        if spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
            which = "models" if config.get("models") else "model.checkpoint"
            raise ConfigError(f"config key '{which}': checkpoint '{spec.checkpoint}' does not exist")
        out[spec.name] = spec
    return out
