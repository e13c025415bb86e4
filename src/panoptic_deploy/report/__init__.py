"""The benchmark report: ``results/report.md`` and its plots from the benchmark JSON files.

Sections: environment (CPU/GPU, library versions), one table row per model × backend × precision
(latency p50/p90/p99, throughput, speedup over torch FP32, fidelity PQ vs torch FP32, max abs error, memory,
engine size and build time, PQ vs ground truth when measured), per-output errors, plots (latency with
p90/p99 whiskers; fidelity vs speed), one evaluation image's panoptic result per row side by side, and a plain
line for every combination that did not run on this machine and why (the workflow passes those as
``skipped``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panoptic_deploy import __version__
from panoptic_deploy.bench.results import BenchResult, baseline_row, read_bench, row_group
from panoptic_deploy.engines.trtexec import TrtexecCheck, read_trtexec_check
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike, atomic_files
from panoptic_deploy.gates import (
    ExpectedRow,
    Verdict,
    collect_bench_rows,
    evaluate_gates,
    gates_from_config,
    verdict_markdown,
    write_verdict,
)
from panoptic_deploy.report.int8_section import int8_debug_lines
from panoptic_deploy.report.plots import (
    PLOT_ACCURACY_SPEED,
    PLOT_LATENCY,
    plot_accuracy_speed,
    plot_latency,
    plot_panoptic,
)
from panoptic_deploy.report.tables import (
    environment_lines,
    error_table,
    results_table,
    row_key,
    row_label,
    stability_lines,
    trtexec_lines,
    unique_environments,
)

__all__ = [
    "PLOT_ACCURACY_SPEED",
    "PLOT_LATENCY",
    "ReportSummary",
    "SkippedCombo",
    "report_after_failure",
    "skipped_from_json",
    "write_report",
]


@dataclass(frozen=True)
class SkippedCombo:
    """A backend × precision that did not run here; ``precision`` may be ``"all"``."""

    backend: str
    precision: str
    reason: str

    def line(self) -> str:
        what = (
            f"{self.backend} (all precisions)"
            if self.precision == "all"
            else f"{self.backend} {self.precision}"
        )
        return f"{what}: {self.reason}"


def skipped_from_json(items: Sequence[Mapping[str, Any]]) -> list[SkippedCombo]:
    """``[{"backend": ..., "precision": ..., "reason": ...}, ...]`` (the workflow's list) -> SkippedCombo."""
    out = []
    for k, item in enumerate(items):
        try:
            out.append(SkippedCombo(str(item["backend"]), str(item["precision"]), str(item["reason"])))
        except (KeyError, TypeError) as exc:
            raise BenchError(f"skipped[{k}]: needs keys backend, precision, reason ({exc})") from None
    return out


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` wrote."""

    report: str
    plots: tuple[str, ...]
    rows: int
    skipped: int


def write_report(
    bench: Sequence[PathLike] | Sequence[BenchResult],
    output: PathLike,
    plots_dir: PathLike | None = None,
    skipped: Sequence[SkippedCombo | Mapping[str, Any]] = (),
    example_image: str | None = None,
    trtexec_files: Sequence[PathLike] = (),
    verdict: Verdict | None = None,
    int8_debug_files: Sequence[PathLike] = (),
) -> ReportSummary:
    """Write the Markdown report ``output`` and its PNG plots into ``plots_dir`` (default: a folder named like
    ``output`` without suffix, e.g. ``results/report/`` for ``results/report.md``).

    ``bench``: benchmark JSONs (validated on read) or results already read. ``skipped``: combinations that did
    not run here, as :class:`SkippedCombo` or ``{"backend", "precision", "reason"}`` dicts; each becomes one
    plain line. ``example_image``: file name or stem of the evaluation image to show per row (default: the
    first). ``trtexec_files``: trtexec cross-checks (:mod:`panoptic_deploy.engines.trtexec`), set beside the
    benchmark row that ran the same engine file. ``verdict``: the release gates' verdict, the report's opening
    section; with one, a report without any result is still written (every row failed or did not run), and
    without plots. ``int8_debug_files``: ``results/int8_debug/<model>.json``
    (rule ``int8_debug``), one section after the results.
    """
    output = Path(output)
    plots = Path(plots_dir) if plots_dir is not None else output.with_suffix("")
    if not bench and verdict is None:
        raise BenchError(f"{output}: no benchmark results to report")
    rows = sorted((b if isinstance(b, BenchResult) else read_bench(b) for b in bench), key=row_key)
    checks = [read_trtexec_check(p) for p in trtexec_files]
    skipped_list = [s if isinstance(s, SkippedCombo) else skipped_from_json([s])[0] for s in skipped]
    models = sorted({r.model for r in rows})
    with_model = len(models) > 1

    # The plots and the report are one atomic set whose completion marker is the report: it is renamed into
    # place last (after its old version was removed), so a report always shows the plots beside it.
    with atomic_files() as files:
        written: list[Path] = []
        if not rows:
            text = _report_text(rows, models, checks, skipped_list, {}, output, plots, verdict)
            files.path(output).write_text(text, encoding="utf-8")
            return ReportSummary(str(output), (), 0, len(skipped_list))
        plot_latency(rows, files.path(plots / PLOT_LATENCY), with_model)
        written.append(plots / PLOT_LATENCY)
        plot_accuracy_speed(rows, files.path(plots / PLOT_ACCURACY_SPEED), with_model)
        written.append(plots / PLOT_ACCURACY_SPEED)
        examples: dict[str, tuple[Path, str]] = {}
        for model in models:
            model_rows = [r for r in rows if r.model == model]
            names = [p.name for p in model_rows[0].panoptic]
            chosen = example_image if example_image and Path(example_image).stem in names else None
            path = plots / f"panoptic_{model}.png"
            examples[model] = (path, plot_panoptic(model_rows, files.path(path), chosen))
            written.append(path)
        text = _report_text(rows, models, checks, skipped_list, examples, output, plots, verdict)
        text += "\n" + "\n".join(int8_debug_lines(int8_debug_files)) if int8_debug_files else ""
        files.path(output).write_text(text, encoding="utf-8")
    return ReportSummary(str(output), tuple(str(p) for p in written), len(rows), len(skipped_list))


def report_after_failure(
    expected: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Any] | None,
    verdict_path: PathLike,
    output: PathLike,
    *,
    skipped: Sequence[SkippedCombo | Mapping[str, Any]] = (),
    example_image: str | None = None,
    trtexec_files: Sequence[PathLike] = (),
) -> Verdict | None:
    """The verdict and the report of a run in which jobs failed (the workflow's onerror): the rows whose
    benchmark file is there and valid, every other expected row a FAIL with its job log's error line, or NOT
    RUN when its job never ran (an upstream job failed). ``expected``: the plan's rows
    (``Plan.expected_rows``); ``gates``: config ``gates``. Writes nothing and returns ``None`` when no row is
    missing: then no benchmark failed, and the verdict and report rules ran (or failed themselves)."""
    results, failures = collect_bench_rows([ExpectedRow.from_json(row) for row in expected])
    if not failures:
        return None
    verdict = evaluate_gates(results, gates_from_config(gates), failures)
    write_verdict(verdict, verdict_path)
    checks = [p for p in trtexec_files if Path(p).is_file()]  # those whose job finished
    write_report(results, output, None, skipped, example_image, checks, verdict)
    return verdict


def _header_lines(n_files: int) -> list[str]:
    """The title, when and from what the report was made, and how to read its columns."""
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return [
        "# panoptic-deploy benchmark report",
        "",
        f"Generated {created} by panoptic-deploy {__version__} from {n_files} benchmark file(s).",
        "Latency is the network alone, per image (batch 1); end-to-end adds host pre- and post-processing.",
        "p90 is shown from 10 timed runs and p99 from 100 (`–` below: with fewer runs the percentile is only "
        "the slowest run); CoV is the coefficient of variation (stdev / mean) of the network latency, and a "
        "row whose CoV exceeds its threshold is marked unstable.",
        "Fidelity compares each row with the torch FP32 reference on the same evaluation images: PQ of its "
        "panoptic output with the reference output as ground truth, pixel agreement of the category maps, "
        "and the largest absolute error over the float outputs.",
        "",
    ]


def _report_text(
    rows: Sequence[BenchResult],
    models: Sequence[str],
    checks: Sequence[TrtexecCheck],
    skipped_list: Sequence[SkippedCombo],
    examples: Mapping[str, tuple[Path, str]],
    output: Path,
    plots: Path,
    verdict: Verdict | None,
) -> str:
    """The Markdown of :func:`write_report`, section by section."""

    def rel(path: Path) -> str:
        return os.path.relpath(path, output.parent).replace(os.sep, "/")

    lines = [*_header_lines(len(rows)), *(verdict_markdown(verdict) if verdict is not None else [])]
    if not rows:
        lines += ["No benchmark produced a result: see the verdict for each row's error.", ""]
        return "\n".join(lines + _skipped_lines(skipped_list)).rstrip() + "\n"
    lines += [
        "## Environment",
        "",
        *environment_lines(unique_environments(rows)),
        "## Results",
        "",
    ]
    groups = sorted({row_group(r) for r in rows})
    several_devices = len({where for _, where in groups}) > 1

    def heading(model: str, where: str) -> str:
        return f"### {model} on {where}" if several_devices else f"### {model}"

    for group in groups:
        lines += _model_results([r for r in rows if row_group(r) == group], heading(*group))
    if checks:
        lines += trtexec_lines(rows, checks)
    lines += _skipped_lines(skipped_list)
    lines += [
        "",
        "## Plots",
        "",
        f"![Network latency, p50 with p90/p99 whiskers]({rel(plots / PLOT_LATENCY)})",
        "",
        f"![Fidelity vs speed]({rel(plots / PLOT_ACCURACY_SPEED)})",
        "",
        "## Example panoptic results",
        "",
    ]
    for model, (path, stem) in examples.items():
        lines += [
            f"{model}, image `{stem}`: the input, then each row's panoptic result (colour = category).",
            "",
        ]
        lines += [f"![{model} {stem}]({rel(path)})", ""]
    lines += [
        "## Per-output errors against torch FP32",
        "",
        "Float outputs: max / mean absolute error over the compared values (instance rows matched first). "
        "Bool/int outputs: mismatches / compared. Over the first "
        f"{', '.join(sorted({str(r.accuracy.tensor_images) for r in rows}))} evaluation image(s), whose raw "
        "outputs the reference keeps (`evaluation.fidelity_images`); the PQ columns above are over every "
        "image.",
        "",
    ]
    for group in groups:
        lines += [heading(*group), "", *error_table([r for r in rows if row_group(r) == group], False), ""]
    return "\n".join(lines).rstrip() + "\n"


def _model_results(model_rows: Sequence[BenchResult], heading: str) -> list[str]:
    """One model's results on one device: its settings, the table, and the notes of its rows."""
    first = model_rows[0]
    settings = first.settings
    lines = [
        heading,
        "",
        f"Input {first.input_shape[2]}x{first.input_shape[3]} (H x W), {len(settings.images)} evaluation "
        f"image(s), {settings.warmup} warm-up run(s) per row, then timed runs until at least "
        f"{settings.iterations} ran and {settings.min_seconds:g} s passed.",
        "",
        *results_table(model_rows, False),
        "",
        *stability_lines(model_rows),
    ]
    if baseline_row(model_rows, first) is None:
        lines += ["No torch FP32 row for this model, so no speedup column.", ""]
    notes = [(r, note) for r in model_rows for note in r.notes]
    if notes:
        lines += ["Notes:", ""]
        lines += [f"- {row_label(r, False)}: {note}" for r, note in notes]
        lines.append("")
    return lines


def _skipped_lines(skipped_list: Sequence[SkippedCombo]) -> list[str]:
    """The combinations that did not run here, each once."""
    lines = ["## Not run on this machine", ""]
    if skipped_list:
        seen: set[str] = set()
        for s in skipped_list:
            if s.line() not in seen:
                seen.add(s.line())
                lines.append(f"- {s.line()}")
    else:
        lines.append("Every requested combination ran.")
    return lines
