"""A tiny exportable network for the engine tests (ONNX Runtime here, TensorRT where it exists)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU trunk, a 1x1 head and a bilinear 2x upsample: two outputs of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.bn(self.conv(x)))
        upsampled = torch.nn.functional.interpolate(features, scale_factor=2.0, mode="bilinear")
        return self.head(features), upsampled


def export_tiny(path: Path, input_shape: tuple[int, int, int, int], *, dynamic: bool = False) -> TinyNet:
    """Export a TinyNet with random weights (and non-trivial BN statistics) to ``path`` (input 'image')."""
    model = TinyNet()
    assert model.bn.running_mean is not None and model.bn.running_var is not None
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            model,
            (torch.randn(input_shape),),
            str(path),
            input_names=["image"],
            output_names=["sem", "features"],
            dynamic_axes={"image": {2: "height", 3: "width"}} if dynamic else None,
            dynamo=False,
            opset_version=17,
        )
    return model
