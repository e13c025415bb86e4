"""Rule calibration_cache: activation ranges of the FP32 model on the calibration images (the tracked
artifact); see panoptic_deploy.preprocess.fit_to_size for how images are fitted to the input."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.precision import calibrate, calibration_batches  # noqa: E402

report = calibrate(
    snakemake.input.onnx,
    calibration_batches(
        snakemake.params.config, snakemake.input.images, snakemake.params.input_hw, snakemake.params.opts
    ),
    snakemake.params.method,
    snakemake.output[0],
    percentile=snakemake.params.percentile,
    num_bins=snakemake.params.num_bins,
)
print(report)
