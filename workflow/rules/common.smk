"""Validation, the plan, wildcard constraints and input functions.

The plan (panoptic_deploy.plan) decides every job from the config, the model configs and the image headers;
nothing here imports torch, ONNX Runtime or TensorRT or asks this machine what hardware it has (on a cluster
it is a login node). A bad config stops the workflow here with one line naming the key or file, before any
job and with nothing written under results/. What needs a device is checked by the job that runs on it
(panoptic_deploy.gpu), and a truncated image that still has its end marker by the first job that decodes it.
"""

import importlib.util
import re
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

import panoptic_deploy
from panoptic_deploy.errors import ConfigError
from panoptic_deploy.plan import engine_path, plan
from panoptic_deploy.vocab import CPU

PACKAGE_VERSION = panoptic_deploy.__version__
SCHEMA_PATH = Path(workflow.current_basedir) / ".." / "schemas" / "config.schema.yaml"


def _schema_message(error):
    """One line for a schema violation, naming the dotted config key."""
    key = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(str(k) for k in error.instance if k not in allowed)
        prefix = f"{key}." if key else ""
        names = ", ".join(f"'{prefix}{name}'" for name in unknown)
        return f"unknown config key {names}; allowed here: {', '.join(allowed)}"
    if error.validator == "oneOf":
        return f"config key '{key}': {error.instance!r} is not valid ({error.schema.get('description', '')})"
    return f"config key '{key or '(top level)'}': {error.message}"


def validate_config(cfg):
    """Validate ``cfg`` against the schema and fill in its defaults (in place); ConfigError on a violation."""
    try:
        validate(cfg, str(SCHEMA_PATH))
    except WorkflowError:
        schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
        error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
        if error is None:  # snakemake failed for another reason: keep its message
            raise
        raise ConfigError(_schema_message(error)) from None


validate_config(config)
PLAN = plan(config)

# The simplifier must be importable where simplify_onnx runs. Without --sdm conda that is this Python
# environment (a CPU rule has no container, so --sdm apptainer alone runs it here too), and find_spec looks
# it up without importing it; under --sdm conda the job's environment decides.
_JOBS_RUN_HERE = DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method
_simplifier = config["export"]["simplifier"]
if _JOBS_RUN_HERE and importlib.util.find_spec(_simplifier) is None:
    _other = "onnxslim" if _simplifier == "onnxsim" else "onnxsim"
    raise ConfigError(
        f"config key 'export.simplifier': {_simplifier} is not installed here "
        f"(pip install {_simplifier}, it is in the 'pipeline' extra), or set it to {_other}"
    )

# Conda environments under --sdm conda: CPU stages in the CPU one, the GPU jobs in the TensorRT one.
CPU_ENV = "../envs/cpu.yaml"
GPU_ENV = "../envs/tensorrt.yaml"
# The GPU jobs' image under --sdm apptainer (config 'gpu_container'); the CPU rules have no container:.
GPU_CONTAINER = config["gpu_container"]


def _alternatives(values):
    return "|".join(re.escape(value) for value in values) or "(?!)"  # (?!): matches nothing


wildcard_constraints:
    model=_alternatives(PLAN.branches),
    name=_alternatives(PLAN.models),
    precision=_alternatives(PLAN.precisions),
    backend=_alternatives([*PLAN.torch_backends, *PLAN.engine_backends]),
    gpu=_alternatives(PLAN.gpus),


TORCH_BACKEND_PATTERN = _alternatives(PLAN.torch_backends)


# --------------------------------------------------------------------------------------------------------
# Input functions and params of a branch (named, no lambdas in rules)


def spec(wildcards):
    """The model (sheet row) of a branch wildcard."""
    return PLAN.model_of(wildcards.model)


def model_config(wildcards):
    return spec(wildcards).config


def model_opts(wildcards):
    return list(spec(wildcards).opts)


def model_categories(wildcards):
    return spec(wildcards).categories


def weights(wildcards):
    """The checkpoint of the branch's model, or its synthetic weights."""
    return spec(wildcards).weights


def synthetic_spec(wildcards):
    return PLAN.models[wildcards.name]


def synthetic_config(wildcards):
    return synthetic_spec(wildcards).config


def synthetic_opts(wildcards):
    return list(synthetic_spec(wildcards).opts)


def synthetic_seed(wildcards):
    return synthetic_spec(wildcards).synthetic_seed


def eval_images(wildcards):
    """Evaluation images of a model branch."""
    return list(PLAN.branch(wildcards.model).images)


def first_eval_image(wildcards):
    """The real image used to check the export and to measure FP16 value ranges."""
    return PLAN.branch(wildcards.model).images[0]


def input_shape(wildcards):
    """Static network input shape [1, 3, H, W] of a model branch."""
    return [1, 3, *PLAN.branch(wildcards.model).input_hw]


def input_hw(wildcards):
    """Static network input size [H, W] of a model branch."""
    return PLAN.branch(wildcards.model).input_hw


def input_buckets(wildcards):
    """The size buckets of the branch's model ([[H, W], ...]; the jobs pad each image into its bucket by the
    plan's rule), or None: each image at its own padded size."""
    return PLAN.model_of(wildcards.model).bucket_list


def precision_onnx(wildcards):
    """The ONNX model an engine of this precision is built from."""
    suffix = {"fp32": "sim", "fp16": "fp16", "int8": "int8"}[wildcards.precision]
    return f"results/onnx/{wildcards.model}.{suffix}.onnx"


def ground_truth():
    """{gt_json, gt_dir} inputs of every benchmark when configured, else nothing."""
    gt_json, gt_dir = config["evaluation"]["gt_json"], config["evaluation"]["gt_dir"]
    return {"gt_json": gt_json, "gt_dir": gt_dir} if gt_json else {}


def reference_inputs(wildcards):
    """Weights, evaluation images and the category file (when the model names one)."""
    inputs = {"weights": weights(wildcards), "images": eval_images(wildcards)}
    if model_categories(wildcards) != "coco":
        inputs["categories"] = model_categories(wildcards)
    return inputs


def torch_bench_inputs(wildcards):
    """Weights, evaluation images, reference (and ground truth) of one torch benchmark."""
    return {
        "weights": weights(wildcards),
        "images": eval_images(wildcards),
        "reference": f"results/reference/{wildcards.model}.npz",
        **ground_truth(),
    }


def bench_engine_inputs(wildcards):
    """Engine, sidecar, evaluation images and reference of one engine benchmark."""
    device = wildcards.get("gpu", CPU)
    engine = engine_path(wildcards.backend, device, wildcards.model, wildcards.precision)
    return {
        "engine": engine,
        "sidecar": f"{engine}.json",
        "images": eval_images(wildcards),
        "reference": f"results/reference/{wildcards.model}.npz",
        **ground_truth(),
    }


# INT8 debugging (rule int8_debug, config int8.debug)

INT8_DEBUG_MODE = str(config["int8"]["debug"]).lower()  # YAML true/false arrive as booleans
INT8_DEBUG_FILES = (
    expand("results/int8_debug/{model}.json", model=PLAN.branches)
    if INT8_DEBUG_MODE != "false" and "int8" in PLAN.precisions
    else []
)


def int8_debug_bench(wildcards):
    """The branch's INT8 benchmark rows and the torch FP32 rows they are gated against."""
    return [
        row.path(wildcards.model)
        for row in PLAN.rows
        if row.precision == "int8" or (row.backend in PLAN.torch_backends and row.precision == "fp32")
    ]


def int8_debug_images(wildcards):
    return list(PLAN.calibration_images[: config["int8"]["debug_images"]])


# --------------------------------------------------------------------------------------------------------
# Resources: Snakemake's standard gpu / gpu_model, which the SLURM executor maps to --gpus=<model>:1


def gpu_model(wildcards):
    """The GPU type of the path (config 'gpus')."""
    return wildcards.gpu


def polygraphy_files():
    """The Polygraphy JSON of every branch (config polygraphy.images > 0): part of the default target."""
    if config["polygraphy"]["images"] == 0:
        return []
    return expand(
        "results/polygraphy/{model}.{kind}.json", model=PLAN.branches, kind=["inputs", "torch_fp32"]
    )


# --------------------------------------------------------------------------------------------------------
# Start of a run (onstart in the Snakefile: real runs with jobs to do, never dry-runs)


def sweep_results():
    """Remove the temporary files and scratch folders that killed jobs left under results/.

    Only the package's own ('.<name>.pdtmp-<host>-<pid>-...', panoptic_deploy.fileio) and only those whose
    writer no longer runs: a job of another Snakemake that still writes keeps its temp.
    """
    from panoptic_deploy.fileio import sweep_stale_temps

    removed = sweep_stale_temps("results")
    if removed:
        print(f"Removed {len(removed)} temporary file(s) left by killed jobs under results/:")
        for path in removed:
            print(f"    {path}")


# --------------------------------------------------------------------------------------------------------
# End of a failed run (onerror in the Snakefile)


def report_after_failure():
    """After a failed run: the verdict and the report of the rows that finished, each missing row a FAIL
    with its job's error line or NOT RUN (panoptic_deploy.report.report_after_failure); nothing when no
    benchmark is missing (then the report rule ran, or failed on its own)."""
    from panoptic_deploy.errors import first_line
    from panoptic_deploy.report import report_after_failure as write_after_failure

    try:
        verdict = write_after_failure(
            PLAN.expected_rows(),
            config["gates"],
            "results/verdict.json",
            "results/report.md",
            skipped=PLAN.skipped_json(),
            example_image=PLAN.example_image,
            trtexec_files=PLAN.trtexec_files(),
        )
    except Exception as exc:  # the run failed already; say why the report could not follow
        print(f"error: no report after the failure: {first_line(exc)}")
        return
    if verdict is not None:
        print(
            f"Wrote results/report.md and results/verdict.json for the rows that finished: {verdict.status} "
            f"({verdict.count('FAIL')} FAIL, {verdict.count('NOT RUN')} NOT RUN)."
        )
