"""Release gates: config parsing, PASS/FAIL/NOT RUN per row, error lines from job logs, verdict.json, table.

Benchmark results are built in memory (the real bench JSON layout, written and re-read through
``write_bench``/``read_bench`` where the file path matters), with PQ values and latencies drawn fresh per run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from panoptic_deploy.bench.environment import capture_environment
from panoptic_deploy.bench.results import (
    Accuracy,
    BenchResult,
    BenchSettings,
    GroundTruthPQ,
    ImagePanoptic,
    Latency,
    Memory,
    PQSummary,
    write_bench,
)
from panoptic_deploy.compare import OutputError, PanopticAgreement
from panoptic_deploy.gates import (
    ExpectedRow,
    Gate,
    GateError,
    Gates,
    RowFailure,
    collect_bench_rows,
    error_line,
    evaluate_gates,
    gates_from_config,
    read_verdict,
    verdict_markdown,
    verdict_of_files,
    write_verdict,
)
from panoptic_deploy.modeling import OUTPUT_NAMES
from panoptic_deploy.timing import TimingStats, timing_stats

MODEL = "demo_64x96"
ENV = capture_environment()
TENSORS = {name: OutputError(name, "discrete", 10, mismatches=0) for name in OUTPUT_NAMES}


def _stats(p50: float) -> TimingStats:
    return timing_stats([p50] * 4)


def _result(
    backend: str,
    precision: str,
    *,
    p50: float,
    fidelity_pq: float,
    gt_pq: float | None = None,
    n: int = 7,
    device: str = "cpu",
    device_name: str = "cpu",
) -> BenchResult:
    summary = None if gt_pq is None else PQSummary(gt_pq, 0.8, gt_pq / 0.8, n)
    return BenchResult(
        model=MODEL,
        backend=backend,
        precision=precision,
        device=device,
        device_name=device_name,
        input_shape=(1, 3, 64, 96),
        settings=BenchSettings(1, 4, 2, ("a.png",)),
        latency=Latency(_stats(p50), _stats(1.0), _stats(1.0), _stats(p50 + 2.0)),
        throughput_ips=1000.0 / p50,
        end_to_end_ips=1000.0 / (p50 + 2.0),
        memory=Memory(100.0, 200.0),
        accuracy=Accuracy(
            "ref.npz", "0" * 64, TENSORS, 3, 3, 3, PanopticAgreement(fidelity_pq, 0.9, 0.95, n, 0.99, 1), 1
        ),
        ground_truth=None if summary is None else GroundTruthPQ("gt.json", 1, summary, summary, summary),
        engine=None,
        environment=ENV,
        panoptic=(ImagePanoptic("a", np.zeros((2, 3), np.int32), ()),),
        created="2026-01-01T00:00:00+00:00",
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


def test_gates_from_config_parses_and_rejects_with_the_key() -> None:
    gates = gates_from_config({"fp16": {"max_pq_drop": 0.5, "min_speedup": None}, "int8": {"max_pq_drop": 2}})
    assert gates.per_precision == {"fp16": Gate(0.5, None), "int8": Gate(2.0, None)}
    # Empty gates (all null, as the schema's defaults fill fp32) gate nothing.
    assert gates_from_config({"fp32": {"max_pq_drop": None, "min_speedup": None}}).per_precision == {}
    assert gates_from_config(None).per_precision == {}
    with pytest.raises(GateError, match=r"^config key 'gates': unknown precision 'int4'"):
        gates_from_config({"int4": {"max_pq_drop": 1}})
    with pytest.raises(GateError, match=r"^config key 'gates'\.int8: unknown key 'max_drop'"):
        gates_from_config({"int8": {"max_drop": 1}})
    with pytest.raises(GateError, match=r"^config key 'gates'\.int8\.max_pq_drop: expected a number"):
        gates_from_config({"int8": {"max_pq_drop": True}})
    with pytest.raises(GateError, match=r"^config key 'gates'\.fp16\.min_speedup: must be > 0"):
        gates_from_config({"fp16": {"min_speedup": 0}})
    with pytest.raises(GateError, match=r"max_pq_drop: must be >= 0"):
        gates_from_config({"fp16": {"max_pq_drop": -0.1}})


def test_ground_truth_drop_and_speedup(rng: np.random.Generator) -> None:
    base_pq = float(rng.uniform(0.4, 0.7))
    fp16_pq = base_pq - float(rng.uniform(0.0, 0.004))  # < 0.4 points: passes 0.5
    int8_pq = base_pq - float(rng.uniform(0.021, 0.05))  # > 2.1 points: fails 2.0
    base_ms, fp16_ms, int8_ms = (float(v) for v in rng.uniform([80, 30, 10], [120, 60, 20]))
    results = [
        _result("torch", "fp32", p50=base_ms, fidelity_pq=1.0, gt_pq=base_pq),
        _result("onnxruntime", "int8", p50=int8_ms, fidelity_pq=0.5, gt_pq=int8_pq),
        _result("onnxruntime", "fp16", p50=fp16_ms, fidelity_pq=0.1, gt_pq=fp16_pq),
        _result("onnxruntime", "fp32", p50=base_ms, fidelity_pq=0.2, gt_pq=base_pq),  # ungated precision
    ]
    gates = Gates({"fp16": Gate(max_pq_drop=0.5), "int8": Gate(max_pq_drop=2.0, min_speedup=20.0)})
    verdict = evaluate_gates(results, gates, created="t")
    got = [(r.row, r.gate, r.measured, r.basis, r.status) for r in verdict.rows]
    assert got == [
        (f"{MODEL} onnxruntime fp16", "max_pq_drop", 100.0 * (base_pq - fp16_pq), "ground truth", "PASS"),
        (f"{MODEL} onnxruntime int8", "max_pq_drop", 100.0 * (base_pq - int8_pq), "ground truth", "FAIL"),
        (f"{MODEL} onnxruntime int8", "min_speedup", base_ms / int8_ms, "network p50", "FAIL"),
    ]  # fidelity PQ is ignored where ground truth exists; the torch baseline itself is not gated
    assert verdict.status == "FAIL" and verdict.exit_code() == 1
    assert (verdict.count("PASS"), verdict.count("FAIL"), verdict.count("NOT RUN")) == (1, 2, 0)


def test_fidelity_when_no_ground_truth_and_limits_are_inclusive(rng: np.random.Generator) -> None:
    fidelity = float(rng.uniform(0.95, 0.99))
    drop = 100.0 * (1.0 - fidelity)
    gpu = "NVIDIA H100 80GB HBM3"
    results = [
        _result("torch", "fp32", p50=1000.0, fidelity_pq=1.0),  # the CPU's baseline: not the GPU rows'
        _result("torch", "fp32", p50=100.0, fidelity_pq=1.0, device="cuda", device_name=gpu),
        _result("tensorrt", "int8", p50=25.0, fidelity_pq=fidelity, device="cuda", device_name=gpu),
    ]
    verdict = evaluate_gates(results, Gates({"int8": Gate(max_pq_drop=drop, min_speedup=4.0)}), created="t")
    # The speedup is against the torch FP32 row on the same GPU (4x), as in the report's table for that GPU;
    # both baselines are ungated.
    assert [(r.row, r.measured, r.basis, r.status) for r in verdict.rows] == [
        (f"{MODEL} tensorrt int8 on {gpu}", drop, "fidelity vs torch FP32", "PASS"),
        (f"{MODEL} tensorrt int8 on {gpu}", 4.0, "network p50", "PASS"),
    ]
    assert verdict.status == "PASS" and verdict.exit_code() == 0
    tighter = evaluate_gates(results, Gates({"int8": Gate(max_pq_drop=drop - 1e-9)}), created="t")
    assert tighter.status == "FAIL"
    # Without a torch FP32 row on that GPU, the CPU's is not taken: the speedup is not measured.
    speedup_only = Gates({"int8": Gate(min_speedup=4.0)})
    no_gpu_base = evaluate_gates([results[0], results[2]], speedup_only, created="t")
    assert [(r.measured, r.status) for r in no_gpu_base.rows] == [(None, "NOT RUN")]
    assert "on this device" in no_gpu_base.rows[0].detail


def test_unmeasurable_gates_and_failures(rng: np.random.Generator) -> None:
    fidelity = float(rng.uniform(0.9, 1.0))
    results = [
        # No torch FP32 row: a speedup cannot be measured, the fidelity PQ drop still can.
        _result("onnxruntime", "int8", p50=10.0, fidelity_pq=fidelity),
        _result("onnxruntime", "fp16", p50=10.0, fidelity_pq=0.0, n=0),  # no segments: PQ undefined
    ]
    failures = [
        RowFailure(MODEL, "tensorrt", "int8", "RuntimeError: engine file is corrupted"),
        RowFailure(MODEL, "torch", "fp32", None),
    ]
    gates = Gates({"fp16": Gate(max_pq_drop=0.5), "int8": Gate(max_pq_drop=100.0, min_speedup=1.0)})
    verdict = evaluate_gates(results, gates, failures, created="t")
    got = [(r.row, r.gate, r.measured, r.status) for r in verdict.rows]
    assert got == [
        (f"{MODEL} torch fp32", "completes", None, "NOT RUN"),
        (f"{MODEL} onnxruntime fp16", "max_pq_drop", None, "NOT RUN"),
        (f"{MODEL} onnxruntime int8", "max_pq_drop", 100.0 * (1.0 - fidelity), "PASS"),
        (f"{MODEL} onnxruntime int8", "min_speedup", None, "NOT RUN"),
        (f"{MODEL} tensorrt int8", "completes", None, "FAIL"),
    ]
    trt = verdict.rows[-1]
    assert trt.detail == "RuntimeError: engine file is corrupted"
    assert trt.basis == "PQ drop <= 100, speedup >= 1x"
    assert verdict.status == "FAIL"
    only_not_run = evaluate_gates(results[:1], gates, failures[1:], created="t")
    assert only_not_run.status == "NOT RUN" and only_not_run.exit_code() == 1


def test_error_line_picks_the_exception() -> None:
    log = (
        "INFO:root:loading engine\n"
        "Traceback (most recent call last):\n"
        '  File "bench.py", line 3, in <module>\n'
        "panoptic_deploy.bench.BenchError: results/engines/x.engine: not a TensorRT engine\n"
        "\n"
    )
    assert (
        error_line(log) == "panoptic_deploy.bench.BenchError: results/engines/x.engine: not a TensorRT engine"
    )
    assert error_line("step 1\nkilled by signal 9\n") == "killed by signal 9"
    assert error_line("error: config key 'bench.iterations': 0 is less than 1\nsnakemake exiting\n") == (
        "error: config key 'bench.iterations': 0 is less than 1"
    )
    assert error_line("\n  \n") is None
    long = error_line("ValueError: " + "x" * 1000)
    assert long is not None and len(long) == 300 and long.endswith(" ...")


def test_collect_rows_tolerates_missing_and_broken_files(tmp_path: Path) -> None:
    good = tmp_path / "torch.fp32.json"
    write_bench(_result("torch", "fp32", p50=50.0, fidelity_pq=1.0), good)
    broken = tmp_path / "ort.int8.json"
    broken.write_text('{"schema_version": 1', encoding="utf-8")
    failed_log = tmp_path / "trt.log"
    failed_log.write_text("Traceback ...\nRuntimeError: CUDA out of memory\n", encoding="utf-8")
    expected = [
        ExpectedRow(MODEL, "torch", "fp32", good),
        ExpectedRow(MODEL, "onnxruntime", "int8", broken),
        ExpectedRow(MODEL, "tensorrt", "int8", tmp_path / "missing.json", failed_log),
        ExpectedRow(MODEL, "tensorrt", "fp16", tmp_path / "missing2.json", tmp_path / "no.log"),
    ]
    results, failures = collect_bench_rows(expected)
    assert [(r.backend, r.precision, r.latency.network.p50_ms) for r in results] == [("torch", "fp32", 50.0)]
    assert [(f.backend, f.precision) for f in failures] == [
        ("onnxruntime", "int8"),
        ("tensorrt", "int8"),
        ("tensorrt", "fp16"),
    ]
    assert failures[0].error == f"{broken}: not valid JSON (Expecting ',' delimiter at line 1)"
    assert failures[1].error == "RuntimeError: CUDA out of memory"
    assert failures[2].error is None


def test_expected_rows_from_the_plan_name_gpu_rows_by_their_type(tmp_path: Path) -> None:
    log = tmp_path / "results/logs/bench_engine/l40s/tensorrt/m.int8.log"
    log.parent.mkdir(parents=True)
    log.write_text("RuntimeError: engine was built for another GPU\n", encoding="utf-8")
    plan_rows = [
        {"model": "m", "backend": "tensorrt", "precision": "int8", "device": "l40s",
         "bench": str(tmp_path / "results/bench/l40s/tensorrt/m.int8.json"), "log": str(log)},
        {"model": "m", "backend": "onnxruntime", "precision": "int8", "device": "cpu",
         "bench": str(tmp_path / "results/bench/cpu/onnxruntime/m.int8.json"), "log": str(log) + ".none"},
    ]  # fmt: skip
    expected = [ExpectedRow.from_json(row) for row in plan_rows]
    assert expected[0] == ExpectedRow("m", "tensorrt", "int8", Path(plan_rows[0]["bench"]), log, "l40s")
    verdict = verdict_of_files(expected, Gates({"int8": Gate(max_pq_drop=2.0)}))
    # CPU rows first, then each GPU type; the row names the GPU type its path asked for.
    assert [(r.row, r.status, r.detail[:13]) for r in verdict.rows] == [
        ("m onnxruntime int8", "NOT RUN", "no result: th"),
        ("m tensorrt int8 on l40s", "FAIL", "RuntimeError:"),
    ]


def test_verdict_file_round_trips_and_the_table_names_every_row(tmp_path: Path) -> None:
    results = [
        _result("torch", "fp32", p50=100.0, fidelity_pq=1.0),
        _result("onnxruntime", "int8", p50=40.0, fidelity_pq=0.9712),
    ]
    failures = [RowFailure(MODEL, "tensorrt", "int8", "RuntimeError: bad | engine")]
    verdict = evaluate_gates(results, Gates({"int8": Gate(2.0, 2.0)}), failures, created="2026-01-01T00:00Z")
    path = tmp_path / "results" / "verdict.json"
    write_verdict(verdict, path)
    assert read_verdict(path) == verdict
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["status"] == "FAIL" and data["counts"] == {"PASS": 1, "FAIL": 2, "NOT RUN": 0}
    assert data["gates"] == {"int8": {"max_pq_drop": 2.0, "min_speedup": 2.0}}
    assert [p.name for p in path.parent.iterdir()] == ["verdict.json"]  # no temporary left behind

    lines = verdict_markdown(verdict)
    assert lines[:4] == ["## Verdict", "", "**FAIL** (1 PASS, 2 FAIL, 0 NOT RUN).", ""]
    assert lines[4:7] == [
        "| row | gate | measured | verdict |",
        "|---|---|---|---|",
        f"| {MODEL} onnxruntime int8 | PQ drop <= 2 | 2.88 PQ (fidelity vs torch FP32) | **FAIL** |",
    ]
    assert lines[7] == f"| {MODEL} onnxruntime int8 | speedup >= 2x | 2.50x (network p50) | PASS |"
    assert lines[8] == (
        f"| {MODEL} tensorrt int8 | completes (gated: PQ drop <= 2, speedup >= 2x) | – | "
        "**FAIL**: RuntimeError: bad \\| engine |"
    )

    bad = dataclasses.replace(verdict, status="MAYBE")  # type: ignore[arg-type]
    with pytest.raises(GateError, match=r"verdict\.json: refusing to write an invalid verdict: key 'status'"):
        write_verdict(bad, path)
    assert read_verdict(path) == verdict  # the old file is untouched


def test_no_gates_no_failures_passes() -> None:
    verdict = evaluate_gates([_result("torch", "fp32", p50=1.0, fidelity_pq=1.0)], Gates(), created="t")
    assert verdict.rows == () and verdict.status == "PASS"
    assert verdict_markdown(verdict)[2:4] == [
        "**PASS** (0 PASS, 0 FAIL, 0 NOT RUN).",
        "",
    ]


def test_schema_defaults_are_the_documented_gates() -> None:
    from snakemake.utils import validate

    root = Path(__file__).resolve().parents[1]
    cfg: dict[str, object] = {"gates": {"int8": {"min_speedup": 1.5}}}
    validate(cfg, str(root / "workflow" / "schemas" / "config.schema.yaml"))
    assert gates_from_config(cfg["gates"]).per_precision == {  # type: ignore[arg-type]
        "fp16": Gate(max_pq_drop=0.5),
        "int8": Gate(max_pq_drop=2.0, min_speedup=1.5),
    }


def test_the_int8_search_is_decided_by_the_accuracy_gate_alone(tmp_path: Path) -> None:
    from panoptic_deploy.int8_job import int8_gate_rows

    files = [tmp_path / "torch.json", tmp_path / "int8.json"]
    write_bench(_result("torch", "fp32", p50=100.0, fidelity_pq=1.0), files[0])
    write_bench(_result("onnxruntime", "int8", p50=50.0, fidelity_pq=0.99), files[1])  # 1.0 PQ lost
    # Too slow but accurate enough: the verdict fails, the search (which restores accuracy) is not needed.
    rows, passed = int8_gate_rows(files, {"int8": {"max_pq_drop": 2.0, "min_speedup": 1000.0}}, MODEL)
    assert [(r["gate"], r["status"]) for r in rows] == [("max_pq_drop", "PASS"), ("min_speedup", "FAIL")]
    assert passed
    rows, passed = int8_gate_rows(files, {"int8": {"max_pq_drop": 0.5}}, MODEL)
    assert [(r["gate"], r["status"]) for r in rows] == [("max_pq_drop", "FAIL")] and not passed
    _, passed = int8_gate_rows(files[:1], {"int8": {"max_pq_drop": 2.0}}, MODEL)
    assert not passed  # no INT8 result: not passing
