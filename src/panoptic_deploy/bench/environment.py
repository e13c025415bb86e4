"""The machine a benchmark runs on: CPU, GPU (as torch sees it) and the versions of every library involved."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from panoptic_deploy import __version__
from panoptic_deploy.bench.results import Environment
from panoptic_deploy.host import cpu_name, dist_version
from panoptic_deploy.timing import TimingEnvironment, probe_environment


def capture_environment(timing: TimingEnvironment | None = None) -> Environment:
    """CPU, GPU (if torch sees one) and versions of torch/onnx/onnxruntime/tensorrt/this package, with
    ``timing``: what affects timings (:func:`panoptic_deploy.timing.probe_environment`; probed now if None;
    a benchmark probes before it loads its runner, so that the load average is the one its timings met)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpu_name = gpu_cc = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        gpu_cc = f"{major}.{minor}"
    versions = {
        "panoptic-deploy": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": dist_version("onnx"),
        "onnxruntime": dist_version("onnxruntime", "onnxruntime-gpu"),
        "onnxsim": dist_version("onnxsim"),
        "onnxslim": dist_version("onnxslim"),
        "nvidia-modelopt": dist_version("nvidia-modelopt"),
        "tensorrt": dist_version(
            "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt_cu13"
        ),
    }
    return Environment(
        cpu_name=cpu_name(),
        cpu_count=os.cpu_count() or 1,
        cpu_affinity=affinity,
        torch_threads=torch.get_num_threads(),
        gpu_name=gpu_name,
        gpu_compute_capability=gpu_cc,
        cuda_version=torch.version.cuda,
        python=platform.python_version(),
        platform=platform.platform(),
        versions=versions,
        timing=probe_environment() if timing is None else timing,
    )
