"""Inference engines built from the exported ONNX models, each with a JSON sidecar.

* :mod:`panoptic_deploy.engines.onnxruntime`: ONNX Runtime CPU provider (runs everywhere, CI included).
* :mod:`panoptic_deploy.engines.tensorrt`: TensorRT 10.x/11.x on an NVIDIA GPU (``tensorrt`` imported lazily).
* :mod:`panoptic_deploy.engines.sidecar`: the sidecar dataclass, its schema validation and ONNX inspection.

The backend modules are not imported here, so ``import panoptic_deploy.engines`` needs neither backend.
"""

from panoptic_deploy.engines.sidecar import (
    BACKENDS,
    PRECISIONS,
    DeviceInfo,
    EngineError,
    EngineSidecar,
    TensorSpec,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "DeviceInfo",
    "EngineError",
    "EngineSidecar",
    "TensorSpec",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]
