"""The trtexec cross-check: parsing trtexec's output, the version check, the flags per version, the record.

Running trtexec itself needs TensorRT and a GPU, which no machine of this project has; nothing here pretends
to be trtexec (no fake program is run). What runs everywhere is the parsing (on lines in the format of real
trtexec logs), the version comparison, the command it would run, and the record's validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panoptic_deploy.engines import EngineError
from panoptic_deploy.engines.trtexec import (
    TrtexecCheck,
    TrtexecVersion,
    flagged_warnings,
    parse_banner,
    parse_cuda_graph,
    parse_gpu_compute_ms,
    parse_version,
    read_trtexec_check,
    run_trtexec,
    trtexec_command,
    trtexec_compatibility,
    version_mismatch,
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

# A TensorRT 11.1 trtexec log (excerpt), written line by line from the print statements of NVIDIA/TensorRT
# release/11.1 (commit 90536162): the banner from samples/common/logging.h (Logger::defineTest:
# "<name> [TensorRT v" NV_TENSORRT_VERSION "] [b" NV_TENSORRT_BUILD "]", reportTestResult: "&&&& RUNNING
# <name> # <cmdline>"; include/NvInferVersion.h: 11.1.0 build 106), the "[MM/DD/YYYY-HH:MM:SS] [I] " prefix
# from LogStreamConsumerBuffer::putOutput, the inference options from sampleOptions.cpp (operator<< of
# InferenceOptions; 11.x defaults: transfers off, spin-wait on, CUDA graph on), the capture messages from
# sampleInference.cpp (IterationStd::createEnqueueFunction) and the summary from sampleReporting.cpp
# (printProlog, printEpilog). Timestamps and values are made up. Run as `trtexec --loadEngine=m.plan
# --iterations=100`, i.e. with the 11.x flags for a graph run (no flag needed).
LOG_11_GRAPH = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --loadEngine=m.plan --iterations=100
[07/08/2026-10:00:00] [I] === Inference Options ===
[07/08/2026-10:00:00] [I] Batch: Explicit
[07/08/2026-10:00:00] [I] Iterations: 100
[07/08/2026-10:00:00] [I] Duration: 3s (+ 200ms warm up)
[07/08/2026-10:00:00] [I] Sleep time: 0ms
[07/08/2026-10:00:00] [I] Idle time: 0ms
[07/08/2026-10:00:00] [I] Inference Streams: 1
[07/08/2026-10:00:00] [I] ExposeDMA: Disabled
[07/08/2026-10:00:00] [I] Data transfers: Disabled
[07/08/2026-10:00:00] [I] Spin-wait: Enabled
[07/08/2026-10:00:00] [I] Multithreading: Disabled
[07/08/2026-10:00:00] [I] CUDA Graph: Enabled
[07/08/2026-10:00:00] [I] Time Deserialize: Disabled
[07/08/2026-10:00:00] [I] Time Refit: Disabled
[07/08/2026-10:00:00] [I] TensorRT version: 11.1.0
[07/08/2026-10:00:01] [I] Created execution context with device memory size: 61.5 MiB
[07/08/2026-10:00:01] [I] Starting inference
[07/08/2026-10:00:01] [I] Capturing CUDA graph for the current execution context
[07/08/2026-10:00:01] [I] Successfully captured CUDA graph for the current execution context. When \
profiling with Nsight Systems, add "--cuda-graph-trace=node" to the nsys command to see per-kernel execution \
times.
[07/08/2026-10:00:04] [I] Warmup completed 91 queries over 200 ms
[07/08/2026-10:00:04] [I] Timing trace has 1377 queries over 3.00231 s
[07/08/2026-10:00:04] [I] === Performance summary ===
[07/08/2026-10:00:04] [I] Throughput: 458.645 qps
[07/08/2026-10:00:04] [I] Latency: min = 2.1342 ms, max = 2.2917 ms, mean = 2.17512 ms, median = 2.1731 ms, \
percentile(90%) = 2.19 ms, percentile(95%) = 2.1962 ms, percentile(99%) = 2.2259 ms
[07/08/2026-10:00:04] [I] Enqueue Time: min = 0.00317383 ms, max = 0.0240479 ms, mean = 0.00439 ms, \
median = 0.00415039 ms, percentile(90%) = 0.00488281 ms, percentile(95%) = 0.00537109 ms, \
percentile(99%) = 0.0065918 ms
[07/08/2026-10:00:04] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, \
percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[07/08/2026-10:00:04] [I] GPU Compute Time: min = 2.1342 ms, max = 2.2917 ms, mean = 2.17512 ms, \
median = 2.1731 ms, percentile(90%) = 2.19 ms, percentile(95%) = 2.1962 ms, percentile(99%) = 2.2259 ms
[07/08/2026-10:00:04] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, \
percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[07/08/2026-10:00:04] [I] Total Host Walltime: 3.00231 s
[07/08/2026-10:00:04] [I] Total GPU Compute Time: 2.99514 s
[07/08/2026-10:00:04] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --loadEngine=m.plan --iterations=100
"""

# The same run where the capture fails (11.x messages, sampleInference.cpp and sampleDevice.h
# TrtCudaGraph::endCaptureOnError, release/11.1): a warning, plain launches, exit code 0.
_CAPTURE_FAILED_11 = """\
[07/08/2026-10:00:01] [I] Capturing CUDA graph for the current execution context
[07/08/2026-10:00:01] [W] The CUDA graph capture on the stream has failed.
[07/08/2026-10:00:01] [W] The built TensorRT engine contains operations that are not permitted under CUDA \
graph capture mode.
[07/08/2026-10:00:01] [W] CUDA graph capture failed. The inference will be launched without using CUDA graph.
"""
_CAPTURED_11 = LOG_11_GRAPH[
    LOG_11_GRAPH.index("[07/08/2026-10:00:01] [I] Capturing") : LOG_11_GRAPH.index(
        "[07/08/2026-10:00:04] [I] Warmup"
    )
]
LOG_11_CAPTURE_FAILED = LOG_11_GRAPH.replace(_CAPTURED_11, _CAPTURE_FAILED_11)

# TensorRT 10.13 (release/10.13, commit b8db91e1) with --useCudaGraph and a failed capture: its wording
# names the flag ("The specified --useCudaGraph flag has been ignored ..."), and the options say "CUDA Graph:
# Enabled" because the flag was given.
LOG_10_CAPTURE_FAILED = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b35] # trtexec --loadEngine=m.plan --iterations=100 \
--noDataTransfers --useCudaGraph
[07/08/2026-10:00:00] [I] === Inference Options ===
[07/08/2026-10:00:00] [I] Data transfers: Disabled
[07/08/2026-10:00:00] [I] Spin-wait: Disabled
[07/08/2026-10:00:00] [I] Multithreading: Disabled
[07/08/2026-10:00:00] [I] CUDA Graph: Enabled
[07/08/2026-10:00:01] [I] Capturing CUDA graph for the current execution context
[07/08/2026-10:00:01] [W] The CUDA graph capture on the stream has failed.
[07/08/2026-10:00:01] [W] The built TensorRT engine contains operations that are not permitted under CUDA \
graph capture mode.
[07/08/2026-10:00:01] [W] The specified --useCudaGraph flag has been ignored. The inference will be launched \
without using CUDA graph launch.
[07/08/2026-10:00:04] [I] GPU Compute Time: min = 2.3717 ms, max = 2.6133 ms, mean = 2.41021 ms, \
median = 2.40503 ms, percentile(90%) = 2.43311 ms, percentile(95%) = 2.44531 ms, percentile(99%) = 2.52148 ms
&&&& PASSED TensorRT.trtexec [TensorRT v101300] [b35] # trtexec --loadEngine=m.plan --iterations=100 \
--noDataTransfers --useCudaGraph
"""

V10 = TrtexecVersion(10, 13, 0, 35)
V11 = TrtexecVersion(11, 1, 0, 106)


def test_gpu_compute_median_and_mean_are_read_from_the_summary() -> None:
    assert parse_gpu_compute_ms(SUMMARY_8) == (2.08276, 2.09467)
    assert parse_gpu_compute_ms(SUMMARY_10) == (2.40503, 2.41021)
    assert parse_gpu_compute_ms(LOG_11_GRAPH) == (2.1731, 2.17512)
    # the default ostream format switches to an exponent below 1e-4
    tiny = "[I] GPU Compute Time: min = 9.5e-05 ms, max = 0.0002 ms, mean = 0.000125 ms, median = 9.8e-05 ms"
    assert parse_gpu_compute_ms(tiny) == (9.8e-05, 0.000125)
    with pytest.raises(EngineError, match="no 'GPU Compute Time' summary"):
        parse_gpu_compute_ms("[I] Throughput: 41.25 qps\n")


def test_banner_names_trtexec_and_the_tensorrt_version() -> None:
    assert parse_banner(SUMMARY_10) == "TensorRT.trtexec [TensorRT v100300]"
    assert parse_banner(LOG_11_GRAPH) == "TensorRT.trtexec [TensorRT v110100]"
    assert parse_banner(SUMMARY_8) == "trtexec"
    assert parse_version(SUMMARY_10) == TrtexecVersion(10, 3, 0, 17)
    assert parse_version(LOG_11_GRAPH) == V11
    assert parse_version(LOG_10_CAPTURE_FAILED) == V10
    # two-digit minor and patch: 10 * 10000 + 16 * 100 + 1
    assert parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v101601] # trtexec") == TrtexecVersion(
        10, 16, 1
    )
    assert parse_version(SUMMARY_8) is None


def test_version_must_match_the_engines_tensorrt() -> None:
    assert version_mismatch(V10, "10.13.0.35") is None
    assert version_mismatch(V10, "10.13.0") is None  # no build to compare
    assert version_mismatch(TrtexecVersion(10, 13, 0), "10.13.0.35") is None
    other_minor = version_mismatch(TrtexecVersion(10, 9, 0, 34), "10.13.0.35")
    assert other_minor == (
        "trtexec is TensorRT 10.9.0 (build 34), the engine's TensorRT is 10.13.0.35: the major.minor differs "
        "and a plan loads only in the TensorRT version that built it"
    )
    assert "major.minor differs" in str(version_mismatch(V11, "10.13.0.35"))
    patch = version_mismatch(TrtexecVersion(10, 13, 2, 6), "10.13.0.35")
    assert patch is not None and "the version differs" in patch
    assert version_mismatch(TrtexecVersion(10, 13, 0, 36), "10.13.0.35") is not None
    with pytest.raises(EngineError, match="cannot read TensorRT version 'ten'"):
        version_mismatch(V10, "ten")


def test_command_has_the_flags_of_each_trtexec_version() -> None:
    exe = "/opt/trt/bin/trtexec"
    base = [exe, "--loadEngine=e.plan", "--iterations=50"]
    # 10.x: transfers and graphs are opt-out/opt-in flags
    assert trtexec_command("e.plan", exe, 50, False, V10) == [*base, "--noDataTransfers"]
    assert trtexec_command("e.plan", exe, 50, True, V10) == [*base, "--noDataTransfers", "--useCudaGraph"]
    # 11.x: both are defaults, the 10.x flags are deprecated no-ops, --noCudaGraph turns graphs off
    assert trtexec_command("e.plan", exe, 50, True, V11) == base
    assert trtexec_command("e.plan", exe, 50, False, V11) == [*base, "--noCudaGraph"]
    assert trtexec_command("e.plan", exe, 50, False, TrtexecVersion(11, 0, 0, 114))[-1] == "--noCudaGraph"
    # Per-layer files, from a profiled run of their own (the timed run stays unprofiled), in both versions.
    exports = ["--separateProfileRun", "--exportProfile=p.json", "--profilingVerbosity=detailed",
               "--exportLayerInfo=l.json"]  # fmt: skip
    for version, flags in ((V10, ["--noDataTransfers"]), (V11, ["--noCudaGraph"])):
        command = trtexec_command("e.plan", exe, 50, False, version, "p.json", "l.json")
        assert command == [*base, *flags, *exports]
    assert trtexec_command("e.plan", exe, 50, True, V11, None, "l.json") == [*base, *exports[2:]]


def test_graph_state_and_warnings_are_read_from_the_log() -> None:
    assert parse_cuda_graph(LOG_11_GRAPH) is True
    assert flagged_warnings(LOG_11_GRAPH) == ()
    no_graph = LOG_11_GRAPH.replace("CUDA Graph: Enabled", "CUDA Graph: Disabled").replace(_CAPTURED_11, "")
    assert parse_cuda_graph(no_graph) is False

    assert parse_cuda_graph(LOG_11_CAPTURE_FAILED) is False
    assert flagged_warnings(LOG_11_CAPTURE_FAILED) == (
        "The CUDA graph capture on the stream has failed.",
        "The built TensorRT engine contains operations that are not permitted under CUDA graph capture mode.",
        "CUDA graph capture failed. The inference will be launched without using CUDA graph.",
    )
    assert parse_cuda_graph(LOG_10_CAPTURE_FAILED) is False
    assert flagged_warnings(LOG_10_CAPTURE_FAILED)[-1] == (
        "The specified --useCudaGraph flag has been ignored. The inference will be launched without using "
        "CUDA graph launch."
    )
    # the 10.x flag given to an 11.x trtexec (sampleOptions.cpp, release/11.1): flagged, and only once
    deprecated = (
        "[07/08/2026-10:00:00] [W] --useCudaGraph is deprecated. CUDA graph is now enabled by default. "
        "Use --noCudaGraph to disable CUDA graph.\n"
    )
    assert flagged_warnings(deprecated * 2 + LOG_11_GRAPH) == (
        "--useCudaGraph is deprecated. CUDA graph is now enabled by default. Use --noCudaGraph to disable "
        "CUDA graph.",
    )
    # an ordinary warning is not flagged
    assert flagged_warnings("[07/08/2026-10:00:04] [W] * GPU compute time is unstable, with ...\n") == ()
    with pytest.raises(EngineError, match="no 'CUDA Graph: Enabled/Disabled' inference option"):
        parse_cuda_graph(SUMMARY_10)


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
    with pytest.raises(EngineError, match=r"m\.plan: cannot run .*no-trtexec --help: "):
        run_trtexec(plan, exe=str(tmp_path / "no-trtexec"))
    usable, reason = trtexec_compatibility(str(tmp_path / "no-trtexec"), "10.13.0.35")
    assert not usable and reason.startswith(f"cannot run {tmp_path / 'no-trtexec'} --help: ")


def _check(engine: str = "results/engines/tensorrt/x/m.fp16.engine") -> TrtexecCheck:
    return TrtexecCheck(
        engine=engine,
        engine_sha256="ab" * 32,
        trtexec="TensorRT.trtexec [TensorRT v110100]",
        trtexec_version="11.1.0",
        tensorrt_version="11.1.0.106",
        command=("trtexec", f"--loadEngine={engine}", "--iterations=100", "--noCudaGraph"),
        iterations=100,
        cuda_graph_requested=True,
        cuda_graph=False,
        warnings=("CUDA graph capture failed. The inference will be launched without using CUDA graph.",),
        gpu_compute_median_ms=2.40503,
        gpu_compute_mean_ms=2.41021,
        created="2026-11-25T22:00:00+00:00",
    )


def test_record_round_trips_and_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "m.fp16.json"
    write_trtexec_check(_check(), path)
    assert read_trtexec_check(path) == _check()

    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema_version"] == 2
    data["gpu_compute_median_ms"] = -1.0
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        EngineError, match=r"m\.fp16\.json: invalid trtexec check: key 'gpu_compute_median_ms'"
    ):
        read_trtexec_check(path)
    data["gpu_compute_median_ms"] = 1.0
    data["trtexec_version"] = "v110100"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EngineError, match=r"m\.fp16\.json: invalid trtexec check: key 'trtexec_version'"):
        read_trtexec_check(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(EngineError, match=r"m\.fp16\.json: not valid JSON"):
        read_trtexec_check(path)

    bad = tmp_path / "bad.json"
    with pytest.raises(EngineError, match="refusing to write an invalid trtexec check: key 'engine_sha256'"):
        write_trtexec_check(TrtexecCheck(**{**_check().__dict__, "engine_sha256": "xyz"}), bad)
    assert not bad.exists()
