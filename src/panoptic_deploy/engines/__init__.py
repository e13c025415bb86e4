"""Inference engines built from the exported ONNX models, each with a JSON sidecar.

* :mod:`panoptic_deploy.engines.onnxruntime`: ONNX Runtime CPU provider (runs everywhere, CI included).
* :mod:`panoptic_deploy.engines.tensorrt`: TensorRT 10.x/11.x on an NVIDIA GPU (``tensorrt`` imported lazily).
* :mod:`panoptic_deploy.engines.sidecar`: the sidecar dataclass and its schema validation.
* :mod:`panoptic_deploy.engines.trtexec`: NVIDIA's trtexec as an independent check of a TensorRT engine.

The backend modules are not imported here, so ``import panoptic_deploy.engines`` needs neither backend.
"""

from panoptic_deploy.engines.sidecar import (
    DeviceInfo,
    EngineSidecar,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from panoptic_deploy.errors import EngineError
from panoptic_deploy.onnx_utils import TensorSpec
from panoptic_deploy.vocab import ENGINE_BACKENDS, PRECISIONS

__all__ = [
    "ENGINE_BACKENDS",
    "PRECISIONS",
    "DeviceInfo",
    "EngineError",
    "EngineSidecar",
    "TensorSpec",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]
