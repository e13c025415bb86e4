"""What this machine and process are: CPU name, memory use, installed versions, the time.

Recorded by every stage that writes provenance (engine sidecars, calibration caches, benchmark results).
Standard library only, so that any stage (and the torch-free report) can use it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import resource
import sys
from pathlib import Path


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
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
