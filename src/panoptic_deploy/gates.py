"""Release gates: PASS / FAIL / NOT RUN per benchmark row, ``results/verdict.json`` and its report table.

Config ``gates:`` (workflow/schemas/config.schema.yaml) holds one gate per precision::

    gates:
      fp16: {max_pq_drop: 0.5}
      int8: {max_pq_drop: 2.0, min_speedup: 1.5}

``max_pq_drop`` is in PQ points (0..100). It is measured against ground truth when the row carries a
ground-truth PQ (config ``evaluation.gt_json``) and the torch FP32 row does too: the drop is the baseline's
PQ minus the row's. Otherwise it is fidelity against the torch FP32 reference: 100 · (1 − PQ of the row's
panoptic output with the reference as ground truth), which needs no ground truth. ``min_speedup`` is the
network p50 of the torch FP32 row divided by the row's (the report's "speedup vs torch FP32" column).

:func:`evaluate_gates` is a pure function of the benchmark results (and of the rows whose benchmark did not
produce a result: :class:`RowFailure`, e.g. from :func:`collect_bench_rows` with the job logs). A failed job
is a FAIL row carrying its error line; a job that left no result and no error (an upstream job failed) is a
NOT RUN row; a gate that cannot be measured (no baseline row for a speedup, no segments to measure PQ on) is
NOT RUN with the reason. The verdict is PASS only when every row passes, so CI can exit on anything else
(:meth:`Verdict.exit_code`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from panoptic_deploy import __version__
from panoptic_deploy.bench.results import BenchResult, baseline_row, read_bench, row_where
from panoptic_deploy.errors import BenchError, PanopticDeployError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.jsonfiles import read_checked_json, write_checked_json
from panoptic_deploy.vocab import BENCH_BACKENDS, CPU, PRECISIONS

Status = Literal["PASS", "FAIL", "NOT RUN"]
STATUSES: tuple[Status, ...] = ("PASS", "FAIL", "NOT RUN")
VERDICT_SCHEMA_VERSION = 1
GATE_KEYS = ("max_pq_drop", "min_speedup")
# An error line longer than this is cut: the table cell and the JSON field stay one readable line.
MAX_ERROR_CHARS = 300


class GateError(PanopticDeployError):
    """A gates config or a verdict file is invalid."""


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Gate:
    """One precision's gate; a ``None`` limit is not checked."""

    max_pq_drop: float | None = None  # PQ points (0..100)
    min_speedup: float | None = None  # torch FP32 network p50 / this row's

    @property
    def empty(self) -> bool:
        return self.max_pq_drop is None and self.min_speedup is None


@dataclass(frozen=True)
class Gates:
    """Gate per precision (``fp32`` / ``fp16`` / ``int8``); a precision without an entry is not gated."""

    per_precision: dict[str, Gate] = field(default_factory=dict)

    def for_precision(self, precision: str) -> Gate:
        return self.per_precision.get(precision, Gate())


def gates_from_config(data: Mapping[str, Any] | None, where: str = "config key 'gates'") -> Gates:
    """:class:`Gates` from the config's ``gates`` mapping (as validated by the schema, or hand-written);
    :class:`GateError` naming the key for an unknown precision or key, or a limit that is not a number >= 0
    (``min_speedup`` > 0)."""
    if data is None:
        return Gates()
    if not isinstance(data, Mapping):
        raise GateError(f"{where}: expected a mapping of precision -> gate, got {type(data).__name__}")
    gates: dict[str, Gate] = {}
    for precision, entry in data.items():
        key = f"{where}.{precision}"
        if precision not in PRECISIONS:
            raise GateError(f"{where}: unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise GateError(f"{key}: expected a mapping with {' and/or '.join(GATE_KEYS)}")
        unknown = sorted(set(entry) - set(GATE_KEYS))
        if unknown:
            raise GateError(f"{key}: unknown key {unknown[0]!r} (allowed: {', '.join(GATE_KEYS)})")
        limits: dict[str, float | None] = {}
        for name in GATE_KEYS:
            value = entry.get(name)
            # bool is an int subclass: 'true' is a typo here, not a limit of 1.
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise GateError(f"{key}.{name}: expected a number or null, got {value!r}")
            if value is not None and (value < 0 or (name == "min_speedup" and value == 0)):
                raise GateError(f"{key}.{name}: must be {'> 0' if name == 'min_speedup' else '>= 0'}")
            limits[name] = None if value is None else float(value)
        gate = Gate(**limits)
        if not gate.empty:
            gates[str(precision)] = gate
    return Gates(gates)


# ---------------------------------------------------------------------------------------------------------
# Verdict


@dataclass(frozen=True)
class RowFailure:
    """A requested benchmark row that produced no (valid) result; ``error`` is its one-line error, or
    ``None`` when the job never ran (an upstream job failed, or ``--keep-going`` skipped it)."""

    model: str
    backend: str
    precision: str
    error: str | None = None
    device: str = CPU  # the plan's device: "cpu" or a GPU type of config 'gpus'


@dataclass(frozen=True)
class VerdictRow:
    """One gate of one benchmark row."""

    row: str  # "<model> <backend> <precision>[ on <GPU>]"
    model: str
    backend: str
    precision: str
    device: str | None  # None when the row has no result
    gate: str  # "max_pq_drop" | "min_speedup" | "completes" (a row without result, or without gates)
    limit: float | None
    measured: float | None
    basis: str  # how it was measured: "ground truth", "fidelity vs torch FP32", "network p50", ""
    status: Status
    detail: str = ""  # the error line or why the gate was not measured

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "gate": self.gate,
            "limit": self.limit,
            "measured": self.measured,
            "basis": self.basis,
            "status": self.status,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerdictRow:
        return cls(**data)


@dataclass(frozen=True)
class Verdict:
    """Every gate row, and the overall status: FAIL if any row fails, else NOT RUN if any row did not run,
    else PASS (also with no rows: nothing was gated and every job succeeded)."""

    rows: tuple[VerdictRow, ...]
    status: Status
    gates: dict[str, dict[str, float | None]]
    created: str = ""
    package_version: str = __version__
    schema_version: int = VERDICT_SCHEMA_VERSION

    def count(self, status: Status) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def exit_code(self) -> int:
        """0 for PASS, 1 otherwise (what ``panoptic-deploy verdict`` / a CI step exits with)."""
        return 0 if self.status == "PASS" else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "status": self.status,
            "counts": {s: self.count(s) for s in STATUSES},
            "gates": self.gates,
            "rows": [r.to_json() for r in self.rows],
            "package_version": self.package_version,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            rows=tuple(VerdictRow.from_json(r) for r in data["rows"]),
            status=data["status"],
            gates={k: dict(v) for k, v in data["gates"].items()},
            created=data["created"],
            package_version=data["package_version"],
            schema_version=data["schema_version"],
        )


def row_label(model: str, backend: str, precision: str, where: str = CPU) -> str:
    """A row's name: ``demo_416x608 onnxruntime int8``, with `` on <GPU>`` for a GPU row (the GPU's name for
    a result, the GPU type of the path for a row without one)."""
    return f"{model} {backend} {precision}" + ("" if where.lower() == CPU else f" on {where}")


def _result_label(r: BenchResult) -> str:
    return row_label(r.model, r.backend, r.precision, row_where(r))


def _order(model: str, backend: str, precision: str, where: str) -> tuple[str, str, int, int]:
    # The report's row order: model, the CPU before the GPUs, then backend and precision in their order.
    b = BENCH_BACKENDS.index(backend) if backend in BENCH_BACKENDS else len(BENCH_BACKENDS)
    p = PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)
    return (model, "" if where.lower() == CPU else where, b, p)


def _gate_text(gate: Gate) -> str:
    parts = []
    if gate.max_pq_drop is not None:
        parts.append(f"PQ drop <= {gate.max_pq_drop:g}")
    if gate.min_speedup is not None:
        parts.append(f"speedup >= {gate.min_speedup:g}x")
    return ", ".join(parts)


def _pq_drop_row(r: BenchResult, base: BenchResult | None, limit: float) -> VerdictRow:
    label = _result_label(r)
    common = {"row": label, "model": r.model, "backend": r.backend, "precision": r.precision}
    gt, base_gt = r.ground_truth, None if base is None else base.ground_truth
    if gt is not None and base_gt is not None:
        if gt.all.n == 0 or base_gt.all.n == 0:
            return VerdictRow(
                **common, device=r.device, gate="max_pq_drop", limit=limit, measured=None,
                basis="ground truth", status="NOT RUN",
                detail="no category with segments in the ground truth or the prediction: PQ is undefined",
            )  # fmt: skip
        drop = 100.0 * (base_gt.all.pq - gt.all.pq)
        basis = "ground truth"
    else:
        pan = r.accuracy.panoptic
        if pan.n == 0:
            return VerdictRow(
                **common, device=r.device, gate="max_pq_drop", limit=limit, measured=None,
                basis="fidelity vs torch FP32", status="NOT RUN",
                detail="the torch FP32 reference has no segment on the evaluation images: PQ is undefined",
            )  # fmt: skip
        drop = 100.0 * (1.0 - pan.pq)
        basis = "fidelity vs torch FP32"
    return VerdictRow(
        **common, device=r.device, gate="max_pq_drop", limit=limit, measured=drop, basis=basis,
        status="PASS" if drop <= limit else "FAIL",
    )  # fmt: skip


def _speedup_row(r: BenchResult, base: BenchResult | None, limit: float) -> VerdictRow:
    label = _result_label(r)
    common = {"row": label, "model": r.model, "backend": r.backend, "precision": r.precision}
    if base is None:
        return VerdictRow(
            **common, device=r.device, gate="min_speedup", limit=limit, measured=None, basis="network p50",
            status="NOT RUN",
            detail="no torch FP32 result for this model on this device to measure the speedup against",
        )  # fmt: skip
    speedup = base.latency.network.p50_ms / r.latency.network.p50_ms
    return VerdictRow(
        **common, device=r.device, gate="min_speedup", limit=limit, measured=speedup, basis="network p50",
        status="PASS" if speedup >= limit else "FAIL",
    )  # fmt: skip


def evaluate_gates(
    results: Sequence[BenchResult],
    gates: Gates,
    failures: Sequence[RowFailure] = (),
    *,
    created: str | None = None,
) -> Verdict:
    """The verdict of ``results`` under ``gates``; ``failures`` are the requested rows without a result.

    Per result row (the torch FP32 baseline rows themselves are not gated): one row per configured limit of
    its precision, measured against the torch FP32 row of the same model on the same device (as the report's
    tables: :func:`~panoptic_deploy.bench.results.baseline_row`). Per failure: one ``completes`` row, FAIL
    with the error line, or NOT RUN when there is none.
    ``created`` (ISO time) defaults to now; pass it for a reproducible file.
    """
    rows: list[tuple[tuple[str, str, int, int], VerdictRow]] = []
    for r in results:
        base = baseline_row(results, r)
        if r is base:
            continue
        gate = gates.for_precision(r.precision)
        key = _order(r.model, r.backend, r.precision, row_where(r))
        if gate.max_pq_drop is not None:
            rows.append((key, _pq_drop_row(r, base, gate.max_pq_drop)))
        if gate.min_speedup is not None:
            rows.append((key, _speedup_row(r, base, gate.min_speedup)))
    for f in failures:
        gate = gates.for_precision(f.precision)
        wanted = _gate_text(gate)
        detail = (
            f.error
            if f.error
            else "no result: the benchmark did not run (an upstream job failed or was not run)"
        )
        rows.append(
            (
                _order(f.model, f.backend, f.precision, f.device),
                VerdictRow(
                    row=row_label(f.model, f.backend, f.precision, f.device), model=f.model,
                    backend=f.backend, precision=f.precision, device=None, gate="completes", limit=None,
                    measured=None, basis=wanted, status="FAIL" if f.error else "NOT RUN", detail=detail,
                ),
            )
        )  # fmt: skip
    ordered = tuple(row for _, row in sorted(rows, key=lambda item: item[0]))
    statuses = {row.status for row in ordered}
    status: Status = "FAIL" if "FAIL" in statuses else "NOT RUN" if "NOT RUN" in statuses else "PASS"
    return Verdict(
        rows=ordered,
        status=status,
        gates={
            p: {"max_pq_drop": g.max_pq_drop, "min_speedup": g.min_speedup}
            for p, g in sorted(gates.per_precision.items())
        },
        created=created
        if created is not None
        else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


# ---------------------------------------------------------------------------------------------------------
# Reading the rows (tolerating missing and broken benchmark files)


@dataclass(frozen=True)
class ExpectedRow:
    """A row the workflow asked for: its benchmark JSON and the job's log (for the error line)."""

    model: str
    backend: str
    precision: str
    bench: Path
    log: Path | None = None
    device: str = CPU

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpectedRow:
        """From the plan's ``{model, backend, precision, device, bench, log}`` (Plan.expected_rows)."""
        log = data.get("log")
        return cls(
            str(data["model"]), str(data["backend"]), str(data["precision"]), Path(data["bench"]),
            None if log is None else Path(log), str(data.get("device", CPU)),
        )  # fmt: skip


# A Python traceback's last line ("panoptic_deploy.bench.BenchError: ...", "RuntimeError: ..."), a Snakemake
# or CLI "error: ..." line.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b|error:|Error\b).*")


def error_line(log_text: str) -> str | None:
    """The line of a job log that says why it failed: the last exception or ``error:`` line, else the last
    non-empty line; ``None`` for an empty log. Cut to :data:`MAX_ERROR_CHARS`."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    if not lines:
        return None
    chosen = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), lines[-1])
    return chosen if len(chosen) <= MAX_ERROR_CHARS else chosen[: MAX_ERROR_CHARS - 4] + " ..."


def collect_bench_rows(expected: Sequence[ExpectedRow]) -> tuple[list[BenchResult], list[RowFailure]]:
    """Read every expected benchmark file; a missing one becomes a :class:`RowFailure` with its log's error
    line (``None`` without a log or with an empty one: the job did not run), an unreadable or invalid one a
    failure with the read error."""
    results: list[BenchResult] = []
    failures: list[RowFailure] = []
    for e in expected:
        if e.bench.is_file():
            try:
                results.append(read_bench(e.bench))
            except BenchError as exc:
                failures.append(RowFailure(e.model, e.backend, e.precision, error_line(str(exc)), e.device))
            continue
        error = None
        if e.log is not None and e.log.is_file():
            error = error_line(e.log.read_text(encoding="utf-8", errors="replace"))
        failures.append(RowFailure(e.model, e.backend, e.precision, error, e.device))
    return results, failures


def verdict_of_files(expected: Sequence[ExpectedRow], gates: Gates) -> Verdict:
    """The verdict of the expected rows' benchmark files as they are now (missing or broken ones included)."""
    results, failures = collect_bench_rows(expected)
    return evaluate_gates(results, gates, failures)


# ---------------------------------------------------------------------------------------------------------
# Files and the report table


def write_verdict(verdict: Verdict, path: PathLike) -> None:
    """Validate against ``verdict.schema.json`` and write atomically (``results/verdict.json``)."""
    write_checked_json(verdict.to_json(), path, "verdict.schema.json", "verdict", GateError)


def read_verdict(path: PathLike) -> Verdict:
    """Read and validate a verdict file; :class:`GateError` names the file and the offending key."""
    return Verdict.from_json(read_checked_json(path, "verdict.schema.json", "verdict", GateError))


def _measured_text(row: VerdictRow) -> str:
    if row.measured is None:
        return "–"
    if row.gate == "max_pq_drop":
        return f"{row.measured:.2f} PQ ({row.basis})"
    if row.gate == "min_speedup":
        return f"{row.measured:.2f}x ({row.basis})"
    return f"{row.measured:g}"


def _gate_cell(row: VerdictRow) -> str:
    if row.gate == "max_pq_drop" and row.limit is not None:
        return f"PQ drop <= {row.limit:g}"
    if row.gate == "min_speedup" and row.limit is not None:
        return f"speedup >= {row.limit:g}x"
    return "completes" + (f" (gated: {row.basis})" if row.basis else "")


def _cell(text: str) -> str:
    # Markdown table cells: a '|' would split the cell, a newline the row.
    return text.replace("|", "\\|").replace("\n", " ")


def verdict_markdown(verdict: Verdict) -> list[str]:
    """The report's opening section: the overall status, then one table line per gate row
    (row | gate | measured | verdict), the error line or reason after the status."""
    counts = ", ".join(f"{verdict.count(s)} {s}" for s in STATUSES)
    lines = ["## Verdict", "", f"**{verdict.status}** ({counts}).", ""]
    if not verdict.rows:
        lines += ["No gate is configured (config `gates`) and every benchmark produced a result.", ""]
        return lines
    lines += ["| row | gate | measured | verdict |", "|---|---|---|---|"]
    for row in verdict.rows:
        status = f"**{row.status}**" if row.status != "PASS" else row.status
        if row.detail:
            status += f": {row.detail}"
        cells = [row.row, _gate_cell(row), _measured_text(row), status]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return lines


def verdict_failure_lines(verdict: Verdict, verdict_path: PathLike, report_path: PathLike) -> list[str]:
    """What a verdict other than PASS says on the terminal: a first ``error:`` line with the counts and the
    files, then one line per row that did not pass (its gate, what was measured, the error or reason)."""
    lines = [
        f"error: release gates {verdict.status}: {verdict.count('FAIL')} FAIL, {verdict.count('NOT RUN')} "
        f"NOT RUN of {len(verdict.rows)} (see {verdict_path} and {report_path})"
    ]
    for row in verdict.rows:
        if row.status != "PASS":
            detail = f" ({row.detail})" if row.detail else ""
            measured = _measured_text(row)
            lines.append(f"  {row.status}: {row.row}: {_gate_cell(row)}, measured {measured}{detail}")
    return lines
