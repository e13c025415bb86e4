"""The report's plots: latency, fidelity vs speed, and one evaluation image's panoptic result per row.

matplotlib's object API with the Agg canvas: no global pyplot state, no display needed. Each plot_* function
writes exactly the path it is given; :func:`panoptic_deploy.report.write_report` gives the temporary paths of
one atomic set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy.bench.results import BenchResult, ImagePanoptic
from panoptic_deploy.categories import CategorySet
from panoptic_deploy.errors import BenchError
from panoptic_deploy.report.tables import row_label

PLOT_LATENCY = "latency.png"
PLOT_ACCURACY_SPEED = "accuracy_vs_speed.png"


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
    """Horizontal bars of network p50 latency with a whisker to the highest percentile the row reports (p99,
    else p90: a row with too few runs reports neither, and gets no whisker) and a tick at p90."""
    fig = _new_figure(8.0, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]

    def ms(values: Sequence[float | None]) -> NDArray[np.float64]:
        return np.array([np.nan if v is None else v for v in values], np.float64)

    p50 = ms([r.latency.network.p50_ms for r in rows])
    p90 = ms([r.latency.network.p90_ms for r in rows])
    p99 = ms([r.latency.network.p99_ms for r in rows])
    top = np.where(np.isfinite(p99), p99, np.where(np.isfinite(p90), p90, p50))
    ax.barh(y, p50, color="#4C72B0", label="p50")
    ax.hlines(y, p50, top, color="black", linewidth=1)
    if np.isfinite(p90).any():
        ax.plot(p90, y, linestyle="none", marker="|", markersize=14, color="black", label="p90")
    if np.isfinite(p99).any():
        ax.plot(p99, y, linestyle="none", marker=">", color="#C44E52", label="p99")
    ax.set_yticks(y, [row_label(r, with_model) for r in rows])
    _latency_axis(ax, float(p50.min()), float(top.max()))
    scale = ", log scale" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"network latency per image (ms), batch 1{scale}")
    # Below the axes: inside, it would cover the longest bar at the bottom.
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    ax.set_title("Latency: p50 bar, whisker to p99 (| = p90; each only from enough runs)")
    _save(fig, path)


def plot_accuracy_speed(rows: Sequence[BenchResult], path: Path, with_model: bool) -> None:
    """Fidelity (PQ vs torch FP32) against network p50 latency, one point per row, named in the legend.

    Rows crowd together (the FP32 rows all sit at PQ ~100), so the names go to a legend beside the axes
    rather than onto the points: colour = backend × precision, marker = model branch.
    """
    fig = _new_figure(11.0, 5.0)
    ax = fig.add_subplot()
    markers = "os^Dv<>PXh"
    combos = list(dict.fromkeys(row_label(r, with_model=False) for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    for r in rows:
        pq = 100 * r.accuracy.panoptic.pq if r.accuracy.panoptic.n else float("nan")
        colour = f"C{combos.index(row_label(r, with_model=False)) % 10}"
        marker = markers[models.index(r.model) % len(markers)]
        ax.scatter([r.latency.network.p50_ms], [pq], s=45, marker=marker, color=colour,
                   label=row_label(r, with_model), alpha=0.85)  # fmt: skip
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
        raise BenchError(
            f"example image '{example}' is not in the benchmark files (they carry {names}; "
            "the benchmarks take report.example_image)"
        )
    index = names.index(stem)
    # The benchmark file carries the example image's result only; its photo is the evaluation image of
    # that name.
    source = next((p for p in first.settings.images if Path(p).stem == stem), None)
    photo = None if source is None else _photo(source, first.panoptic[index].panoptic_seg.shape)
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
        panels.append((row_label(r, False), colour))
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
