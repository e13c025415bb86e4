"""The workflow's INT8 debugging job (rule ``int8_debug``): ``results/int8_debug/<model>.json``.

When it runs is config ``int8.debug``:

* ``auto`` (default): the job always exists, after the branch's INT8 benchmarks. It checks the INT8 accuracy
  gate (``gates.int8.max_pq_drop``, :func:`gates.evaluate_gates`; a speedup gate is the verdict's alone,
  excluding nodes cannot make INT8 faster) on them; when every INT8 row passes it writes a short
  ``"status": "gate passed"`` file within a second and stops. When a row fails (or no INT8 row has a
  result) it runs :func:`int8_debug.debug_int8` on the first ``int8.debug_images`` calibration images and
  then the sensitivity search (:func:`int8_search.sensitivity_search`) against the torch FP32 reference.
* ``true``: the tensor-by-tensor comparison always; the search only when the gate fails (it re-runs the
  model tens of times: minutes).
* ``false``: no job.

The search aims at the gate's limit as a *fidelity* loss (PQ points lost against torch FP32 on the
reference's images). With ground truth the gate measures the drop against ground truth instead, which the
search cannot see per trial; fidelity is the stricter of the two on the demo (5.4 points lost against
torch FP32, +0.8 against ground truth), so a passing search also passes the gate there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from panoptic_deploy.fileio import PathLike
from panoptic_deploy.int8_debug import INT8_DEBUG_FORMAT_VERSION, Int8Debug, Int8DebugError
from panoptic_deploy.int8_search import SEARCH_EVALUATIONS
from panoptic_deploy.jsonfiles import write_checked_json

INT8_DEBUG_SCHEMA = "int8_debug.schema.json"
DEBUG_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class Int8DebugRun:
    """What the job decided and found: ``status`` ``"gate passed"`` (nothing debugged) or ``"debugged"``."""

    model: str
    mode: str
    status: str
    gate_rows: tuple[dict[str, Any], ...]  # the INT8 rows' verdict rows (gates.VerdictRow.to_json)
    debug: Int8Debug | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": INT8_DEBUG_FORMAT_VERSION,
            "model": self.model,
            "mode": self.mode,
            "status": self.status,
            "gate_rows": list(self.gate_rows),
            "debug": None if self.debug is None else self.debug.to_json(),
        }


def int8_gate_rows(
    bench_files: Sequence[PathLike], gates_config: Mapping[str, Any] | None, model: str
) -> tuple[list[dict[str, Any]], bool]:
    """The INT8 gate's verdict rows of ``model`` from its benchmark JSONs (torch FP32 among them, as the
    baseline) and whether its accuracy rows (``max_pq_drop``) all pass; no INT8 row with a result counts as
    not passing. A failing ``min_speedup`` does not count: excluding nodes from INT8 restores accuracy, not
    speed (the verdict still fails on it)."""
    from panoptic_deploy.bench.results import read_bench
    from panoptic_deploy.gates import evaluate_gates, gates_from_config

    results = [read_bench(p) for p in bench_files]
    verdict = evaluate_gates(results, gates_from_config(gates_config), created="")
    rows = [r.to_json() for r in verdict.rows if r.model == model and r.precision == "int8"]
    has_result = any(r.model == model and r.precision == "int8" for r in results)
    accuracy = [r for r in rows if r["gate"] == "max_pq_drop"]
    return rows, has_result and all(r["status"] == "PASS" for r in accuracy)


def run_int8_debug(
    *,
    model: str,
    mode: str,
    fp32_onnx: PathLike,
    int8_onnx: PathLike,
    cache: PathLike,
    images: Sequence[PathLike],
    reference: PathLike,
    config: PathLike,
    opts: Sequence[str],
    bench_files: Sequence[PathLike],
    gates_config: Mapping[str, Any] | None,
    high_precision: str = "fp32",
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    search_evaluations: int = SEARCH_EVALUATIONS,
    threads: int | None = None,
    output: PathLike,
) -> Int8DebugRun:
    """The ``int8_debug`` job: decide from the gate (``mode``, module docstring), debug, search, write
    ``output`` (schema ``int8_debug.schema.json``). ``high_precision`` and the exclusions are those
    ``int8_onnx`` was made with (the search re-quantizes the same way)."""
    from panoptic_deploy.defaults import schema_default

    rows, passed = int8_gate_rows(bench_files, gates_config, model)
    run = Int8DebugRun(model, mode, "gate passed" if passed else "debugged", tuple(rows))
    if mode == "true" or not passed:
        from panoptic_deploy.export import onnx_input_hw
        from panoptic_deploy.int8_debug import debug_int8
        from panoptic_deploy.precision import calibration_batches

        batches = calibration_batches(config, images, onnx_input_hw(fp32_onnx), opts)
        debug = debug_int8(fp32_onnx, int8_onnx, batches, threads=threads)
        if not passed:
            from panoptic_deploy.int8_search import panoptic_fidelity_evaluator, sensitivity_search

            limit = (gates_config or {}).get("int8", {}).get("max_pq_drop")
            budget = float(schema_default("gates", "int8")["max_pq_drop"] if limit is None else limit)
            evaluate = panoptic_fidelity_evaluator(reference, config, opts, threads)
            search = sensitivity_search(
                fp32_onnx, cache, int8_onnx, evaluate, budget,
                max_evaluations=search_evaluations, high_precision=high_precision,
                exclude_op_types=exclude_op_types,
                exclude_nodes=exclude_nodes,
            )  # fmt: skip
            debug = replace(debug, search=search)
        run = replace(run, status="debugged", debug=debug)
    write_checked_json(run.to_json(), output, INT8_DEBUG_SCHEMA, "INT8 debug result", Int8DebugError, 1)
    return run


def read_int8_debug(path: PathLike) -> dict[str, Any]:
    """``results/int8_debug/<model>.json``, checked against its schema (one-line error naming the file)."""
    from panoptic_deploy.jsonfiles import read_checked_json

    data: dict[str, Any] = read_checked_json(path, INT8_DEBUG_SCHEMA, "INT8 debug result", Int8DebugError)
    return data
