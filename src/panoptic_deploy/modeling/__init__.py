"""The PanopticFCN model in plain PyTorch; module names equal the detectron2 checkpoint keys."""

from panoptic_deploy.modeling.panoptic_fcn import (
    INPUT_NAME,
    OUTPUT_NAMES,
    HeadOutputs,
    InferenceParams,
    InputParams,
    NetworkOutputs,
    PanopticFCN,
    build_model,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "HeadOutputs",
    "InferenceParams",
    "InputParams",
    "NetworkOutputs",
    "PanopticFCN",
    "build_model",
]
