"""panoptic-deploy: PanopticFCN checkpoint -> ONNX -> FP32/FP16/INT8 models -> engines -> benchmarks -> report.

    snakemake --cores 1 results/report.md     # everything (the default target)
    snakemake -n results/report.md            # what would run

Outputs are under results/ only: weights/, onnx/, calibration/, reference/, engines/<backend>/<device>/,
bench/<backend>/, report.md + report/, and logs/ + benchmarks/ (per-job wall time and memory).
config/README.md documents every config key; workflow/rules/common.smk validates them at start.
A job killed mid-write (SIGKILL, out of memory) leaves a hidden temporary file ('.<name>.pdtmp-...') next to its
output; the next run removes those of writers that no longer run when it starts (onstart below).
"""

from snakemake.utils import min_version

min_version("9.0")

from panoptic_deploy.config import check_yaml_file

# A YAML syntax error as one line with the file, line and column (Snakemake's own message names neither).
check_yaml_file("config/config.yaml")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/precision.smk"
include: "workflow/rules/engines.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/int8_debug.smk"
include: "workflow/rules/report.smk"


onstart:
    sweep_results()


rule all:
    default_target: True
    input:
        "results/report.md",
