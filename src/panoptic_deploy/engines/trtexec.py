"""Cross-check of a TensorRT engine's GPU time with NVIDIA's ``trtexec`` (the C++ path), where installed.

``trtexec --loadEngine`` runs the same plan file the Python runner benchmarks, on random inputs, back to back
(one inference enqueued ahead), and prints a performance summary. Its "GPU Compute Time" is the GPU time of
the kernels alone; set beside the runner's CUDA-event latency it shows how much of ours is host overhead.
Nothing here imports TensorRT: trtexec is a separate program, run as a subprocess.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from panoptic_deploy import __version__
from panoptic_deploy.engines.sidecar import EngineError
from panoptic_deploy.fileio import file_sha256
from panoptic_deploy.jsonfiles import read_checked_json, write_checked_json

SCHEMA_VERSION = 1

# trtexec's summary line (TensorRT 8.6-10 logs), e.g. "[I] GPU Compute Time: min = 2.05 ms, max = 2.59 ms,
# mean = 2.09 ms, median = 2.08 ms, percentile(90%) = ..."
_GPU_COMPUTE = re.compile(
    r"GPU Compute Time: min = [\d.]+ ms, max = [\d.]+ ms, mean = ([\d.]+) ms, median = ([\d.]+) ms"
)
# "&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b10] # trtexec --loadEngine=..."
_BANNER = re.compile(r"(TensorRT\.trtexec \[TensorRT v\d+\])")


@dataclass(frozen=True)
class TrtexecCheck:
    """trtexec's timing of one engine file. Serialised by :func:`write_trtexec_check`."""

    engine: str
    engine_sha256: str
    trtexec: str
    command: tuple[str, ...]
    iterations: int
    cuda_graph: bool
    gpu_compute_median_ms: float
    gpu_compute_mean_ms: float
    package_version: str = __version__
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "command": list(self.command)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrtexecCheck:
        return cls(**{**data, "command": tuple(data["command"])})


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


def trtexec_command(
    engine_path: str | os.PathLike[str], exe: str, iterations: int, cuda_graph: bool
) -> list[str]:
    """The command line: load the plan, time at least ``iterations`` inferences (trtexec's defaults for the
    warm-up of 200 ms and the 3 s minimum duration stay), without host<->device copies, optionally through a
    CUDA graph."""
    cmd = [exe, f"--loadEngine={engine_path}", f"--iterations={iterations}", "--noDataTransfers"]
    return [*cmd, "--useCudaGraph"] if cuda_graph else cmd


def run_trtexec(
    engine_path: str | os.PathLike[str],
    *,
    iterations: int = 100,
    cuda_graph: bool = False,
    exe: str | None = None,
) -> tuple[TrtexecCheck, str]:
    """Run trtexec on ``engine_path`` -> (the check, trtexec's whole output for the log).

    ``exe``: the trtexec program (default: ``trtexec`` on PATH). :class:`EngineError` names the engine when
    trtexec is missing, exits non-zero (with its last output line) or prints no timing summary.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: engine file not found")
    program = exe or shutil.which("trtexec")
    if program is None:
        raise EngineError(f"{path}: trtexec is not on PATH")
    cmd = trtexec_command(path, program, iterations, cuda_graph)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"{path}: trtexec exited with {proc.returncode}: {tail[0]}")
    try:
        median, mean = parse_gpu_compute_ms(output)
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from None
    check = TrtexecCheck(
        engine=str(path),
        engine_sha256=file_sha256(path),
        trtexec=parse_banner(output),
        command=tuple(cmd),
        iterations=iterations,
        cuda_graph=cuda_graph,
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
