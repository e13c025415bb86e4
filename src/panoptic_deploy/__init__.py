"""panoptic-deploy: PanopticFCN in plain PyTorch, exported to ONNX/TensorRT, benchmarked and reported."""

__version__ = "0.1.0"
