"""Stage independence: reading benchmark results and rendering the report load no torch, and the export
and bench stages stand side by side (neither imports the other)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "panoptic_deploy"


@pytest.mark.parametrize(
    "module", ["panoptic_deploy.report", "panoptic_deploy.bench.results", "panoptic_deploy.plan"]
)
def test_module_loads_no_torch(module: str) -> None:
    # A fresh interpreter: this pytest process has imported torch long ago.
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def _imported_modules(package: str) -> set[str]:
    """Every panoptic_deploy module a subpackage's files import, at module level or inside functions."""
    found: set[str] = set()
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("panoptic_deploy.")}


@pytest.mark.parametrize(("package", "other"), [("export", "bench"), ("bench", "export")])
def test_export_and_bench_do_not_import_each_other(package: str, other: str) -> None:
    prefix = f"panoptic_deploy.{other}"
    assert sorted(m for m in _imported_modules(package) if m == prefix or m.startswith(prefix + ".")) == []


STAGES = ("cli", "export", "precision", "engines", "bench", "report")


def _stage_graph() -> dict[str, set[str]]:
    """Stage package -> the stage packages its files import (subpackages and modules collapsed)."""
    return {
        stage: {m.split(".")[1] for m in _imported_modules(stage)} & set(STAGES) - {stage} for stage in STAGES
    }


def test_stages_stack_at_most_five_deep_below_the_cli() -> None:
    # Measured when the hub modules were split (issue 10): 3 (cli -> report -> bench -> engines); before, 5
    # (cli -> report -> bench -> export -> precision -> engines).
    graph = _stage_graph()

    def depth(stage: str, seen: frozenset[str]) -> int:
        return max((1 + depth(d, seen | {d}) for d in graph.get(stage, set()) if d not in seen), default=0)

    assert depth("cli", frozenset({"cli"})) <= 5
