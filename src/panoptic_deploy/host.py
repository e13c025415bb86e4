"""What this machine and process are: CPU name, memory use, installed versions, the time.

Recorded by every stage that writes provenance (engine sidecars, calibration caches, benchmark results).
Standard library only, so that any stage (and the torch-free report) can use it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says: the model name (x86 ``model name``, Arm ``Model``/``Hardware``), the
    union of every CPU's feature flags, and the mean current frequency where it is reported."""

    model: str | None
    flags: frozenset[str]
    mean_mhz: float | None


def read_cpuinfo(root: str | os.PathLike[str] = "/") -> CpuInfo | None:
    """``<root>/proc/cpuinfo`` parsed (tests point ``root`` at a fake tree); None where it cannot be read.
    The one reader of that file: :func:`cpu_name` and the timing probe both use it."""
    try:
        text = (Path(root) / "proc" / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    model = None
    flags: set[str] = set()
    mhz: list[float] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware") and model is None and value:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "cpu MHz":
            with contextlib.suppress(ValueError):
                mhz.append(float(value))
    return CpuInfo(model, frozenset(flags), round(sum(mhz) / len(mhz), 1) if mhz else None)


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    info = read_cpuinfo()
    if info is not None and info.model:
        return info.model
    return platform.processor() or platform.machine() or "unknown CPU"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def dist_version(*names: str) -> str | None:
    """Version of the first installed distribution of ``names`` (several names: a package published under
    more than one, e.g. onnxruntime / onnxruntime-gpu); None if none is installed."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def peak_rss_mb() -> float:
    """High-water mark of this process's resident set so far, in MB (10^6 bytes), as every report states."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
