"""The words the stages share: backends, precisions, compile modes and the network's tensor names.

One source for every list that the CLI, the library, the schemas' enums and the workflow check against, so
that adding a backend or a precision is one edit here (and one in the JSON schemas, which tests compare with
these tuples). Nothing here imports anything heavy: the report and the result files read it without torch.
"""

from __future__ import annotations

# The device name of the CPU rows in paths, the plan and the verdict; every other device is a GPU type of
# config 'gpus'.
CPU = "cpu"

# Precisions of the ONNX artefacts and engines: fp32, fp16 (FP32 I/O) and int8 (explicit Q/DQ, FP16 or FP32
# elsewhere). The order is the report's row order.
PRECISIONS = ("fp32", "fp16", "int8")
# Backends that run an engine file built from an ONNX model (each writes a sidecar).
ENGINE_BACKENDS = ("onnxruntime", "tensorrt")
# The file extension of each engine backend's artefact (results/engines/<backend>/<device>/<model>.<p>.<ext>).
ENGINE_EXTENSIONS = {"onnxruntime": "onnx", "tensorrt": "engine"}
# Backends that run the PyTorch model itself.
TORCH_BACKENDS = ("torch", "torch_compile")
# Every benchmarked backend, in the report's row order.
BENCH_BACKENDS = (*TORCH_BACKENDS, *ENGINE_BACKENDS)
# torch.compile modes: "reduce-overhead" adds CUDA graphs (what a batch-1 latency user picks); the
# max-autotune modes autotune kernels for minutes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# The exported network's input and outputs (``PanopticFCN.forward``), by name: the contract between the
# model, the ONNX files, the engines and the comparison of their outputs.
INPUT_NAME = "image"
OUTPUT_NAMES = (
    "inst_probs",
    "inst_scores",
    "inst_classes",
    "inst_valid",
    "stuff_probs",
    "stuff_scores",
    "stuff_present",
)

# ONNX simplifiers of the export stage (the workflow config's export.simplifier).
SIMPLIFIERS = ("onnxsim", "onnxslim")
# How INT8 calibration takes activation ranges (the workflow config's calibration.method).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The precision of the non-quantized part of an INT8 graph.
HIGH_PRECISION_DTYPES = ("fp16", "bf16", "fp32")
