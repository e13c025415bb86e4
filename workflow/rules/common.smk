"""Helpers for the rules, evaluated once when the workflow is parsed.

Everything that can be wrong with the config is checked here, before any job runs, so that a bad config stops
the workflow with one line naming the key or file and leaves nothing under results/:
config keys and types (the JSON schema), the model config and its overrides, the checkpoint, the image
folders (every file must be an image the package can read: fully decoded by ``preprocess.read_image`` in the
main Snakemake process, so a truncated file or an unsupported mode stops the run here and not inside a job),
the input sizes, and the backends.

Model branches: the network is exported with a static input size, so every distinct padded size of the
evaluation images (under the model config's test resize) is its own branch ``<name>_<H>x<W>`` with its own
ONNX models, engines and benchmarks, evaluated on the images of that size.
"""

import importlib.util
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import panoptic_deploy
from panoptic_deploy.bench.runners import combo_support, default_device
from panoptic_deploy.errors import ConfigError, ImageError, PanopticDeployError
from panoptic_deploy.preprocess import read_image

PACKAGE_VERSION = panoptic_deploy.__version__
SCHEMA_PATH = Path(workflow.current_basedir) / ".." / "schemas" / "config.schema.yaml"

from panoptic_deploy.vocab import PRECISIONS as ALL_PRECISIONS
ENGINE_EXTENSIONS = {"onnxruntime": "onnx", "tensorrt": "engine"}


# --------------------------------------------------------------------------------------------------------
# Config keys and types


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


# --------------------------------------------------------------------------------------------------------
# Images


def verified_images(key, folder):
    """Sorted image files of ``folder`` (config ``key``): every non-hidden file must be a readable image.

    Each is decoded in full, as the jobs will (a header check such as PIL's ``verify()`` passes a truncated
    JPEG), but only in the main process: the jobs' own parse of the workflow lists the files without
    decoding them again.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"config key '{key}': image folder '{folder}' does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"config key '{key}': image folder '{folder}' contains no image")
    for file in files if workflow.is_main_process else ():
        try:
            read_image(file)
        except ImageError as exc:
            reason = str(exc).removeprefix(f"{file}: ")
            raise ConfigError(f"config key '{key}': '{file}' is not a readable image: {reason}") from None
    return [str(file) for file in files]


def image_name(file):
    return Path(file).stem


# --------------------------------------------------------------------------------------------------------
# Model config, input sizes and branches


def model_opts():
    """The model-config overrides as strings (YAML may give numbers or booleans)."""
    return [
        str(value).lower() if isinstance(value, bool) else str(value) for value in config["model"]["opts"]
    ]


@dataclass(frozen=True)
class ModelBranch:
    """One static network input size and the evaluation images that map to it."""

    name: str  # <model.name>_<H>x<W>
    height: int
    width: int
    images: tuple  # evaluation image paths, sorted


def model_branches(eval_images):
    """Group the evaluation images by padded network input size -> {branch name: ModelBranch}."""
    from panoptic_deploy.config import load_config
    from panoptic_deploy.export import model_name
    from panoptic_deploy.modeling.panoptic_fcn import input_params_from_config
    from panoptic_deploy.preprocess import image_size, network_input_shape

    model_config = config["model"]["config"]
    if not Path(model_config).is_file():
        raise ConfigError(f"config key 'model.config': '{model_config}' does not exist")
    try:
        model_cfg = load_config(model_config, model_opts())
        params = input_params_from_config(model_cfg)
    except PanopticDeployError as exc:
        raise ConfigError(f"config key 'model.config' / 'model.opts': {exc}") from None
    try:
        CATEGORIES.check_config(model_cfg, model_config)
    except PanopticDeployError as exc:
        raise ConfigError(f"config keys 'model.config' / 'model.categories': {exc}") from None
    by_size = {}
    for file in eval_images:
        try:
            shape = network_input_shape(*image_size(file), params)
        except ImageError as exc:  # e.g. an aspect ratio the test resize cannot handle
            raise ConfigError(f"config key 'evaluation.images': '{file}': {exc}") from None
        by_size.setdefault(shape, []).append(file)
    pinned = config["model"]["input_sizes"]
    if pinned != "auto":
        allowed = {tuple(size) for size in pinned}
        for size, files in sorted(by_size.items()):
            if size not in allowed:
                raise ConfigError(
                    f"config key 'model.input_sizes': evaluation image '{files[0]}' needs input size "
                    f"{list(size)} (test resize {params.min_size}/{params.max_size}, padded to 32), "
                    f"which is not among {[list(s) for s in sorted(allowed)]}"
                )
        unused = sorted(allowed - set(by_size))
        if unused:
            raise ConfigError(
                f"config key 'model.input_sizes': no evaluation image has input size {list(unused[0])}"
            )
    branches = {}
    for (height, width), files in sorted(by_size.items()):
        branch = ModelBranch(
            model_name(config["model"]["name"], (height, width)), height, width, tuple(sorted(files))
        )
        branches[branch.name] = branch
    return branches


# --------------------------------------------------------------------------------------------------------
# Backends


def tensorrt_status():
    """(can run, reason): TensorRT 10/11 importable and a CUDA GPU visible (never imports torch without it)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed"
    from panoptic_deploy.engines.tensorrt import tensorrt_available

    return tensorrt_available()


def _slug(text):
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-").lower()


def device_key(backend):
    """Engine folder name: the backend version and the device, so engines of another setup are never reused."""
    if backend == "onnxruntime":
        import onnxruntime

        return f"ort{onnxruntime.__version__}-cpu-{_slug(platform.machine())}"
    import tensorrt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"trt{tensorrt.__version__}-{_slug(torch.cuda.get_device_name())}-sm{major}{minor}"


def resolve_backends():
    """(engine backends to run, skipped [{backend, precision, reason}]) from config 'backends'."""
    requested = config["backends"]
    skipped = []
    if requested == "auto":
        ok, reason = tensorrt_status()
        if ok:
            return ["tensorrt"], skipped
        skipped.append({"backend": "tensorrt", "precision": "all", "reason": reason})
        return ["onnxruntime"], skipped
    if "tensorrt" in requested:
        ok, reason = tensorrt_status()
        if not ok:
            raise ConfigError(f"config key 'backends': tensorrt was asked for but cannot run here: {reason}")
    return list(requested), skipped


# --------------------------------------------------------------------------------------------------------
# Evaluate once at parse time


EVAL_IMAGES = verified_images("evaluation.images", config["evaluation"]["images"])
_stems = [image_name(file) for file in EVAL_IMAGES]
for _stem in sorted({s for s in _stems if _stems.count(s) > 1}):
    raise ConfigError(
        f"config key 'evaluation.images': two images are named '{_stem}' (names must be unique)"
    )

PRECISIONS = [p for p in ALL_PRECISIONS if p in config["precisions"]]
CALIBRATION_IMAGES = (
    verified_images("calibration.images", config["calibration"]["images"]) if "int8" in PRECISIONS else []
)

if config["model"]["checkpoint"] is not None and not Path(config["model"]["checkpoint"]).is_file():
    raise ConfigError(f"config key 'model.checkpoint': '{config['model']['checkpoint']}' does not exist")

_gt_json, _gt_dir = config["evaluation"]["gt_json"], config["evaluation"]["gt_dir"]
if (_gt_json is None) != (_gt_dir is None):
    raise ConfigError(
        "config keys 'evaluation.gt_json' and 'evaluation.gt_dir' go together: set both or neither"
    )
if _gt_json is not None and not Path(_gt_json).is_file():
    raise ConfigError(f"config key 'evaluation.gt_json': '{_gt_json}' does not exist")
if _gt_dir is not None and not Path(_gt_dir).is_dir():
    raise ConfigError(f"config key 'evaluation.gt_dir': folder '{_gt_dir}' does not exist")

def model_categories():
    """The model's category set (config 'model.categories': coco or a JSON file with a categories list)."""
    from panoptic_deploy.categories import load_category_set

    try:
        return load_category_set(config["model"]["categories"])
    except PanopticDeployError as exc:
        raise ConfigError(f"config key 'model.categories': {exc}") from None


CATEGORIES = model_categories()
if _gt_json is not None:
    from panoptic_deploy.bench.accuracy import check_ground_truth_categories
    from panoptic_deploy.panoptic_format import load_panoptic_json

    try:
        check_ground_truth_categories(
            load_panoptic_json(_gt_json, require_categories=True).categories, CATEGORIES, _gt_json
        )
    except PanopticDeployError as exc:
        raise ConfigError(f"config keys 'evaluation.gt_json' / 'model.categories': {exc}") from None

MODELS = model_branches(EVAL_IMAGES)

example = config["report"]["example_image"]
if example is not None and example not in {Path(f).name for f in EVAL_IMAGES}:
    raise ConfigError(f"config key 'report.example_image': '{example}' is not an evaluation image")

_simplifier = config["export"]["simplifier"]
if importlib.util.find_spec(_simplifier) is None:
    _other = "onnxslim" if _simplifier == "onnxsim" else "onnxsim"
    raise ConfigError(
        f"config key 'export.simplifier': {_simplifier} is not installed here "
        f"(pip install {_simplifier}, it is in the 'pipeline' extra), or set it to {_other}"
    )

ENGINE_BACKENDS, SKIPPED = resolve_backends()
DEVICE_KEYS = {backend: device_key(backend) for backend in ENGINE_BACKENDS}


def trtexec_cross_check():
    """Whether the trtexec rule runs: config 'tensorrt.trtexec' with TensorRT among the backends."""
    setting = config["tensorrt"]["trtexec"]
    if setting is False:
        return False
    if "tensorrt" not in ENGINE_BACKENDS:
        if setting is True:
            raise ConfigError(
                "config key 'tensorrt.trtexec': true, but the tensorrt backend does not run here "
                f"(backends: {', '.join(ENGINE_BACKENDS)})"
            )
        return False
    exe = shutil.which("trtexec")
    if exe is None:
        if setting is True:
            raise ConfigError("config key 'tensorrt.trtexec': true, but trtexec is not on PATH")
        reason = "not on PATH, so no engine was cross-checked with it"
        SKIPPED.append({"backend": "trtexec", "precision": "all", "reason": reason})
        return False
    # The TensorRT wheels ship no trtexec: the one on PATH may be of another version, which cannot load
    # the plans this TensorRT builds.
    import tensorrt

    from panoptic_deploy.engines.trtexec import trtexec_compatibility

    usable, reason = trtexec_compatibility(exe, tensorrt.__version__)
    if not usable:
        if setting is True:
            raise ConfigError(f"config key 'tensorrt.trtexec': true, but {reason}")
        SKIPPED.append({"backend": "trtexec", "precision": "all", "reason": reason})
        return False
    return True


TRTEXEC = trtexec_cross_check()

# Benchmark rows: every torch backend × precision and engine backend × precision that runs on this machine
# (bench.combo_support); the others become plain "not run here" lines of the report.
TORCH_BACKENDS = ["torch", "torch_compile"] if config["bench"]["torch_compile"] else ["torch"]
# torch FP32 always runs: it is the baseline of the speedup column.
BENCH_ROWS = [("torch", "fp32")]
for _backend in [*TORCH_BACKENDS, *ENGINE_BACKENDS]:
    for _precision in PRECISIONS:
        _runs, _reason = combo_support(_backend, _precision)
        if _runs and (_backend, _precision) not in BENCH_ROWS:
            BENCH_ROWS.append((_backend, _precision))
        elif not _runs:
            SKIPPED.append({"backend": _backend, "precision": _precision, "reason": _reason})
# Devices the torch rows run on (CUDA where a GPU is visible): those jobs then hold the gpu resource.
GPU_BACKENDS = {"tensorrt", *(b for b in TORCH_BACKENDS if default_device(b) == "cuda")}

# The non-quantized part of the INT8 model: FP16 for TensorRT (strongly typed build), FP32 on the CPU provider.
INT8_HIGH_PRECISION = config["int8"]["high_precision"]
if INT8_HIGH_PRECISION == "auto":
    INT8_HIGH_PRECISION = "fp16" if "tensorrt" in ENGINE_BACKENDS else "fp32"

# Conda environment of every job under `--sdm conda` (ignored otherwise): one per machine kind. The Snakemake
# process itself decides the backends, so on a GPU machine run it from an environment with TensorRT too.
CONDA_ENV = "../../envs/tensorrt.yaml" if "tensorrt" in ENGINE_BACKENDS else "../../envs/cpu.yaml"

WEIGHTS = config["model"]["checkpoint"] or f"results/weights/{config['model']['name']}.pth"


def _alternatives(values):
    return "|".join(re.escape(value) for value in values)


wildcard_constraints:
    model=_alternatives(MODELS),
    name=re.escape(config["model"]["name"]),
    precision=_alternatives(PRECISIONS),
    backend=_alternatives([*TORCH_BACKENDS, *ENGINE_BACKENDS]),


# --------------------------------------------------------------------------------------------------------
# Input functions (named, no lambdas in rules)


def eval_images(wildcards):
    """Evaluation images of a model branch."""
    return list(MODELS[wildcards.model].images)


def first_eval_image(wildcards):
    """The real image used to check the export and to measure FP16 value ranges."""
    return MODELS[wildcards.model].images[0]


def input_shape(wildcards):
    """Static network input shape [1, 3, H, W] of a model branch."""
    branch = MODELS[wildcards.model]
    return [1, 3, branch.height, branch.width]


def input_hw(wildcards):
    """Static network input size [H, W] of a model branch."""
    branch = MODELS[wildcards.model]
    return [branch.height, branch.width]


def precision_onnx(wildcards):
    """The ONNX model an engine of this precision is built from."""
    suffix = {"fp32": "sim", "fp16": "fp16", "int8": "int8"}[wildcards.precision]
    return f"results/onnx/{wildcards.model}.{suffix}.onnx"


def engine_path(backend, model, precision):
    return (
        f"results/engines/{backend}/{DEVICE_KEYS[backend]}/{model}.{precision}.{ENGINE_EXTENSIONS[backend]}"
    )


def bench_files():
    """Every benchmark JSON the report needs."""
    return [
        f"results/bench/{backend}/{model}.{precision}.json"
        for model in MODELS
        for backend, precision in BENCH_ROWS
    ]


def trtexec_files():
    """Every trtexec cross-check the report needs (none unless the trtexec rule runs)."""
    if not TRTEXEC:
        return []
    return [
        f"results/trtexec/{DEVICE_KEYS['tensorrt']}/{model}.{precision}.json"
        for model in MODELS
        for backend, precision in BENCH_ROWS
        if backend == "tensorrt"
    ]


def example_image():
    return config["report"]["example_image"] or Path(EVAL_IMAGES[0]).name


ENGINE_BACKEND_PATTERN = _alternatives(ENGINE_BACKENDS)
TORCH_BACKEND_PATTERN = _alternatives(TORCH_BACKENDS)


def bench_engine_inputs(wildcards):
    """Engine, sidecar, evaluation images and reference of one engine benchmark."""
    engine = engine_path(wildcards.backend, wildcards.model, wildcards.precision)
    return {
        "engine": engine,
        "sidecar": f"{engine}.json",
        "images": eval_images(wildcards),
        "reference": f"results/reference/{wildcards.model}.npz",
        **ground_truth(),
    }


def bench_gpus(wildcards):
    """GPU benchmarks hold the gpu resource so that two never share the card."""
    return 1 if wildcards.backend in GPU_BACKENDS else 0


def ground_truth():
    """{gt_json, gt_dir} inputs of every benchmark when configured, else nothing."""
    gt_json, gt_dir = config["evaluation"]["gt_json"], config["evaluation"]["gt_dir"]
    return {"gt_json": gt_json, "gt_dir": gt_dir} if gt_json else {}


def reference_inputs(wildcards):
    """Weights, evaluation images and the category file (when model.categories names one)."""
    inputs = {"weights": WEIGHTS, "images": eval_images(wildcards)}
    if config["model"]["categories"] != "coco":
        inputs["categories"] = config["model"]["categories"]
    return inputs


def torch_bench_inputs(wildcards):
    """Weights, evaluation images, reference (and ground truth) of one torch benchmark."""
    return {
        "weights": WEIGHTS,
        "images": eval_images(wildcards),
        "reference": f"results/reference/{wildcards.model}.npz",
        **ground_truth(),
    }


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
