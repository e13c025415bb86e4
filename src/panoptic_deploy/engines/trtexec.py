"""Cross-check of a TensorRT engine's GPU time with NVIDIA's ``trtexec`` (the C++ path), where installed.

``trtexec --loadEngine`` runs the same plan file the Python runner benchmarks, on random inputs, back to back
(one inference enqueued ahead), and prints a performance summary. Its "GPU Compute Time" is the GPU time of
the kernels alone; set beside the runner's CUDA-event latency it shows how much of ours is host overhead.
Nothing here imports TensorRT: trtexec is a separate program, run as a subprocess.

Two things make trtexec version-specific (read in NVIDIA/TensorRT ``samples/common/sampleOptions.cpp`` and
``sampleInference.cpp`` of release/10.13, release/11.0 and release/11.1):

* A plan loads only in the TensorRT version that built it, and the TensorRT wheels ship no trtexec, so the
  one on PATH often comes from another install. Its version is read from its banner (``trtexec --help``
  prints it and exits) and compared with the engine's (:func:`version_mismatch`) before it runs.
* The flags changed in 11.0: CUDA graphs and "no data transfers" became the defaults, ``--useCudaGraph`` and
  ``--noDataTransfers`` became deprecated no-ops, and ``--noCudaGraph`` (which 10.x rejects as an unknown
  option) turns graphs off (:func:`trtexec_flags`). Whether trtexec really replayed a graph is read from its
  log: a capture that fails is only a warning and trtexec falls back to plain launches with exit code 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from panoptic_deploy import __version__
from panoptic_deploy.engines.sidecar import read_sidecar, sidecar_path
from panoptic_deploy.errors import EngineError
from panoptic_deploy.fileio import atomic_path, file_sha256
from panoptic_deploy.jsonfiles import read_checked_json, write_checked_json

SCHEMA_VERSION = 2
PROBE_TIMEOUT_S = 60

# trtexec's numbers are printed with the default ostream format (6 significant digits, exponent for tiny
# values: sampleReporting.cpp, printEpilog), e.g. "[I] GPU Compute Time: min = 2.05 ms, max = 2.59 ms,
# mean = 2.09 ms, median = 2.08 ms, percentile(90%) = ..." (the same in 8.4 to 11.1).
_NUMBER = r"[\d.]+(?:[eE][-+]?\d+)?"
_GPU_COMPUTE = re.compile(
    rf"GPU Compute Time: min = {_NUMBER} ms, max = {_NUMBER} ms, mean = ({_NUMBER}) ms, "
    rf"median = ({_NUMBER}) ms"
)
# "&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b35] # trtexec --loadEngine=...": the version is
# NV_TENSORRT_VERSION = major * 10000 + minor * 100 + patch, the build is NV_TENSORRT_BUILD
# (samples/common/logging.h, Logger::defineTest; include/NvInferRuntimeBase.h).
_BANNER = re.compile(r"(TensorRT\.trtexec \[TensorRT v(\d+)\])(?: \[b(\d+)\])?")
# The inference options trtexec prints before it runs ("[I] CUDA Graph: Enabled"), 10.x and 11.x alike.
_GRAPH_OPTION = re.compile(r"\[I\] CUDA Graph: (Enabled|Disabled)\s*$", re.M)
_GRAPH_CAPTURED = "Successfully captured CUDA graph for the current execution context"
# Warnings that make the record doubtful: a failed capture (10.x: "The specified --useCudaGraph flag has been
# ignored ...", 11.x: "CUDA graph capture failed ..."; both: "The CUDA graph capture on the stream has
# failed." and "... operations that are not permitted under CUDA graph capture mode."), and any flag trtexec
# ignored or calls deprecated (a flag set that does not fit its version).
_FLAGGED_WARNING = re.compile(r"ignored|deprecated|graph capture", re.I)
_WARNING_LINE = re.compile(r"\[W\] (.*\S)")


@dataclass(frozen=True)
class TrtexecVersion:
    """TensorRT version of a trtexec, from its banner."""

    major: int
    minor: int
    patch: int
    build: int | None = None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f" (build {self.build})" if self.build else "")


@dataclass(frozen=True)
class TrtexecCheck:
    """trtexec's timing of one engine file. Serialised by :func:`write_trtexec_check`."""

    engine: str
    engine_sha256: str
    trtexec: str  # the banner, e.g. "TensorRT.trtexec [TensorRT v101300]"
    trtexec_version: str  # "10.13.0"
    tensorrt_version: str | None  # the version the engine was built with (compared with trtexec's), if known
    command: tuple[str, ...]
    iterations: int
    cuda_graph_requested: bool
    cuda_graph: bool  # whether trtexec really replayed a CUDA graph (read from its log)
    warnings: tuple[str, ...]  # warnings that make the timing doubtful (failed capture, ignored flags)
    gpu_compute_median_ms: float
    gpu_compute_mean_ms: float
    package_version: str = __version__
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "command": list(self.command), "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrtexecCheck:
        return cls(**{**data, "command": tuple(data["command"]), "warnings": tuple(data["warnings"])})


def parse_gpu_compute_ms(log: str) -> tuple[float, float]:
    """(median, mean) of trtexec's "GPU Compute Time" summary line, in ms."""
    match = _GPU_COMPUTE.search(log)
    if match is None:
        raise EngineError("trtexec output has no 'GPU Compute Time' summary")
    return float(match.group(2)), float(match.group(1))


def parse_banner(log: str) -> str:
    """trtexec's name and TensorRT version from its first line, or "trtexec" if the line is missing."""
    match = _BANNER.search(log)
    return match.group(1) if match else "trtexec"


def parse_version(log: str) -> TrtexecVersion | None:
    """The TensorRT version in trtexec's banner (``[TensorRT v101300] [b35]`` -> 10.13.0 build 35)."""
    match = _BANNER.search(log)
    if match is None:
        return None
    number = int(match.group(2))
    build = int(match.group(3)) if match.group(3) else None
    return TrtexecVersion(number // 10000, number // 100 % 100, number % 100, build)


def parse_cuda_graph(log: str) -> bool:
    """Whether trtexec replayed a CUDA graph: the option was on and the capture succeeded.

    trtexec prints "CUDA Graph: Enabled/Disabled" with its inference options, then, when enabled, either
    "Successfully captured CUDA graph ..." or a warning that it falls back to plain launches.
    """
    option = _GRAPH_OPTION.search(log)
    if option is None:
        raise EngineError("trtexec output has no 'CUDA Graph: Enabled/Disabled' inference option")
    return option.group(1) == "Enabled" and _GRAPH_CAPTURED in log


def flagged_warnings(log: str) -> tuple[str, ...]:
    """trtexec's warnings about a failed graph capture or an ignored/deprecated flag, each once, in order."""
    found: dict[str, None] = {}
    for line in log.splitlines():
        match = _WARNING_LINE.search(line)
        if match and _FLAGGED_WARNING.search(match.group(1)):
            found.setdefault(match.group(1), None)
    return tuple(found)


def _python_version(version: str) -> tuple[int, ...]:
    parts = version.split(".")
    try:
        return tuple(int(p) for p in parts[:4])
    except ValueError:
        raise EngineError(f"cannot read TensorRT version '{version}'") from None


def version_mismatch(trtexec: TrtexecVersion, tensorrt_version: str) -> str | None:
    """Why trtexec cannot load a plan built by TensorRT ``tensorrt_version`` (``tensorrt.__version__``, e.g.
    "10.13.0.35"), or None if it can.

    A plan loads only in the TensorRT version that built it (NVIDIA, "Version Compatibility": "By default,
    TensorRT engines are compatible only with the version of TensorRT used to build them"; deserialisation
    refuses even a patch difference: "expecting library version 8.6.1.2 got 8.6.0.12"). The banner gives
    major.minor.patch and the build; all four are compared where both sides have them.
    """
    theirs = _python_version(tensorrt_version)
    ours = (trtexec.major, trtexec.minor, trtexec.patch)
    if theirs[:3] == ours and (len(theirs) < 4 or trtexec.build is None or theirs[3] == trtexec.build):
        return None
    what = "major.minor" if theirs[:2] != ours[:2] else "version"
    return (
        f"trtexec is TensorRT {trtexec}, the engine's TensorRT is {tensorrt_version}: the {what} differs "
        "and a plan loads only in the TensorRT version that built it"
    )


def trtexec_flags(version: TrtexecVersion, cuda_graph: bool) -> list[str]:
    """Flags for timing without host<->device copies, with or without a CUDA graph, on this trtexec.

    10.x: data transfers and graphs are off unless asked (``--noDataTransfers``, ``--useCudaGraph``).
    11.x: both are the defaults; the 10.x flags are deprecated no-ops and ``--noCudaGraph`` turns graphs
    off (sampleOptions.cpp, InferenceOptions::parse, release/11.0 and 11.1). 10.x rejects ``--noCudaGraph``.
    """
    if version.major <= 10:
        return ["--noDataTransfers", *(["--useCudaGraph"] if cuda_graph else [])]
    return [] if cuda_graph else ["--noCudaGraph"]


def export_flags(
    profile: str | os.PathLike[str] | None, layer_info: str | os.PathLike[str] | None
) -> list[str]:
    """trtexec's per-layer files: ``--exportProfile`` (each layer's time, from a profiled run of its own:
    ``--separateProfileRun`` keeps the profiler out of the timed run whose median we record) and
    ``--exportLayerInfo`` (each layer's precision, tactic and formats; complete for engines built with
    detailed profiling verbosity, as ours are, with ``--profilingVerbosity=detailed``). Both flags exist in
    trtexec 10.x and 11.x (sampleOptions.cpp)."""
    flags = []
    if profile is not None:
        flags += ["--separateProfileRun", f"--exportProfile={profile}"]
    if layer_info is not None:
        flags += ["--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info}"]
    return flags


def trtexec_command(
    engine_path: str | os.PathLike[str],
    exe: str,
    iterations: int,
    cuda_graph: bool,
    version: TrtexecVersion,
    profile: str | os.PathLike[str] | None = None,
    layer_info: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command line: load the plan, time at least ``iterations`` inferences (trtexec's defaults for the
    warm-up of 200 ms and the 3 s minimum duration stay), without host<->device copies, with or without a
    CUDA graph, in the flags of trtexec ``version``; with ``profile`` / ``layer_info``, the per-layer files
    of :func:`export_flags`."""
    return [
        exe,
        f"--loadEngine={engine_path}",
        f"--iterations={iterations}",
        *trtexec_flags(version, cuda_graph),
        *export_flags(profile, layer_info),
    ]


def probe_trtexec(exe: str) -> tuple[str, TrtexecVersion]:
    """(banner, version) of the trtexec program ``exe``: ``trtexec --help`` prints its banner and exits 0."""
    try:
        proc = subprocess.run(
            [exe, "--help"], capture_output=True, text=True, check=False, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot run {exe} --help: {exc}") from None
    output = proc.stdout + proc.stderr
    version = parse_version(output)
    if version is None:
        first = output.strip().splitlines()[:1] or ["no output"]
        raise EngineError(f"{exe} --help printed no 'TensorRT.trtexec [TensorRT vNNNNNN]' banner: {first[0]}")
    return parse_banner(output), version


def trtexec_compatibility(exe: str, tensorrt_version: str) -> tuple[bool, str]:
    """(usable, reason): whether the trtexec ``exe`` can load plans of TensorRT ``tensorrt_version``."""
    try:
        banner, version = probe_trtexec(exe)
    except EngineError as exc:
        return False, str(exc)
    reason = version_mismatch(version, tensorrt_version)
    if reason is not None:
        return False, f"{reason} ({exe})"
    return True, f"{banner} ({exe})"


def _engine_tensorrt_version(path: Path) -> str | None:
    """The TensorRT version recorded in the engine's sidecar, if it has one."""
    file = sidecar_path(path)
    if not file.is_file():
        return None
    sidecar = read_sidecar(file)
    if sidecar.backend != "tensorrt":
        raise EngineError(f"{path}: its sidecar is for backend {sidecar.backend}, not a TensorRT engine")
    return sidecar.backend_version


def run_trtexec(
    engine_path: str | os.PathLike[str],
    *,
    iterations: int = 100,
    cuda_graph: bool = False,
    exe: str | None = None,
    tensorrt_version: str | None = None,
    profile: str | os.PathLike[str] | None = None,
    layer_info: str | os.PathLike[str] | None = None,
) -> tuple[TrtexecCheck, str]:
    """Run trtexec on ``engine_path`` -> (the check, trtexec's whole output for the log).

    ``exe``: the trtexec program (default: ``trtexec`` on PATH). ``tensorrt_version``: the TensorRT version
    that built the engine (default: the one in its sidecar, if any); a trtexec of another version is refused
    before it runs. ``profile`` / ``layer_info``: where trtexec writes its per-layer times and layer
    information (:func:`export_flags`); each is written through a temporary file and renamed into place only
    when trtexec succeeded. :class:`EngineError` names the engine when trtexec is missing or of another
    version, exits non-zero (with its last output line) or prints no timing summary.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: engine file not found")
    program = exe or shutil.which("trtexec")
    if program is None:
        raise EngineError(f"{path}: trtexec is not on PATH")
    expected = tensorrt_version or _engine_tensorrt_version(path)
    try:
        _, version = probe_trtexec(program)
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from None
    if expected is not None and (reason := version_mismatch(version, expected)) is not None:
        raise EngineError(f"{path}: {reason} ({program})")
    with contextlib.ExitStack() as stack:
        # trtexec writes the files itself: into temporaries that are renamed only after it succeeded.
        tmp_profile = None if profile is None else stack.enter_context(atomic_path(profile))
        tmp_layers = None if layer_info is None else stack.enter_context(atomic_path(layer_info))
        cmd = trtexec_command(path, program, iterations, cuda_graph, version, tmp_profile, tmp_layers)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = output.strip().splitlines()[-1:] or ["no output"]
            raise EngineError(f"{path}: trtexec exited with {proc.returncode}: {tail[0]}")
        for asked, tmp in ((profile, tmp_profile), (layer_info, tmp_layers)):
            if tmp is not None and tmp.stat().st_size == 0:
                raise EngineError(f"{path}: trtexec exited 0 but wrote nothing to {asked}")
    # The record names the files where they are now, not the temporaries trtexec wrote.
    cmd = trtexec_command(path, program, iterations, cuda_graph, version, profile, layer_info)
    try:
        median, mean = parse_gpu_compute_ms(output)
        graph = parse_cuda_graph(output)
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from None
    check = TrtexecCheck(
        engine=str(path),
        engine_sha256=file_sha256(path),
        trtexec=parse_banner(output),
        trtexec_version=f"{version.major}.{version.minor}.{version.patch}",
        tensorrt_version=expected,
        command=tuple(cmd),
        iterations=iterations,
        cuda_graph_requested=cuda_graph,
        cuda_graph=graph,
        warnings=flagged_warnings(output),
        gpu_compute_median_ms=median,
        gpu_compute_mean_ms=mean,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return check, output


SCHEMA = "trtexec.schema.json"


def write_trtexec_check(check: TrtexecCheck, path: str | os.PathLike[str]) -> None:
    """Validate ``check`` against the schema and write it to ``path`` atomically (indented JSON)."""
    write_checked_json(check.to_json(), path, SCHEMA, "trtexec check", EngineError)


def read_trtexec_check(path: str | os.PathLike[str]) -> TrtexecCheck:
    """Read and validate a check; :class:`EngineError` names the file and the offending key."""
    return TrtexecCheck.from_json(read_checked_json(path, SCHEMA, "trtexec check", EngineError))
