"""The PanopticFCN model in plain PyTorch; module names equal the detectron2 checkpoint keys."""

from panoptic_deploy.modeling.panoptic_fcn import (
    HeadOutputs,
    InferenceParams,
    InputParams,
    NetworkOutputs,
    PanopticFCN,
    build_model,
)
from panoptic_deploy.vocab import INPUT_NAME, OUTPUT_NAMES

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
