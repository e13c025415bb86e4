"""Rule calibration_cache: activation ranges of the FP32 model on the calibration images (tracked artifact).

Each calibration image gets the model's test resize; a result larger than the branch's static input is
center-cropped to it and a smaller one zero-padded bottom/right, like an evaluation image's network input.
"""

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

# First: everything this job prints, warns or raises goes to its log file.
sys.stderr = sys.stdout = Path(snakemake.log[0]).open("w", buffering=1, encoding="utf-8")  # noqa: SIM115
logging.basicConfig(level=logging.INFO, stream=sys.stderr)

from panoptic_deploy.config import load_config  # noqa: E402
from panoptic_deploy.export import input_params_from_config  # noqa: E402
from panoptic_deploy.modeling import INPUT_NAME  # noqa: E402
from panoptic_deploy.precision import calibrate  # noqa: E402
from panoptic_deploy.preprocess import normalize_and_pad, read_image, resize_image  # noqa: E402


def calibration_batches(
    config: str, opts: list[str], images: list[str], input_hw: list[int]
) -> Iterator[dict[str, np.ndarray]]:
    """Yield {input name: 1×3×H×W float32} per image at the static size ``input_hw``."""
    params = input_params_from_config(load_config(config, opts))
    height, width = input_hw
    for path in images:
        resized = resize_image(read_image(path, params.input_format), params)
        top = max(0, (resized.shape[0] - height) // 2)
        left = max(0, (resized.shape[1] - width) // 2)
        tensor = normalize_and_pad(resized[top : top + height, left : left + width], params).numpy()
        batch = np.zeros((1, 3, height, width), dtype=np.float32)
        batch[:, :, : tensor.shape[2], : tensor.shape[3]] = tensor
        yield {INPUT_NAME: batch}


report = calibrate(
    snakemake.input.onnx,
    calibration_batches(
        snakemake.params.config, snakemake.params.opts, snakemake.input.images, snakemake.params.input_hw
    ),
    snakemake.params.method,
    snakemake.output[0],
    percentile=snakemake.params.percentile,
    num_bins=snakemake.params.num_bins,
)
print(report)
