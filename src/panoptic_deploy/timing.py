"""Stable timings: run until both a minimum count and a minimum time are reached, honest statistics, and a
probe of what affects timings on this machine.

* :func:`run_timed` runs ``warmup`` untimed iterations, then timed ones until at least ``min_iterations``
  ran **and** ``min_seconds`` passed (trtexec's ``--iterations`` / ``--duration`` rule), capped by
  ``max_iterations`` / ``max_seconds``.
* :func:`timing_stats`: mean, median, min, max, sample standard deviation and coefficient of variation
  (CoV = stdev / mean); p90 only from :data:`MIN_SAMPLES_P90` samples and p99 only from
  :data:`MIN_SAMPLES_P99` (below that the percentile is nothing but an interpolation towards the maximum:
  "p99" of 4 samples is the slowest run); ``unstable`` when the CoV exceeds the policy's threshold (or is
  unknown, with a single sample).
* :func:`probe_environment`: CPU model, ISA flags, the kernels PyTorch picked, frequency governor (where
  readable), load average at start, and per GPU name, driver, clocks, temperature and power through NVML.
  Every part that cannot be read is ``None`` with the reason in ``notes``: no part raises.

The defaults are the workflow config schema's ``bench`` defaults (:mod:`panoptic_deploy.defaults`), for the
library, the CLI and the workflow alike; :data:`DEFAULT_POLICY` is a policy of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.host import read_cpuinfo

# The policy's defaults (warm-up, minimum count and time, CoV threshold) are the workflow config schema's
# bench defaults (defaults.py): the library, the CLI and the workflow time a row alike. The schema's numbers
# follow trtexec (at least 10 inferences and 3 s of them); trtexec warns above a 2.5 % CoV of GPU kernel
# times, but CPU rows on a shared machine rarely stay under that, so the schema flags above 5 %.
# A safety cap, not a setting: a row whose steps take microseconds stops after this many samples.
DEFAULT_MAX_ITERATIONS = 10_000
# A percentile p is reported from n >= 1 / (1 - p) samples: only then does at least one sample lie above it.
MIN_SAMPLES_P90 = 10
MIN_SAMPLES_P99 = 100
# ISA flags (of /proc/cpuinfo) that change which kernels torch, oneDNN and ONNX Runtime run.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve",
)  # fmt: skip


class TimingError(PanopticDeployError):
    """A timing policy or a set of samples is invalid."""


# ---------------------------------------------------------------------------------------------------------
# Policy and loop


@dataclass(frozen=True)
class TimingPolicy:
    """How long a row is timed and when it counts as unstable."""

    warmup: int = field(default_factory=lambda: int(schema_default("bench", "warmup")))
    min_iterations: int = field(default_factory=lambda: int(schema_default("bench", "iterations")))
    min_seconds: float = field(default_factory=lambda: float(schema_default("bench", "min_seconds")))
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    max_seconds: float | None = None  # a hard cap on the timed phase (None: only max_iterations)
    cov_threshold: float = field(default_factory=lambda: float(schema_default("bench", "cov_threshold")))

    def check(self) -> TimingPolicy:
        """Self, or :class:`TimingError` naming the first invalid field."""
        if self.warmup < 0:
            raise TimingError(f"timing: warmup must be >= 0, got {self.warmup}")
        if self.min_iterations < 1:
            raise TimingError(f"timing: min_iterations must be >= 1, got {self.min_iterations}")
        if self.max_iterations < self.min_iterations:
            raise TimingError(
                f"timing: max_iterations ({self.max_iterations}) is below "
                f"min_iterations ({self.min_iterations})"
            )
        if not self.min_seconds >= 0:
            raise TimingError(f"timing: min_seconds must be >= 0, got {self.min_seconds}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise TimingError(f"timing: max_seconds must be > 0 or null, got {self.max_seconds}")
        if not self.cov_threshold > 0:
            raise TimingError(f"timing: cov_threshold must be > 0, got {self.cov_threshold}")
        return self


DEFAULT_POLICY = TimingPolicy()


@dataclass(frozen=True)
class TimingRun:
    """The samples of one timed phase and why it stopped."""

    samples_ms: tuple[float, ...]
    seconds: float  # wall time of the timed phase
    stopped_by: str  # "min_iterations+min_seconds" | "max_iterations" | "max_seconds"
    policy: TimingPolicy


def run_timed(
    step: Callable[[int], float | None],
    policy: TimingPolicy = DEFAULT_POLICY,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingRun:
    """Run ``step(k)`` for warm-up k = 0..warmup-1, then timed k = 0, 1, ... until the policy is met.

    ``step`` returns its own measurement in milliseconds (e.g. CUDA events around the network alone), or
    ``None`` to be timed by ``clock`` around the call. ``clock`` (seconds) also measures the phase length.
    """
    policy.check()
    for k in range(policy.warmup):
        step(k)
    samples: list[float] = []
    start = clock()
    elapsed = 0.0
    while True:
        before = clock()
        measured = step(len(samples))
        after = clock()
        samples.append(float(measured) if measured is not None else (after - before) * 1000.0)
        elapsed = after - start
        if len(samples) >= policy.min_iterations and elapsed >= policy.min_seconds:
            stopped_by = "min_iterations+min_seconds"
            break
        if len(samples) >= policy.max_iterations:
            stopped_by = "max_iterations"
            break
        if policy.max_seconds is not None and elapsed >= policy.max_seconds:
            stopped_by = "max_seconds"
            break
    return TimingRun(tuple(samples), elapsed, stopped_by, policy)


# ---------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class TimingStats:
    """Milliseconds over ``count`` samples; percentiles by linear interpolation (numpy's default)."""

    count: int
    mean_ms: float
    p50_ms: float  # the median
    min_ms: float
    max_ms: float
    stdev_ms: float | None  # sample standard deviation (n - 1); None for one sample
    cov: float | None  # stdev / mean; None for one sample
    p90_ms: float | None  # None below MIN_SAMPLES_P90 samples
    p99_ms: float | None  # None below MIN_SAMPLES_P99 samples
    cov_threshold: float
    unstable: bool  # cov > cov_threshold, or unknown

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def note(self) -> str | None:
        """One line for the report when the row is unstable, else None."""
        if not self.unstable:
            return None
        if self.cov is None:
            return f"one timed sample: stability unknown (CoV needs >= 2; threshold {self.cov_threshold:.1%})"
        return (
            f"unstable: CoV {self.cov:.1%} over {self.count} runs exceeds {self.cov_threshold:.1%}; "
            "compare its latencies with care"
        )


def timing_stats(samples_ms: Sequence[float], cov_threshold: float | None = None) -> TimingStats:
    """Statistics of ``samples_ms`` (see the module docstring); :class:`TimingError` for no sample or a
    non-finite or negative one. ``cov_threshold`` defaults to the schema's ``bench.cov_threshold``."""
    if cov_threshold is None:
        cov_threshold = float(schema_default("bench", "cov_threshold"))
    a = np.asarray(samples_ms, np.float64)
    if a.size == 0:
        raise TimingError("timing: no samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise TimingError("timing: samples must be finite and >= 0")
    n = int(a.size)
    mean = float(a.mean())
    stdev = float(a.std(ddof=1)) if n >= 2 else None
    cov = None if stdev is None else (stdev / mean if mean > 0 else 0.0)
    p90 = float(np.percentile(a, 90)) if n >= MIN_SAMPLES_P90 else None
    p99 = float(np.percentile(a, 99)) if n >= MIN_SAMPLES_P99 else None
    return TimingStats(
        count=n,
        mean_ms=mean,
        p50_ms=float(np.median(a)),
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        stdev_ms=stdev,
        cov=cov,
        p90_ms=p90,
        p99_ms=p99,
        cov_threshold=cov_threshold,
        unstable=cov is None or cov > cov_threshold,
    )


# ---------------------------------------------------------------------------------------------------------
# Environment probe


@dataclass(frozen=True)
class GpuState:
    """One GPU as NVML reports it at probe time (a field NVML refuses is None)."""

    index: int
    name: str | None
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    temperature_c: int | None
    power_w: float | None
    performance_state: int | None  # P0 (max) .. P12 (min)


@dataclass(frozen=True)
class TimingEnvironment:
    """What affects timings here, read once before a benchmark."""

    cpu_model: str | None
    cpu_isa: tuple[str, ...]  # the ISA_FLAGS this CPU has
    torch_cpu_capability: str | None  # the kernels PyTorch dispatches to (e.g. AVX512, AVX2)
    cpu_governors: tuple[str, ...]  # distinct cpufreq scaling governors of the CPUs (empty: not readable)
    cpu_mhz: float | None  # mean current frequency of the CPUs (cpuinfo), where reported
    load_average: tuple[float, float, float] | None  # 1, 5, 15 min, at probe time
    cpu_count: int
    cpu_affinity: int
    machine: str
    nvidia_driver: str | None
    gpus: tuple[GpuState, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)  # why a part could not be read

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_isa"] = list(self.cpu_isa)
        data["cpu_governors"] = list(self.cpu_governors)
        data["load_average"] = None if self.load_average is None else list(self.load_average)
        data["notes"] = list(self.notes)
        return data


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo(root: Path, notes: list[str]) -> tuple[str | None, tuple[str, ...], float | None]:
    info = read_cpuinfo(root)
    if info is None:
        notes.append("CPU: /proc/cpuinfo not readable")
        return None, (), None
    return info.model, tuple(f for f in ISA_FLAGS if f in info.flags), info.mean_mhz


def _governors(root: Path, notes: list[str]) -> tuple[str, ...]:
    cpus = root / "sys" / "devices" / "system" / "cpu"
    found: set[str] = set()
    try:
        entries = sorted(cpus.glob("cpu[0-9]*/cpufreq/scaling_governor"))
    except OSError:
        entries = []
    for path in entries:
        text = _read(path)
        if text and text.strip():
            found.add(text.strip())
    if not found:
        notes.append("CPU governor: no readable cpufreq scaling_governor (a VM or container often has none)")
    return tuple(sorted(found))


def _load_average(root: Path, notes: list[str]) -> tuple[float, float, float] | None:
    text = _read(root / "proc" / "loadavg")
    try:
        if text is not None:
            one, five, fifteen = (float(v) for v in text.split()[:3])
            return (one, five, fifteen)
    except ValueError:
        pass
    notes.append("load average: /proc/loadavg not readable")
    return None


def _torch_capability(notes: list[str]) -> str | None:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception as exc:  # an old torch lacks it; no torch at all is fine too
        notes.append(f"torch CPU capability: {type(exc).__name__}")
        return None


def _nvml_value(call: Callable[..., Any], *args: Any) -> Any:
    try:
        value = call(*args)
    except Exception:  # NVMLError_NotSupported and friends: that field is just unknown
        return None
    return value.decode() if isinstance(value, bytes) else value


def _gpus(nvml: ModuleType | None, notes: list[str]) -> tuple[str | None, tuple[GpuState, ...]]:
    if nvml is None:
        try:
            import pynvml as module  # nvidia-ml-py: no stubs (mypy override in pyproject)

            nvml = module
        except ImportError:
            notes.append("GPU: pynvml (nvidia-ml-py) not installed")
            return None, ()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU, no permission: no GPU state, not an error
        notes.append(f"GPU: NVML unavailable ({type(exc).__name__}: {str(exc).strip() or 'no message'})")
        return None, ()
    try:
        driver = _nvml_value(nvml.nvmlSystemGetDriverVersion)
        count = _nvml_value(nvml.nvmlDeviceGetCount) or 0
        gpus = []
        for index in range(int(count)):
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            power_mw = _nvml_value(nvml.nvmlDeviceGetPowerUsage, h)
            gpus.append(
                GpuState(
                    index=index,
                    name=_nvml_value(nvml.nvmlDeviceGetName, h),
                    sm_clock_mhz=_nvml_value(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
                    memory_clock_mhz=_nvml_value(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
                    max_sm_clock_mhz=_nvml_value(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM),
                    temperature_c=_nvml_value(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    performance_state=_nvml_value(nvml.nvmlDeviceGetPerformanceState, h),
                )
            )
        return (None if driver is None else str(driver)), tuple(gpus)
    except Exception as exc:
        notes.append(f"GPU: NVML query failed ({type(exc).__name__}: {exc})")
        return None, ()
    finally:
        # Shutting down a half-initialised NVML is best effort.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def probe_environment(*, root: PathLike = "/", nvml: ModuleType | None = None) -> TimingEnvironment:
    """Read what affects timings (see :class:`TimingEnvironment`). ``root`` is where ``proc/`` and ``sys/``
    are read (tests point it at a fake tree); ``nvml`` replaces the ``pynvml`` module (tests)."""
    base = Path(root)
    notes: list[str] = []
    model, isa, mhz = _cpuinfo(base, notes)
    governors = _governors(base, notes)
    load = _load_average(base, notes)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    driver, gpus = _gpus(nvml, notes)
    return TimingEnvironment(
        cpu_model=model,
        cpu_isa=isa,
        torch_cpu_capability=_torch_capability(notes),
        cpu_governors=governors,
        cpu_mhz=mhz,
        load_average=load,
        cpu_count=os.cpu_count() or 1,
        cpu_affinity=affinity,
        machine=platform.machine(),
        nvidia_driver=driver,
        gpus=gpus,
        notes=tuple(notes),
    )


def load_is_high(env: TimingEnvironment) -> bool:
    """True when the 1-minute load average at probe time exceeds the CPUs this process may use: other work
    competed for them, and the timings are suspect whatever their CoV."""
    return env.load_average is not None and env.load_average[0] > env.cpu_affinity


def format_ms(value: float | None) -> str:
    """A latency for a table: ``–`` for a statistic not reported (too few samples)."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.1f}"


def format_cov(cov: float | None) -> str:
    """A coefficient of variation for a table, in percent: ``–`` for one sample (unknown)."""
    return "–" if cov is None or not math.isfinite(cov) else f"{100 * cov:.1f}%"
