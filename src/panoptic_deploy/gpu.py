"""The GPU a job got, checked against the GPU type its output path names (config ``gpus``).

The workflow plans engines and benchmarks per GPU type (``results/engines/tensorrt/<gpu>/...``) without
looking at any GPU (the planning machine may have none); the scheduler then hands each job a card. A
TensorRT plan is only valid on the GPU model it was built for, so the job compares the card with the type
before it builds or times anything, and records what it saw (name, compute capability, driver) in the
engine sidecar. NVML (``nvidia-ml-py``) answers without creating a CUDA context.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from panoptic_deploy.errors import GpuMismatchError


@dataclass(frozen=True)
class GpuIdentity:
    """What the driver says about one visible GPU."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor"
    driver: str  # e.g. "570.124.06"


def slug(text: str) -> str:
    """Lower-case words joined by '-': 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def gpu_matches(gpu_type: str, name: str) -> bool:
    """Whether GPU ``name`` is of config type ``gpu_type``: its words are a run of the name's words.

    'h100' matches 'NVIDIA H100 80GB HBM3' and 'h100-80gb' too; 'a10' does not match 'NVIDIA A100-SXM4-40GB'
    (whole words, not substrings), and neither does 'l40' 'NVIDIA L40S'.
    """
    want = slug(gpu_type).split("-")
    words = slug(name).split("-")
    return any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1))


def visible_gpus() -> list[GpuIdentity]:
    """Every GPU NVML reports that CUDA_VISIBLE_DEVICES lets this process use, in CUDA order."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a [pipeline] dependency
        raise GpuMismatchError("nvidia-ml-py is not installed: cannot identify the GPU") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise GpuMismatchError(f"no NVIDIA driver or GPU visible to this job ({exc})") from exc
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        found = []
        for handle in handles:
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            found.append(
                (uuid, GpuIdentity(_text(pynvml.nvmlDeviceGetName(handle)), f"{major}.{minor}", driver))
            )
    finally:
        pynvml.nvmlShutdown()
    return _cuda_visible(found, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cuda_visible(found: list[tuple[str, GpuIdentity]], visible: str | None) -> list[GpuIdentity]:
    """NVML lists every GPU of the node; SLURM and the user restrict CUDA with CUDA_VISIBLE_DEVICES
    (indices or UUIDs), and the job gets the first of those."""
    if visible is None:
        return [gpu for _, gpu in found]
    out = []
    for item in (v.strip() for v in visible.split(",") if v.strip()):
        if item.isdigit() and int(item) < len(found):
            out.append(found[int(item)][1])
        else:
            out += [gpu for uuid, gpu in found if uuid.startswith(item)]
    return out


def check_gpu(gpu_type: str, gpus: list[GpuIdentity] | None = None) -> GpuIdentity:
    """The GPU this job runs on (the first visible one); :class:`GpuMismatchError` unless of ``gpu_type``."""
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        raise GpuMismatchError(f"this job is for GPU type '{gpu_type}' but sees no GPU")
    gpu = gpus[0]
    if not gpu_matches(gpu_type, gpu.name):
        raise GpuMismatchError(
            f"this job is for GPU type '{gpu_type}' (config 'gpus', the output path) but got {gpu.name} "
            f"(compute capability {gpu.compute_capability}): check the scheduler's GPU mapping "
            "(resources gpu_model) or the type's spelling"
        )
    return gpu
