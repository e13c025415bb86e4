"""Stable timings: the count-and-time loop (with a fake clock: exact counts), statistics with percentiles only
from enough samples, the CoV flag, and the environment probe on a fake /proc + /sys tree and a fake NVML."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from panoptic_deploy.defaults import config_schema
from panoptic_deploy.timing import (
    DEFAULT_POLICY,
    MIN_SAMPLES_P90,
    MIN_SAMPLES_P99,
    TimingError,
    TimingPolicy,
    load_is_high,
    probe_environment,
    run_timed,
    timing_stats,
)


class FakeClock:
    """Seconds that advance only when a step 'runs' for its duration."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_runs_until_both_count_and_time_are_reached() -> None:
    rng = np.random.default_rng()
    step_s = float(rng.uniform(0.01, 0.05))
    clock = FakeClock()
    calls: list[int] = []

    def step(k: int) -> None:
        calls.append(k)
        clock.now += step_s

    policy = TimingPolicy(warmup=2, min_iterations=5, min_seconds=1.0)
    run = run_timed(step, policy, clock=clock)
    # Time is the binding limit: the first count whose elapsed time reaches 1 s.
    expected = int(np.ceil(1.0 / step_s - 1e-9))
    expected = next(n for n in range(expected - 1, expected + 2) if n * step_s >= 1.0)
    assert len(run.samples_ms) == max(5, expected)
    assert calls == [0, 1, *range(len(run.samples_ms))]  # two warm-ups, then timed from 0
    assert run.stopped_by == "min_iterations+min_seconds"
    assert run.samples_ms == pytest.approx([1000.0 * step_s] * len(run.samples_ms))

    # Count is the binding limit when the steps are slow.
    slow = FakeClock()
    run = run_timed(lambda k: setattr(slow, "now", slow.now + 2.0), TimingPolicy(0, 7, 1.0), clock=slow)
    assert len(run.samples_ms) == 7 and run.seconds == pytest.approx(14.0)


def test_caps_and_own_measurements() -> None:
    clock = FakeClock()

    def step(k: int) -> float:
        clock.now += 0.5
        return 3.0 + k  # the step's own measurement (e.g. CUDA events) wins over the clock

    run = run_timed(step, TimingPolicy(0, 2, 100.0, max_iterations=6), clock=clock)
    assert run.samples_ms == (3.0, 4.0, 5.0, 6.0, 7.0, 8.0) and run.stopped_by == "max_iterations"
    run = run_timed(step, TimingPolicy(0, 2, 100.0, max_seconds=2.0), clock=clock)
    assert len(run.samples_ms) == 4 and run.stopped_by == "max_seconds"
    with pytest.raises(TimingError, match="max_iterations \\(3\\) is below min_iterations \\(5\\)"):
        run_timed(step, TimingPolicy(0, 5, 0.0, max_iterations=3))
    with pytest.raises(TimingError, match="cov_threshold must be > 0"):
        TimingPolicy(cov_threshold=0.0).check()
    # The defaults are the workflow config schema's (one place): the library, the CLI and the workflow agree.
    schema = config_schema()["properties"]["bench"]["properties"]
    assert (DEFAULT_POLICY.warmup, DEFAULT_POLICY.min_iterations) == (
        schema["warmup"]["default"],
        schema["iterations"]["default"],
    )
    assert DEFAULT_POLICY.min_seconds == schema["min_seconds"]["default"]
    threshold = schema["cov_threshold"]["default"]
    assert DEFAULT_POLICY.cov_threshold == threshold == timing_stats([1.0]).cov_threshold


def test_stats_percentiles_only_from_enough_samples() -> None:
    rng = np.random.default_rng()
    few = rng.uniform(10.0, 20.0, MIN_SAMPLES_P90 - 1)
    stats = timing_stats(few)
    assert stats.p90_ms is None and stats.p99_ms is None
    assert stats.p50_ms == float(np.median(few)) and stats.mean_ms == float(np.mean(few))
    assert stats.cov == pytest.approx(float(np.std(few, ddof=1) / np.mean(few)), rel=1e-12)

    enough = rng.uniform(10.0, 20.0, MIN_SAMPLES_P90)
    stats = timing_stats(enough)
    assert stats.p90_ms == float(np.percentile(enough, 90)) and stats.p99_ms is None

    many = rng.uniform(10.0, 20.0, MIN_SAMPLES_P99)
    stats = timing_stats(many)
    assert stats.p99_ms == float(np.percentile(many, 99)) and stats.count == MIN_SAMPLES_P99


def test_cov_flag() -> None:
    rng = np.random.default_rng()
    steady = 50.0 + rng.normal(0.0, 0.5, 40)  # CoV about 1 %
    noisy = 50.0 + rng.normal(0.0, 10.0, 40)  # about 20 %
    s, n = timing_stats(steady, 0.05), timing_stats(noisy, 0.05)
    assert not s.unstable and s.note() is None
    assert n.unstable and n.cov is not None and n.cov > 0.05
    assert n.note() == (
        f"unstable: CoV {n.cov:.1%} over 40 runs exceeds 5.0%; compare its latencies with care"
    )
    # The flag follows the threshold exactly.
    assert not timing_stats(noisy, n.cov).unstable and timing_stats(noisy, n.cov * 0.999).unstable
    one = timing_stats([12.5])
    assert one.cov is None and one.stdev_ms is None and one.unstable
    with pytest.raises(TimingError, match="no samples"):
        timing_stats([])
    with pytest.raises(TimingError, match="finite"):
        timing_stats([1.0, float("nan")])


def _fake_tree(root: Path, governor: str | None) -> None:
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Fake CPU 9000 @ 3.00GHz\ncpu MHz\t\t: 2999.5\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Fake CPU 9000 @ 3.00GHz\ncpu MHz\t\t: 1000.5\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni\n",
        encoding="utf-8",
    )
    (root / "proc" / "loadavg").write_text("3.25 1.50 0.75 2/345 6789\n", encoding="utf-8")
    if governor is not None:
        for cpu in ("cpu0", "cpu1"):
            folder = root / "sys" / "devices" / "system" / "cpu" / cpu / "cpufreq"
            folder.mkdir(parents=True)
            (folder / "scaling_governor").write_text(governor + "\n", encoding="utf-8")


def _fake_nvml(fail_init: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0  # type: ignore[attr-defined]
    state = {"shutdown": 0}

    def init() -> None:
        if fail_init:
            raise RuntimeError("Driver Not Loaded")

    def not_supported(*_: object) -> None:
        raise RuntimeError("Not Supported")

    clocks = {1: 1755, 2: 2619}
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)  # type: ignore[attr-defined]
    nvml.nvmlSystemGetDriverVersion = lambda: b"575.51.03"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: clocks[kind]  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetTemperature = lambda h, kind: 41  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetPowerUsage = lambda h: 71234  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetPerformanceState = not_supported  # type: ignore[attr-defined]
    nvml.state = state  # type: ignore[attr-defined]
    return nvml


def test_probe_reads_cpu_load_governor_and_gpus(tmp_path: Path) -> None:
    _fake_tree(tmp_path, "performance")
    nvml = _fake_nvml()
    env = probe_environment(root=tmp_path, nvml=nvml)
    assert env.cpu_model == "Fake CPU 9000 @ 3.00GHz"
    assert env.cpu_isa == ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni")
    assert env.cpu_mhz == 2000.0
    assert env.cpu_governors == ("performance",)
    assert env.load_average == (3.25, 1.5, 0.75)
    assert env.nvidia_driver == "575.51.03"
    assert len(env.gpus) == 1
    gpu = env.gpus[0]
    assert (gpu.name, gpu.sm_clock_mhz, gpu.memory_clock_mhz, gpu.max_sm_clock_mhz) == (
        "NVIDIA H100 80GB HBM3", 1755, 2619, 1980,
    )  # fmt: skip
    assert (gpu.temperature_c, gpu.power_w, gpu.performance_state) == (41, 71.234, None)  # unsupported: None
    assert nvml.state["shutdown"] == 1  # type: ignore[attr-defined]
    assert load_is_high(env) == (env.cpu_affinity < 3.25)
    data = env.to_json()
    assert data["load_average"] == [3.25, 1.5, 0.75] and data["gpus"][0]["power_w"] == 71.234


def test_probe_degrades_without_governor_nvml_or_proc(tmp_path: Path) -> None:
    _fake_tree(tmp_path, None)
    env = probe_environment(root=tmp_path, nvml=_fake_nvml(fail_init=True))
    assert env.cpu_governors == () and env.gpus == () and env.nvidia_driver is None
    assert any(n.startswith("CPU governor: no readable") for n in env.notes)
    assert "GPU: NVML unavailable (RuntimeError: Driver Not Loaded)" in env.notes
    bare = probe_environment(root=tmp_path / "nothing", nvml=_fake_nvml(fail_init=True))
    assert bare.cpu_model is None and bare.cpu_isa == () and bare.load_average is None
    assert (
        "CPU: /proc/cpuinfo not readable" in bare.notes
        and "load average: /proc/loadavg not readable" in bare.notes
    )


def test_probe_of_this_machine_never_raises() -> None:
    env = probe_environment()
    assert env.cpu_count >= env.cpu_affinity >= 1
    assert isinstance(env.notes, tuple)
