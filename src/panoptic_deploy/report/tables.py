"""The report's Markdown sections: environment, one table row per model × backend × precision, per-output
errors and the trtexec cross-check; each a function from the benchmark results to lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from panoptic_deploy.bench.results import BenchResult, Environment, baseline_row, row_where
from panoptic_deploy.engines.trtexec import TrtexecCheck
from panoptic_deploy.timing import TimingEnvironment, format_cov, load_is_high
from panoptic_deploy.vocab import BENCH_BACKENDS
from panoptic_deploy.vocab import PRECISIONS as BENCH_PRECISIONS


def row_key(r: BenchResult) -> tuple[str, str, int, int]:
    backend = BENCH_BACKENDS.index(r.backend) if r.backend in BENCH_BACKENDS else len(BENCH_BACKENDS)
    precision = BENCH_PRECISIONS.index(r.precision) if r.precision in BENCH_PRECISIONS else 9
    return (r.model, row_where(r), backend, precision)


def row_label(r: BenchResult, with_model: bool) -> str:
    text = f"{r.backend} {r.precision}" + (" (cuda)" if r.device == "cuda" else "")
    return f"{r.model} {text}" if with_model else text


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_sci(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


def environment_lines(envs: Sequence[Environment]) -> list[str]:
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
            *timing_environment_lines(env.timing),
            f"- Python {env.python} on {env.platform}",
            f"- Versions: {versions}",
            "",
        ]
    return lines


def timing_environment_lines(t: TimingEnvironment) -> list[str]:
    """What affects timings (:func:`panoptic_deploy.timing.probe_environment`), as probed by the first row of
    this environment: governor, frequency, ISA and kernels, load; NVML's GPU state where there is a GPU."""
    governor = ", ".join(t.cpu_governors) if t.cpu_governors else "not readable"
    load = "not readable" if t.load_average is None else " / ".join(f"{v:.2f}" for v in t.load_average)
    mhz = "frequency not reported" if t.cpu_mhz is None else f"{t.cpu_mhz:.0f} MHz mean"
    isa = " ".join(t.cpu_isa) or "not readable"
    lines = [
        f"- CPU timing state: governor {governor}; {mhz}; ISA {isa}; PyTorch kernels "
        f"{t.torch_cpu_capability or 'unknown'}; load average (1 / 5 / 15 min) at start {load}"
    ]
    for g in t.gpus:
        lines.append(
            f"- GPU {g.index} timing state (NVML, driver {t.nvidia_driver or 'unknown'}): {g.name}, SM clock "
            f"{fmt(g.sm_clock_mhz, 0)} of {fmt(g.max_sm_clock_mhz, 0)} MHz, memory clock "
            f"{fmt(g.memory_clock_mhz, 0)} MHz, {fmt(g.temperature_c, 0)} °C, {fmt(g.power_w, 0)} W, "
            f"P{'?' if g.performance_state is None else g.performance_state}"
        )
    return lines


def results_table(rows: Sequence[BenchResult], with_model: bool) -> list[str]:
    has_gt = any(r.ground_truth is not None for r in rows)
    header = [
        "row",
        "device",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "CoV",
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
        base = baseline_row(rows, r)
        speedup = base.latency.network.p50_ms / r.latency.network.p50_ms if base is not None else None
        pan = r.accuracy.panoptic
        gpu_mb = (
            r.memory.gpu_engine_mb if r.memory.gpu_engine_mb is not None else r.memory.gpu_peak_allocated_mb
        )
        cells = [
            row_label(r, with_model),
            r.device_name,
            fmt(r.latency.network.p50_ms),
            fmt(r.latency.network.p90_ms),
            fmt(r.latency.network.p99_ms),
            cov_cell(r),
            fmt(r.throughput_ips, 2),
            fmt(r.latency.end_to_end.p50_ms),
            "–" if speedup is None else f"{speedup:.2f}x",
            f"{100 * pan.pq:.2f}" if pan.n else "n/a (no segments)",
            f"{100 * pan.pixel_agreement:.2f}",
            fmt_sci(r.accuracy.max_abs_error),
            fmt(r.memory.peak_rss_mb, 0),
            fmt(gpu_mb, 0),
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


def cov_cell(r: BenchResult) -> str:
    """The row's network CoV, marked when the row is flagged unstable (its CoV above its threshold)."""
    net = r.latency.network
    return f"{format_cov(net.cov)} unstable" if net.unstable else format_cov(net.cov)


def stability_lines(rows: Sequence[BenchResult]) -> list[str]:
    """One line on the rows' timing stability: which rows the report flags (network CoV above the threshold
    they ran with) and why, or that none is; and a warning when the machine was busy as a row started."""
    flagged = [r for r in rows if r.latency.network.unstable]
    if flagged:
        lines = [f"- Unstable timings: {row_label(r, False)}: {r.latency.network.note()}." for r in flagged]
    else:
        thresholds = sorted({f"{r.latency.network.cov_threshold:.1%}" for r in rows})
        lines = [f"- Stable timings: every row's network CoV is within {', '.join(thresholds)}."]
    busy = [r for r in rows if load_is_high(r.environment.timing)]
    for r in busy:
        load = r.environment.timing.load_average
        assert load is not None  # load_is_high is False without one
        lines.append(
            f"- {row_label(r, False)}: load average {load[0]:.2f} at its start exceeds the "
            f"{r.environment.timing.cpu_affinity} CPU(s) it may use: other work competed, whatever its CoV."
        )
    return [*lines, ""]


def error_table(rows: Sequence[BenchResult], with_model: bool) -> list[str]:
    names = list(rows[0].accuracy.tensors) if rows else []
    header = ["row", *names, "instances (ref / row / matched)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [row_label(r, with_model)]
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


def unique_environments(rows: Sequence[BenchResult]) -> list[Environment]:
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


def trtexec_lines(rows: Sequence[BenchResult], checks: Sequence[TrtexecCheck]) -> list[str]:
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
        label = row_label(row, True) if row else f"{Path(check.engine).name} (no benchmark ran this file)"
        ours = row.latency.network.p50_ms if row else None
        ratio = f"{ours / check.gpu_compute_median_ms:.2f}x" if ours else "–"
        # What trtexec really did: a failed capture is only a warning, then it launches plainly.
        graph = "yes" if check.cuda_graph else "no"
        if check.cuda_graph_requested and not check.cuda_graph:
            graph = "no (capture failed)"
        lines.append(
            f"| {label} | {fmt(ours, 2)} | {check.gpu_compute_median_ms:.2f} | {ratio} | {graph} | "
            f"{check.trtexec} |"
        )
    warned = [
        f"- {Path(check.engine).name}: trtexec warned: {warning}"
        for check in checks
        for warning in check.warnings
    ]
    return [*lines, "", *([*warned, ""] if warned else [])]
