"""The Markdown report: every benchmark row with its numbers, one line per skipped combination, the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import pipeline_artifacts as pa
from panoptic_deploy.bench.results import read_bench
from panoptic_deploy.errors import BenchError
from panoptic_deploy.gates import read_verdict
from panoptic_deploy.report import SkippedCombo, report_after_failure, skipped_from_json, write_report

SKIPPED = [
    {
        "backend": "tensorrt",
        "precision": "all",
        "reason": "TensorRT is not installed (No module named 'tensorrt')",
    },
    {"backend": "torch", "precision": "int8", "reason": "PyTorch has no INT8 path for this model"},
]


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> pa.Artifacts:
    return pa.benches(tmp_path_factory)


def _table_rows(text: str) -> dict[str, list[str]]:
    """First table's rows of the report, by row label."""
    rows: dict[str, list[str]] = {}
    for line in text.split("## Results", 1)[1].split("## Not run", 1)[0].splitlines():
        if line.startswith("| ") and not line.startswith("| row"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_report_has_every_row_every_skip_and_the_plots(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_torch is not None and art.bench_ort is not None
    out = tmp_path / "results" / "report.md"
    summary = write_report(
        [art.bench_ort, art.bench_torch], out, skipped=[*SKIPPED, SKIPPED[0]], example_image="rocket.png"
    )
    text = out.read_text(encoding="utf-8")
    torch_row, ort_row = read_bench(art.bench_torch), read_bench(art.bench_ort)

    rows = _table_rows(text)
    assert list(rows) == ["torch fp32", "onnxruntime fp32"]  # baseline first, whatever the input order
    assert rows["torch fp32"][2] == f"{torch_row.latency.network.p50_ms:.1f}"
    assert rows["torch fp32"][8] == "1.00x"
    net = ort_row.latency.network
    assert rows["onnxruntime fp32"][2] == f"{net.p50_ms:.1f}"
    # 4 timed runs: too few for a p90 (10) or a p99 (100); the CoV of every row is shown.
    assert net.count == 4 and net.p90_ms is None and net.p99_ms is None
    assert rows["onnxruntime fp32"][3] == rows["onnxruntime fp32"][4] == "–"
    assert net.cov is not None
    assert rows["onnxruntime fp32"][5] == f"{100 * net.cov:.1f}%" + (" unstable" if net.unstable else "")
    speedup = torch_row.latency.network.p50_ms / net.p50_ms
    assert rows["onnxruntime fp32"][8] == f"{speedup:.2f}x"
    assert rows["onnxruntime fp32"][9] == f"{100 * ort_row.accuracy.panoptic.pq:.2f}"
    assert ort_row.engine is not None
    assert rows["onnxruntime fp32"][14] == f"{ort_row.engine.bytes / 1e6:.1f}"
    assert rows["torch fp32"][14] == "–"

    # One plain line per skipped combination (the duplicate is dropped).
    not_run = text.split("## Not run on this machine", 1)[1].split("##", 1)[0]
    lines = [line for line in not_run.splitlines() if line.startswith("- ")]
    assert lines == [
        "- tensorrt (all precisions): TensorRT is not installed (No module named 'tensorrt')",
        "- torch int8: PyTorch has no INT8 path for this model",
    ]
    # Environment and versions.
    assert f"- CPU: {torch_row.environment.cpu_name}" in text
    assert f"onnxruntime {torch_row.environment.versions['onnxruntime']}" in text
    trt = torch_row.environment.versions["tensorrt"]
    assert ("tensorrt: not installed" if trt is None else f"tensorrt {trt}") in text

    # Plots: real PNGs, linked relative to the report.
    plots = out.parent / "report"
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["accuracy_vs_speed.png", "latency.png", f"panoptic_{pa.MODEL}.png"]
    assert sorted(Path(p).name for p in summary.plots) == names
    for name in names:
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100
        assert f"](report/{name})" in text
    assert f"{pa.MODEL}, image `rocket`" in text
    assert (summary.rows, summary.skipped) == (2, 3)
    assert not [p for p in out.parent.rglob("*") if ".tmp" in p.name]


def test_report_without_baseline_or_skips(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_ort is not None
    out = tmp_path / "r.md"
    write_report([art.bench_ort], out, plots_dir=tmp_path / "plots")
    text = out.read_text(encoding="utf-8")
    assert "No torch FP32 row for this model, so no speedup column." in text
    assert "Every requested combination ran." in text
    assert (tmp_path / "plots" / "latency.png").is_file()


def test_invalid_input_writes_nothing(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.bench_torch is not None
    data = json.loads(art.bench_torch.read_text(encoding="utf-8"))
    data["latency"]["network"]["p50_ms"] = -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        BenchError, match=r"bad\.json: invalid benchmark result: key 'latency/network/p50_ms'"
    ):
        write_report([art.bench_torch, bad], tmp_path / "report.md")
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report").exists()
    with pytest.raises(BenchError, match="no benchmark results"):
        write_report([], tmp_path / "report.md")


def _expected(tmp_path: Path, art: pa.Artifacts) -> list[dict[str, str]]:
    """The plan's rows of a run where the torch row finished, ONNX Runtime FP16 failed (its log says why)
    and ONNX Runtime INT8 never ran."""
    assert art.bench_torch is not None
    log = tmp_path / "logs" / "ort.fp16.log"
    log.parent.mkdir()
    log.write_text("Traceback (most recent call last):\nonnxruntime.InvalidProtobuf: bad engine\n", "utf-8")
    row = {"model": pa.MODEL, "device": "cpu"}
    return [
        {**row, "backend": "torch", "precision": "fp32", "bench": str(art.bench_torch), "log": str(log)},
        {**row, "backend": "onnxruntime", "precision": "fp16", "bench": str(tmp_path / "x.json"),
         "log": str(log)},
        {**row, "backend": "onnxruntime", "precision": "int8", "bench": str(tmp_path / "y.json"),
         "log": str(tmp_path / "never.log")},
    ]  # fmt: skip


def test_report_after_failure_names_the_failed_and_not_run_rows(art: pa.Artifacts, tmp_path: Path) -> None:
    expected = _expected(tmp_path, art)
    out, verdict_path = tmp_path / "results" / "report.md", tmp_path / "results" / "verdict.json"
    verdict = report_after_failure(expected, {"int8": {"max_pq_drop": 2.0}}, verdict_path, out)
    assert verdict is not None and read_verdict(verdict_path) == verdict
    assert [(r.row, r.gate, r.status, r.detail) for r in verdict.rows] == [
        (f"{pa.MODEL} onnxruntime fp16", "completes", "FAIL", "onnxruntime.InvalidProtobuf: bad engine"),
        (
            f"{pa.MODEL} onnxruntime int8",
            "completes",
            "NOT RUN",
            "no result: the benchmark did not run (an upstream job failed or was not run)",
        ),
    ]
    text = out.read_text(encoding="utf-8")
    # The verdict opens the report, before the environment; the row that finished is reported as usual.
    assert text.index("## Verdict") < text.index("## Environment") < text.index("## Results")
    assert "**FAIL** (0 PASS, 1 FAIL, 1 NOT RUN)." in text
    assert (
        f"| {pa.MODEL} onnxruntime fp16 | completes | – | **FAIL**: onnxruntime.InvalidProtobuf: bad engine |"
        in text
    )
    assert list(_table_rows(text)) == ["torch fp32"]
    assert (out.parent / "report" / f"panoptic_{pa.MODEL}.png").is_file()

    # Nothing failed: nothing written (the report rule ran).
    again = tmp_path / "again"
    assert report_after_failure(expected[:1], None, again / "verdict.json", again / "report.md") is None
    assert not again.exists()

    # Nothing finished: a report with the verdict alone, no plots.
    none = tmp_path / "none"
    verdict = report_after_failure(expected[1:], None, none / "verdict.json", none / "report.md")
    assert verdict is not None and verdict.status == "FAIL"
    text = (none / "report.md").read_text(encoding="utf-8")
    assert "No benchmark produced a result" in text and "## Environment" not in text
    assert sorted(p.name for p in none.iterdir()) == ["report.md", "verdict.json"]


# trtexec 11.x's warning after a failed capture (samples/common/sampleInference.cpp, release/11.1).
CAPTURE_FAILED = "CUDA graph capture failed. The inference will be launched without using CUDA graph."


def test_trtexec_checks_sit_beside_the_row_that_ran_the_same_engine_file(
    art: pa.Artifacts, tmp_path: Path
) -> None:
    from panoptic_deploy.engines.trtexec import TrtexecCheck, write_trtexec_check

    assert art.bench_ort is not None
    row = read_bench(art.bench_ort)
    assert row.engine is not None
    matched = tmp_path / "matched.json"
    orphan = tmp_path / "orphan.json"
    for path, sha, median in ((matched, row.engine.sha256, 0.5), (orphan, "cd" * 32, 2.0)):
        write_trtexec_check(
            TrtexecCheck(
                engine=f"results/engines/tensorrt/k/{path.stem}.engine",
                engine_sha256=sha,
                trtexec="TensorRT.trtexec [TensorRT v100300]",
                trtexec_version="10.3.0",
                tensorrt_version="10.3.0.26",
                command=("trtexec",),
                iterations=200,
                cuda_graph_requested=True,
                cuda_graph=path is orphan,
                warnings=() if path is orphan else (CAPTURE_FAILED,),
                gpu_compute_median_ms=median,
                gpu_compute_mean_ms=median,
                created="2026-11-25T22:00:00+00:00",
            ),
            path,
        )
    out = tmp_path / "r.md"
    write_report([art.bench_ort], out, trtexec_files=[matched, orphan])
    section = out.read_text(encoding="utf-8").split("## TensorRT engines timed by trtexec", 1)[1]
    table = [line for line in section.split("##", 1)[0].splitlines() if line.startswith("| ")][1:]
    ours = row.latency.network.p50_ms
    assert table == [
        f"| {pa.MODEL} onnxruntime fp32 | {ours:.2f} | 0.50 | {ours / 0.5:.2f}x | no (capture failed) | "
        "TensorRT.trtexec [TensorRT v100300] |",
        "| orphan.engine (no benchmark ran this file) | – | 2.00 | – | yes | "
        "TensorRT.trtexec [TensorRT v100300] |",
    ]
    assert f"- matched.engine: trtexec warned: {CAPTURE_FAILED}" in section
    assert "orphan.engine: trtexec warned" not in section
    # Without checks there is no such section.
    write_report([art.bench_ort], out)
    assert "timed by trtexec" not in out.read_text(encoding="utf-8")


def test_skipped_entries_are_checked() -> None:
    assert skipped_from_json([{"backend": "tensorrt", "precision": "fp16", "reason": "r"}]) == [
        SkippedCombo("tensorrt", "fp16", "r")
    ]
    assert SkippedCombo("onnxruntime", "fp16", "slow").line() == "onnxruntime fp16: slow"
    with pytest.raises(BenchError, match=r"skipped\[1\]: needs keys backend, precision, reason"):
        skipped_from_json([{"backend": "a", "precision": "b", "reason": "c"}, {"backend": "x"}])


@pytest.mark.parametrize(
    ("low", "high", "scale"),
    [(10.0, 150.0, "linear"), (10.0, 199.0, "linear"), (10.0, 201.0, "log"), (0.0, 300.0, "log")],
)
def test_latency_axis_is_logarithmic_beyond_20x(low: float, high: float, scale: str) -> None:
    from panoptic_deploy.report.plots import _latency_axis, _new_figure

    ax = _new_figure(4.0, 3.0).add_subplot()
    _latency_axis(ax, low, high)
    assert ax.get_xscale() == scale
    lo, hi = ax.get_xlim()
    assert hi > high
    assert lo == 0.0 if scale == "linear" else 0.0 < lo < max(low, 1e-3)


def _with_network(source: Path, out: Path, cov: float, threshold: float, load: float) -> Path:
    """A copy of a benchmark JSON whose network CoV, threshold and start load average are set."""
    data = json.loads(source.read_text(encoding="utf-8"))
    network = data["latency"]["network"]
    network["cov"], network["cov_threshold"] = cov, threshold
    network["stdev_ms"] = cov * network["mean_ms"]
    network["unstable"] = cov > threshold
    data["environment"]["timing"]["load_average"] = [load, 1.0, 1.0]
    data["environment"]["timing"]["cpu_affinity"] = 2
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def test_every_row_shows_its_cov_and_unstable_rows_are_flagged_in_a_line(
    art: pa.Artifacts, tmp_path: Path
) -> None:
    import numpy as np

    assert art.bench_torch is not None and art.bench_ort is not None
    rng = np.random.default_rng()
    threshold = float(rng.uniform(0.03, 0.08))
    steady, noisy = threshold * float(rng.uniform(0.2, 0.9)), threshold * float(rng.uniform(1.1, 4.0))
    files = [
        _with_network(art.bench_torch, tmp_path / "t.json", steady, threshold, 0.5),
        _with_network(art.bench_ort, tmp_path / "o.json", noisy, threshold, 3.5),
    ]
    out = tmp_path / "r.md"
    write_report(files, out, plots_dir=tmp_path / "plots")
    text = out.read_text(encoding="utf-8")
    rows = _table_rows(text)
    assert rows["torch fp32"][5] == f"{100 * steady:.1f}%"
    assert rows["onnxruntime fp32"][5] == f"{100 * noisy:.1f}% unstable"
    count = read_bench(files[1]).latency.network.count
    assert (
        f"- Unstable timings: onnxruntime fp32: unstable: CoV {noisy:.1%} over {count} runs exceeds "
        f"{threshold:.1%}; compare its latencies with care." in text
    )
    assert "torch fp32: unstable" not in text
    # The busy start (load 3.5 on 2 usable CPUs) is said too; the quiet one is not.
    assert "- onnxruntime fp32: load average 3.50 at its start exceeds the 2 CPU(s) it may use" in text
    assert "- torch fp32: load average" not in text

    # No row above its threshold: one line saying so.
    files = [_with_network(art.bench_torch, tmp_path / "t.json", steady, threshold, 0.5)]
    write_report(files, out, plots_dir=tmp_path / "plots")
    text = out.read_text(encoding="utf-8")
    assert f"- Stable timings: every row's network CoV is within {threshold:.1%}." in text
    assert "Unstable timings" not in text


def test_bench_cli_defaults_are_the_schema_defaults() -> None:
    from panoptic_deploy.cli import build_parser
    from panoptic_deploy.defaults import schema_default

    args = build_parser().parse_args(
        ["bench", "--backend", "torch", "--precision", "fp32", "--config", "c.yaml", "--reference", "r.npz"]
    )
    assert (args.warmup, args.iterations, args.min_seconds, args.cov_threshold) == tuple(
        schema_default("bench", key) for key in ("warmup", "iterations", "min_seconds", "cov_threshold")
    )


def _scaled(source: Path, out: Path, factor: float, unstable: bool) -> Path:
    data = json.loads(source.read_text(encoding="utf-8"))
    network = data["latency"]["network"]
    network["p50_ms"] *= factor
    network["unstable"] = unstable
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def test_compare_timings_holds_unflagged_rows_to_the_tolerance(
    art: pa.Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from panoptic_deploy.cli import main
    from panoptic_deploy.report.stability import compare_runs

    assert art.bench_torch is not None and art.bench_ort is not None
    rng = np.random.default_rng()
    near, far = float(rng.uniform(1.01, 1.14)), float(rng.uniform(1.16, 1.6))
    a = [_scaled(art.bench_torch, tmp_path / "a" / "t.json", 1.0, False),
         _scaled(art.bench_ort, tmp_path / "a" / "o.json", 1.0, False)]  # fmt: skip
    b = [_scaled(art.bench_torch, tmp_path / "b" / "t.json", near, False),
         _scaled(art.bench_ort, tmp_path / "b" / "o.json", far, False)]  # fmt: skip
    result = compare_runs(a, b)
    changes = {r.row.split()[-2]: r.change for r in result.rows}
    assert changes == pytest.approx({"torch": near - 1, "onnxruntime": far - 1}, rel=1e-9)
    assert [r.row.split()[-2] for r in result.failures] == ["onnxruntime"]
    assert main(["compare-timings", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 unflagged row(s) agree within 15 % in p50 (0 flagged row(s) not held)" in out
    # Flagged unstable in run B: reported, not held to the tolerance.
    _scaled(art.bench_ort, tmp_path / "b" / "o.json", far, True)
    assert main(["compare-timings", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "flagged unstable (not held)" in capsys.readouterr().out
    # A row of one run only is named, not compared.
    (tmp_path / "b" / "o.json").unlink()
    only = compare_runs(a, [tmp_path / "b" / "t.json"])
    assert only.only_a == (f"{pa.MODEL} cpu onnxruntime fp32",) and len(only.rows) == 1
