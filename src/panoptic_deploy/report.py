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

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy import __version__
from panoptic_deploy.bench import (
    BENCH_BACKENDS,
    BENCH_PRECISIONS,
    BenchError,
    BenchResult,
    Environment,
    ImagePanoptic,
    read_bench,
)
from panoptic_deploy.categories import CategorySet
from panoptic_deploy.engines.trtexec import TrtexecCheck, read_trtexec_check
from panoptic_deploy.fileio import atomic_files

PathLike = str | os.PathLike[str]

PLOT_LATENCY = "latency.png"
PLOT_ACCURACY_SPEED = "accuracy_vs_speed.png"


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


def _row_key(r: BenchResult) -> tuple[str, str, int, int]:
    backend = BENCH_BACKENDS.index(r.backend) if r.backend in BENCH_BACKENDS else len(BENCH_BACKENDS)
    precision = BENCH_PRECISIONS.index(r.precision) if r.precision in BENCH_PRECISIONS else 9
    return (r.model, _where(r), backend, precision)


def _label(r: BenchResult, with_model: bool) -> str:
    text = f"{r.backend} {r.precision}" + (" (cuda)" if r.device == "cuda" else "")
    return f"{r.model} {text}" if with_model else text


def _where(r: BenchResult) -> str:
    """The device a row ran on: the GPU's name, or "CPU" (ONNX Runtime and the CPU torch rows)."""
    return r.device_name if r.device == "cuda" else "CPU"


def _group(r: BenchResult) -> tuple[str, str]:
    """Rows are grouped by model branch and device: each GPU type is its own table with its own baseline."""
    return (r.model, _where(r))


def _baseline(rows: Sequence[BenchResult], row: BenchResult) -> BenchResult | None:
    """The torch FP32 row of ``row``'s model on ``row``'s device (the speedup baseline)."""
    for r in rows:
        if _group(r) == _group(row) and r.backend == "torch" and r.precision == "fp32":
            return r
    return None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_sci(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


# ---------------------------------------------------------------------------------------------------------
# Markdown


def _environment_lines(envs: Sequence[Environment]) -> list[str]:
    lines: list[str] = []
    for k, env in enumerate(envs):
        if len(envs) > 1:
            lines.append(f"Environment {k + 1}:")
            lines.append("")
        gpu = (
            f"{env.gpu_name} (compute capability {env.gpu_compute_capability}, CUDA {env.cuda_version})"
            if env.gpu_name
            else "none visible to PyTorch"
        )
        versions = ", ".join(
            f"{name} {version}" if version else f"{name}: not installed"
            for name, version in env.versions.items()
        )
        lines += [
            f"- CPU: {env.cpu_name}; {env.cpu_count} logical CPUs, {env.cpu_affinity} usable by the "
            "benchmark, "
            f"PyTorch threads {env.torch_threads}",
            f"- GPU: {gpu}",
            f"- Python {env.python} on {env.platform}",
            f"- Versions: {versions}",
            "",
        ]
    return lines


def _table(rows: Sequence[BenchResult], with_model: bool) -> list[str]:
    has_gt = any(r.ground_truth is not None for r in rows)
    header = [
        "row",
        "device",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s (network)",
        "end-to-end p50 ms",
        "speedup vs torch FP32",
        "PQ vs torch FP32",
        "pixel agreement %",
        "max abs error",
        "peak RSS MB",
        "GPU MB",
        "engine MB",
        "build s",
    ]
    if has_gt:
        header.append("PQ vs ground truth")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        base = _baseline(rows, r)
        speedup = base.latency.network.p50_ms / r.latency.network.p50_ms if base is not None else None
        pan = r.accuracy.panoptic
        gpu_mb = (
            r.memory.gpu_engine_mb if r.memory.gpu_engine_mb is not None else r.memory.gpu_peak_allocated_mb
        )
        cells = [
            _label(r, with_model),
            r.device_name,
            _fmt(r.latency.network.p50_ms),
            _fmt(r.latency.network.p90_ms),
            _fmt(r.latency.network.p99_ms),
            _fmt(r.throughput_ips, 2),
            _fmt(r.latency.end_to_end.p50_ms),
            "–" if speedup is None else f"{speedup:.2f}x",
            f"{100 * pan.pq:.2f}" if pan.n else "n/a (no segments)",
            f"{100 * pan.pixel_agreement:.2f}",
            _fmt_sci(r.accuracy.max_abs_error),
            _fmt(r.memory.peak_rss_mb, 0),
            _fmt(gpu_mb, 0),
            "–" if r.engine is None else f"{r.engine.bytes / 1e6:.1f}",
            "–" if r.engine is None else f"{r.engine.build_seconds:.1f}",
        ]
        if has_gt:
            gt = r.ground_truth
            cells.append(
                "–"
                if gt is None
                else f"{100 * gt.all.pq:.1f} (Th {100 * gt.things.pq:.1f}, St {100 * gt.stuff.pq:.1f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _error_table(rows: Sequence[BenchResult], with_model: bool) -> list[str]:
    names = list(rows[0].accuracy.tensors) if rows else []
    header = ["row", *names, "instances (ref / row / matched)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_label(r, with_model)]
        for name in names:
            err = r.accuracy.tensors[name]
            if err.kind == "float":
                cells.append("–" if err.max_abs is None else f"{err.max_abs:.2g} / {err.mean_abs:.2g}")
            else:
                cells.append(f"{err.mismatches}/{err.compared}")
        acc = r.accuracy
        cells.append(f"{acc.instances_reference} / {acc.instances_backend} / {acc.instances_matched}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _unique_environments(rows: Sequence[BenchResult]) -> list[Environment]:
    seen: list[Environment] = []
    for r in rows:
        env = r.environment
        if not any(
            (e.cpu_name, e.gpu_name, e.versions, e.platform)
            == (env.cpu_name, env.gpu_name, env.versions, env.platform)
            for e in seen
        ):
            seen.append(env)
    return seen


# ---------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no global pyplot state, no display needed)
# Each plot_* function writes exactly the path it is given; write_report gives the temporary paths of one
# atomic set.


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    # ``path`` is a temporary path of write_report's atomic set (or the caller's own final path).
    fig.savefig(path, format="png")


# Rows on a GPU and on CPU cores differ by 10-100x; on a linear axis the GPU rows would be invisible slivers.
LOG_AXIS_RATIO = 20.0


def _latency_axis(ax: Any, low: float, high: float) -> None:
    """Latency x axis from 0 (linear), or logarithmic when ``high / low`` exceeds :data:`LOG_AXIS_RATIO`."""
    low, high = max(low, 1e-3), max(high, 1e-3)
    if high / low > LOG_AXIS_RATIO:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
    else:
        ax.set_xlim(0, high * 1.15)


def plot_latency(rows: Sequence[BenchResult], path: Path, with_model: bool) -> None:
    """Horizontal bars of network p50 latency with a whisker to p99 and a tick at p90."""
    fig = _new_figure(8.0, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    p50 = np.array([r.latency.network.p50_ms for r in rows])
    p90 = np.array([r.latency.network.p90_ms for r in rows])
    p99 = np.array([r.latency.network.p99_ms for r in rows])
    ax.barh(y, p50, color="#4C72B0", label="p50")
    ax.hlines(y, p50, p99, color="black", linewidth=1)
    ax.plot(p90, y, linestyle="none", marker="|", markersize=14, color="black", label="p90")
    ax.plot(p99, y, linestyle="none", marker=">", color="#C44E52", label="p99")
    ax.set_yticks(y, [_label(r, with_model) for r in rows])
    _latency_axis(ax, float(p50.min()), float(p99.max()))
    scale = ", log scale" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"network latency per image (ms), batch 1{scale}")
    # Below the axes: inside, it would cover the longest bar at the bottom.
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    ax.set_title("Latency: p50 bar, whisker to p99 (| = p90)")
    _save(fig, path)


def plot_accuracy_speed(rows: Sequence[BenchResult], path: Path, with_model: bool) -> None:
    """Fidelity (PQ vs torch FP32) against network p50 latency, one point per row, named in the legend.

    Rows crowd together (the FP32 rows all sit at PQ ~100), so the names go to a legend beside the axes
    rather than onto the points: colour = backend × precision, marker = model branch.
    """
    fig = _new_figure(11.0, 5.0)
    ax = fig.add_subplot()
    markers = "os^Dv<>PXh"
    combos = list(dict.fromkeys(_label(r, with_model=False) for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    for r in rows:
        pq = 100 * r.accuracy.panoptic.pq if r.accuracy.panoptic.n else float("nan")
        colour = f"C{combos.index(_label(r, with_model=False)) % 10}"
        marker = markers[models.index(r.model) % len(markers)]
        ax.scatter([r.latency.network.p50_ms], [pq], s=45, marker=marker, color=colour,
                   label=_label(r, with_model), alpha=0.85)  # fmt: skip
    values = [100 * r.accuracy.panoptic.pq for r in rows if r.accuracy.panoptic.n]
    # At least one PQ point of range: FP32 rows sit within 0.01 of 100, which matplotlib would otherwise
    # draw as an offset axis magnifying noise.
    lowest = min(values, default=100.0)
    ax.set_ylim(max(0.0, min(lowest - 0.1 * (100.0 - lowest), 99.0)) - 1.0, 101.0)
    p50 = [r.latency.network.p50_ms for r in rows]
    _latency_axis(ax, min(p50), max(p50))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("network latency p50 (ms)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("PQ vs torch FP32 (%)")
    ax.set_title("Fidelity vs speed (up and left is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(fig, path)


def colorize_panoptic(image: ImagePanoptic, categories: CategorySet | None = None) -> NDArray[np.uint8]:
    """H×W×3 RGB: each segment in its category's colour (the model's ``categories``, default COCO's
    palette in categories.py), void black, white boundaries."""
    from panoptic_deploy.categories import COCO

    cats = COCO if categories is None else categories
    seg = image.panoptic_seg
    rgb = np.zeros((*seg.shape, 3), np.uint8)
    for s in image.segments:
        color = cats.category(int(s["category_id"]), bool(s["isthing"])).color
        rgb[seg == int(s["id"])] = color
    edge = np.zeros(seg.shape, bool)
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    edge[1:, :] |= seg[1:, :] != seg[:-1, :]
    rgb[edge] = 255
    return rgb


def _photo(path: str, shape: tuple[int, ...]) -> NDArray[np.uint8] | None:
    """The evaluation image as RGB if it can still be read at the panoptic map's size, else None."""
    from panoptic_deploy.errors import ImageError
    from panoptic_deploy.preprocess import read_image

    try:
        rgb = read_image(path, "RGB")
    except ImageError:
        return None
    return rgb if rgb.shape[:2] == shape[:2] else None


def plot_panoptic(rows: Sequence[BenchResult], path: Path, example: str | None) -> str:
    """The example image and each row's panoptic result on it, side by side; returns the image's name."""
    first = rows[0]
    names = [p.name for p in first.panoptic]
    stem = Path(example).stem if example else names[0]
    if stem not in names:
        raise BenchError(f"example image '{example}' is not among the evaluation images {names}")
    index = names.index(stem)
    photo = _photo(first.settings.images[index], first.panoptic[index].panoptic_seg.shape)
    from panoptic_deploy.categories import COCO

    categories = first.categories or COCO
    panels: list[tuple[str, NDArray[np.uint8]]] = []
    if photo is not None:
        panels.append((f"{stem} (input)", photo))
    shown: dict[tuple[int, bool], int] = {}  # (contiguous id, isthing) -> pixels over all panels: the legend
    for r in rows:
        entry = next((p for p in r.panoptic if p.name == stem), None)
        if entry is None:
            continue
        for s in entry.segments:
            key = (int(s["category_id"]), bool(s["isthing"]))
            shown[key] = shown.get(key, 0) + int(s["area"])
        colour = colorize_panoptic(entry, categories)
        if photo is not None:
            colour = (0.6 * colour + 0.4 * photo).astype(np.uint8)
        panels.append((_label(r, False), colour))
    columns = min(4, len(panels))
    lines = (len(panels) + columns - 1) // columns
    height, width = first.panoptic[index].panoptic_seg.shape
    panel_w = 3.6
    fig = _new_figure(panel_w * columns, lines * panel_w * height / width + 0.5 * lines)
    for k, (title, data) in enumerate(panels):
        ax = fig.add_subplot(lines, columns, k + 1)
        ax.imshow(data)
        ax.set_title(title, fontsize="small")
        ax.axis("off")
    legend = _category_legend(categories, shown)
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncols=min(6, len(legend)), fontsize="small",
                   frameon=False)  # fmt: skip
    _save(fig, path)
    return stem


LEGEND_MAX = 24


def _category_legend(categories: CategorySet, shown: Mapping[tuple[int, bool], int]) -> list[Any]:
    """Colour patches named after the categories of ``shown`` (the :data:`LEGEND_MAX` largest by pixels),
    things first, in contiguous order."""
    from matplotlib.patches import Patch

    keep = set(sorted(shown, key=lambda k: (-shown[k], k))[:LEGEND_MAX])
    handles = []
    for isthing, group in ((True, categories.things), (False, categories.stuff)):
        for k, cat in enumerate(group):
            if (k if isthing else k + 1, isthing) in keep:
                r, g, b = cat.color
                handles.append(Patch(facecolor=(r / 255, g / 255, b / 255), label=cat.name))
    return handles


def _trtexec_lines(rows: Sequence[BenchResult], checks: Sequence[TrtexecCheck]) -> list[str]:
    """The trtexec section: each check beside the benchmark row that ran the same engine file (by SHA-256)."""
    by_sha = {r.engine.sha256: r for r in rows if r.engine is not None}
    lines = [
        "## TensorRT engines timed by trtexec",
        "",
        "Ours: the network p50 of the benchmark above (CUDA events around `execute_async_v3`, one image at a "
        "time). trtexec: the median GPU compute time of the same engine file on random inputs, inferences "
        "enqueued back to back, no host copies. A ratio well above 1 is host overhead on our side.",
        "",
        "| row | ours p50 ms | trtexec GPU compute median ms | ours / trtexec | CUDA graph | trtexec |",
        "|---|---|---|---|---|---|",
    ]
    for check in checks:
        row = by_sha.get(check.engine_sha256)
        label = _label(row, True) if row else f"{Path(check.engine).name} (no benchmark ran this file)"
        ours = row.latency.network.p50_ms if row else None
        ratio = f"{ours / check.gpu_compute_median_ms:.2f}x" if ours else "–"
        # What trtexec really did: a failed capture is only a warning, then it launches plainly.
        graph = "yes" if check.cuda_graph else "no"
        if check.cuda_graph_requested and not check.cuda_graph:
            graph = "no (capture failed)"
        lines.append(
            f"| {label} | {_fmt(ours, 2)} | {check.gpu_compute_median_ms:.2f} | {ratio} | {graph} | "
            f"{check.trtexec} |"
        )
    warned = [
        f"- {Path(check.engine).name}: trtexec warned: {warning}"
        for check in checks
        for warning in check.warnings
    ]
    return [*lines, "", *([*warned, ""] if warned else [])]


# ---------------------------------------------------------------------------------------------------------
# The report


def write_report(
    bench_files: Sequence[PathLike],
    output: PathLike,
    plots_dir: PathLike | None = None,
    skipped: Sequence[SkippedCombo | Mapping[str, Any]] = (),
    example_image: str | None = None,
    trtexec_files: Sequence[PathLike] = (),
) -> ReportSummary:
    """Write the Markdown report ``output`` and its PNG plots into ``plots_dir`` (default: a folder named like
    ``output`` without suffix, e.g. ``results/report/`` for ``results/report.md``).

    ``bench_files``: benchmark JSONs (validated on read). ``skipped``: combinations that did not run here, as
    :class:`SkippedCombo` or ``{"backend", "precision", "reason"}`` dicts; each becomes one plain line.
    ``example_image``: file name or stem of the evaluation image to show per row (default: the first).
    ``trtexec_files``: trtexec cross-checks (:mod:`panoptic_deploy.engines.trtexec`), set beside the
    benchmark row that ran the same engine file.
    """
    output = Path(output)
    plots = Path(plots_dir) if plots_dir is not None else output.with_suffix("")
    if not bench_files:
        raise BenchError(f"{output}: no benchmark results to report")
    rows = sorted((read_bench(p) for p in bench_files), key=_row_key)
    checks = [read_trtexec_check(p) for p in trtexec_files]
    skipped_list = [s if isinstance(s, SkippedCombo) else skipped_from_json([s])[0] for s in skipped]
    models = sorted({r.model for r in rows})
    with_model = len(models) > 1

    # The plots and the report are one atomic set whose completion marker is the report: it is renamed into
    # place last (after its old version was removed), so a report always shows the plots beside it.
    with atomic_files() as files:
        written: list[Path] = []
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
        text = _report_text(rows, models, checks, skipped_list, examples, output, plots)
        files.path(output).write_text(text, encoding="utf-8")
    return ReportSummary(str(output), tuple(str(p) for p in written), len(rows), len(skipped_list))


def _report_text(
    rows: Sequence[BenchResult],
    models: Sequence[str],
    checks: Sequence[TrtexecCheck],
    skipped_list: Sequence[SkippedCombo],
    examples: Mapping[str, tuple[Path, str]],
    output: Path,
    plots: Path,
) -> str:
    """The Markdown of :func:`write_report`."""

    def rel(path: Path) -> str:
        return os.path.relpath(path, output.parent).replace(os.sep, "/")

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# panoptic-deploy benchmark report",
        "",
        f"Generated {created} by panoptic-deploy {__version__} from {len(rows)} benchmark file(s).",
        "Latency is the network alone, per image (batch 1); end-to-end adds host pre- and post-processing.",
        "Fidelity compares each row with the torch FP32 reference on the same evaluation images: PQ of its "
        "panoptic output with the reference output as ground truth, pixel agreement of the category maps, "
        "and the largest absolute error over the float outputs.",
        "",
        "## Environment",
        "",
        *_environment_lines(_unique_environments(rows)),
        "## Results",
        "",
    ]
    groups = sorted({_group(r) for r in rows})
    several_devices = len({where for _, where in groups}) > 1

    def heading(model: str, where: str) -> str:
        return f"### {model} on {where}" if several_devices else f"### {model}"

    for model, where in groups:
        model_rows = [r for r in rows if _group(r) == (model, where)]
        first = model_rows[0]
        settings = first.settings
        lines += [
            heading(model, where),
            "",
            f"Input {first.input_shape[2]}x{first.input_shape[3]} (H x W), {len(settings.images)} evaluation "
            f"image(s), {settings.warmup} warm-up and {settings.iterations} timed run(s) per row.",
            "",
            *_table(model_rows, False),
            "",
        ]
        if _baseline(model_rows, first) is None:
            lines += ["No torch FP32 row for this model, so no speedup column.", ""]
        notes = [(r, note) for r in model_rows for note in r.notes]
        if notes:
            lines += ["Notes:", ""]
            lines += [f"- {_label(r, False)}: {note}" for r, note in notes]
            lines.append("")
    if checks:
        lines += _trtexec_lines(rows, checks)
    lines += [
        "## Not run on this machine",
        "",
    ]
    if skipped_list:
        seen: set[str] = set()
        for s in skipped_list:
            if s.line() not in seen:
                seen.add(s.line())
                lines.append(f"- {s.line()}")
    else:
        lines.append("Every requested combination ran.")
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
        "Bool/int outputs: mismatches / compared.",
        "",
    ]
    for model, where in groups:
        group_rows = [r for r in rows if _group(r) == (model, where)]
        lines += [heading(model, where), "", *_error_table(group_rows, False), ""]
    return "\n".join(lines).rstrip() + "\n"
