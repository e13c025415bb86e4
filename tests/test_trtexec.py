"""The trtexec cross-check: parsing trtexec's output, the command line, the JSON record and its errors.

Running trtexec itself needs TensorRT and a GPU, which no machine of this project has; nothing here pretends
to be trtexec. What runs everywhere is the parsing (on lines of real trtexec logs), the command it would run,
and the record's validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panoptic_deploy.engines import EngineError
from panoptic_deploy.engines.trtexec import (
    TrtexecCheck,
    parse_banner,
    parse_gpu_compute_ms,
    read_trtexec_check,
    run_trtexec,
    trtexec_command,
    write_trtexec_check,
)

# SUMMARY_8: lines of a public TensorRT 8.4 trtexec log. SUMMARY_10: lines in the format of TensorRT 10.x
# logs (banner with the version as v<major><minor><patch>, percentiles 90/95/99), values made up.
SUMMARY_8 = (
    "[05/09/2022-06:27:25] [I] Enqueue Time: min = 0.00244141 ms, max = 0.0256348 ms, mean = 0.00720864 ms\n"
    "[05/09/2022-06:27:25] [I] GPU Compute Time: min = 2.05615 ms, max = 2.59482 ms, mean = 2.09467 ms, "
    "median = 2.08276 ms, percentile(99%) = 2.58971 ms\n"
)
SUMMARY_10 = (
    "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --loadEngine=m.plan --iterations=100\n"
    "[08/14/2024-10:02:11] [I] Throughput: 412.3 qps\n"
    "[08/14/2024-10:02:11] [I] GPU Compute Time: min = 2.3717 ms, max = 2.6133 ms, mean = 2.41021 ms, "
    "median = 2.40503 ms, percentile(90%) = 2.43311 ms, percentile(95%) = 2.44531 ms, "
    "percentile(99%) = 2.52148 ms\n"
    "&&&& PASSED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --loadEngine=m.plan --iterations=100\n"
)


def test_gpu_compute_median_and_mean_are_read_from_the_summary() -> None:
    assert parse_gpu_compute_ms(SUMMARY_8) == (2.08276, 2.09467)
    assert parse_gpu_compute_ms(SUMMARY_10) == (2.40503, 2.41021)
    with pytest.raises(EngineError, match="no 'GPU Compute Time' summary"):
        parse_gpu_compute_ms("[I] Throughput: 41.25 qps\n")


def test_banner_names_trtexec_and_the_tensorrt_version() -> None:
    assert parse_banner(SUMMARY_10) == "TensorRT.trtexec [TensorRT v100300]"
    assert parse_banner(SUMMARY_8) == "trtexec"


def test_command_loads_the_plan_without_copies_and_graph_only_on_request() -> None:
    plain = trtexec_command("e.plan", "/opt/trt/bin/trtexec", 50, cuda_graph=False)
    assert plain == ["/opt/trt/bin/trtexec", "--loadEngine=e.plan", "--iterations=50", "--noDataTransfers"]
    graph = trtexec_command("e.plan", "trtexec", 100, cuda_graph=True)
    assert graph[-1] == "--useCudaGraph" and "--iterations=100" in graph


def test_run_names_the_engine_when_it_or_trtexec_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(EngineError, match=r"^.*absent\.plan: engine file not found$"):
        run_trtexec(tmp_path / "absent.plan")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EngineError, match=r"m\.plan: trtexec is not on PATH$"):
        run_trtexec(plan)


def _check(engine: str = "results/engines/tensorrt/x/m.fp16.engine") -> TrtexecCheck:
    return TrtexecCheck(
        engine=engine,
        engine_sha256="ab" * 32,
        trtexec="TensorRT.trtexec [TensorRT v100300]",
        command=("trtexec", f"--loadEngine={engine}", "--iterations=100", "--noDataTransfers"),
        iterations=100,
        cuda_graph=False,
        gpu_compute_median_ms=2.40503,
        gpu_compute_mean_ms=2.41021,
        created="2026-11-25T22:00:00+00:00",
    )


def test_record_round_trips_and_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "m.fp16.json"
    write_trtexec_check(_check(), path)
    assert read_trtexec_check(path) == _check()

    data = json.loads(path.read_text(encoding="utf-8"))
    data["gpu_compute_median_ms"] = -1.0
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        EngineError, match=r"m\.fp16\.json: invalid trtexec check: key 'gpu_compute_median_ms'"
    ):
        read_trtexec_check(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(EngineError, match=r"m\.fp16\.json: not valid JSON"):
        read_trtexec_check(path)

    bad = tmp_path / "bad.json"
    with pytest.raises(EngineError, match="refusing to write an invalid trtexec check: key 'engine_sha256'"):
        write_trtexec_check(TrtexecCheck(**{**_check().__dict__, "engine_sha256": "xyz"}), bad)
    assert not bad.exists()
