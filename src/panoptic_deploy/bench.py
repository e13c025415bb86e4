"""Benchmark one (backend, precision) on the evaluation images: latency, throughput, memory and accuracy.

Backends:

* ``torch``: eager PyTorch. FP32 on CPU or CUDA; FP16 on CUDA through ``torch.autocast`` (the mixed precision
  a PyTorch user would pick; FP32 I/O, reductions in FP32).
* ``torch_compile``: ``torch.compile`` of the network (CUDA; FP32 or FP16 autocast), a further peer row.
  Compilation happens in the first warm-up call; its time is recorded separately.
* ``onnxruntime``: an engine of :mod:`panoptic_deploy.engines.onnxruntime` (CPU provider).
* ``tensorrt``: an engine of :mod:`panoptic_deploy.engines.tensorrt` (CUDA).

Accuracy is measured against the torch FP32 CPU reference (:func:`write_reference`, written once per model
and read by every benchmark): tensor error statistics per output and panoptic agreement
(:mod:`panoptic_deploy.compare`), plus PQ against ground truth when a COCO panoptic dataset is given.

Timing: ``warmup`` untimed runs of the whole pipeline, then ``iterations`` timed runs cycling over the
images (batch 1). Each run times host pre-processing (resize/normalise/pad of the decoded image, plus the
copy to the device), the network (``time.perf_counter`` on CPU; CUDA events on GPU, input already on the
device, outputs left there) and host post-processing (panoptic merge at the original size) separately.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from panoptic_deploy import __version__
from panoptic_deploy.categories import COCO, Category, CategorySet
from panoptic_deploy.compare import (
    ErrorAccumulator,
    OutputError,
    PanopticAgreement,
    PanopticPair,
    as_numpy_outputs,
    panoptic_agreement,
    panoptic_pair,
)
from panoptic_deploy.errors import PanopticDeployError, PanopticFormatError
from panoptic_deploy.export import prepare_at_size
from panoptic_deploy.fileio import atomic_path, file_sha256
from panoptic_deploy.jsonfiles import load_schema, read_checked_json, write_checked_json
from panoptic_deploy.modeling import INPUT_NAME, OUTPUT_NAMES, InferenceParams, InputParams, PanopticFCN
from panoptic_deploy.preprocess import read_image

PathLike = str | os.PathLike[str]

BENCH_SCHEMA_VERSION = 1
REFERENCE_FORMAT_VERSION = 1
BENCH_BACKENDS = ("torch", "torch_compile", "onnxruntime", "tensorrt")
# torch.compile modes: "reduce-overhead" adds CUDA graphs (what a batch-1 latency user picks); the
# max-autotune modes autotune kernels for minutes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BENCH_PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_BACKENDS = ("onnxruntime", "tensorrt")


class BenchError(PanopticDeployError):
    """A benchmark cannot run: unknown backend/precision, mismatching reference or images, bad result file."""


# ---------------------------------------------------------------------------------------------------------
# What can run where


def default_device(backend: str) -> str:
    """``cuda`` for tensorrt, and for the torch backends when a GPU is visible; ``cpu`` otherwise."""
    if backend == "tensorrt":
        return "cuda"
    if backend in ("torch", "torch_compile") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def combo_support(backend: str, precision: str, device: str | None = None) -> tuple[bool, str]:
    """Whether ``backend`` × ``precision`` runs on ``device`` (default: :func:`default_device`), and a plain
    reason (a caveat when it runs; why not when it does not). TensorRT availability is checked here too."""
    if backend not in BENCH_BACKENDS:
        return False, f"unknown backend (one of {', '.join(BENCH_BACKENDS)})"
    if precision not in BENCH_PRECISIONS:
        return False, f"unknown precision (one of {', '.join(BENCH_PRECISIONS)})"
    device = device or default_device(backend)
    if backend in ("torch", "torch_compile"):
        if precision == "int8":
            return False, (
                "PyTorch has no INT8 path for this model; INT8 is measured on the Q/DQ ONNX model "
                "(onnxruntime, tensorrt)"
            )
        if device != "cuda" and backend == "torch_compile":
            return False, "torch.compile is benchmarked on CUDA only, and no CUDA GPU is visible here"
        if device != "cuda" and precision == "fp16":
            return False, (
                "PyTorch has no fast FP16 CPU kernels; FP16 fidelity is measured on the FP16 ONNX model"
            )
        if device == "cuda" and not torch.cuda.is_available():
            return False, f"no CUDA GPU is visible to torch {torch.__version__}"
        return True, f"{'eager' if backend == 'torch' else 'compiled'} PyTorch {precision} on {device}"
    if backend == "onnxruntime":
        from panoptic_deploy.engines.onnxruntime import ort_precision_support

        return ort_precision_support(precision)
    from panoptic_deploy.engines.tensorrt import tensorrt_available

    return tensorrt_available()


# ---------------------------------------------------------------------------------------------------------
# Environment


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_name() -> str:
    from panoptic_deploy.engines.sidecar import cpu_name

    return cpu_name()


@dataclass(frozen=True)
class Environment:
    """The machine and library versions a benchmark ran with."""

    cpu_name: str
    cpu_count: int  # logical CPUs of the machine
    cpu_affinity: int  # logical CPUs this process may use
    torch_threads: int
    gpu_name: str | None
    gpu_compute_capability: str | None
    cuda_version: str | None
    python: str
    platform: str
    versions: dict[str, str | None]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Environment:
        return cls(**{**data, "versions": dict(data["versions"])})


def capture_environment() -> Environment:
    """CPU, GPU (if torch sees one) and versions of torch/onnx/onnxruntime/tensorrt/this package."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpu_name = gpu_cc = None
    if torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        gpu_cc = f"{major}.{minor}"
    versions = {
        "panoptic-deploy": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": _dist_version("onnx"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "onnxsim": _dist_version("onnxsim"),
        "onnxslim": _dist_version("onnxslim"),
        "nvidia-modelopt": _dist_version("nvidia-modelopt"),
        "tensorrt": _dist_version(
            "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12", "tensorrt_cu13"
        ),
    }
    return Environment(
        cpu_name=_cpu_name(),
        cpu_count=os.cpu_count() or 1,
        cpu_affinity=affinity,
        torch_threads=torch.get_num_threads(),
        gpu_name=gpu_name,
        gpu_compute_capability=gpu_cc,
        cuda_version=torch.version.cuda,
        python=platform.python_version(),
        platform=platform.platform(),
        versions=versions,
    )


# ---------------------------------------------------------------------------------------------------------
# Model parameters without the weights


def load_model_params(
    config: PathLike, opts: Sequence[str] = (), categories: CategorySet | None = None
) -> tuple[InputParams, InferenceParams]:
    """Pre-/post-processing parameters of a config (no model is built); with ``categories``, the config's
    head sizes must fit them."""
    from panoptic_deploy.config import load_config
    from panoptic_deploy.modeling.panoptic_fcn import inference_params_from_config, input_params_from_config

    cfg = load_config(Path(config), opts)
    if categories is not None:
        categories.check_config(cfg, str(config))
    return input_params_from_config(cfg), inference_params_from_config(cfg)


# ---------------------------------------------------------------------------------------------------------
# Panoptic maps in JSON (run-length) and in the reference file


def rle_encode(id_map: NDArray[Any]) -> str:
    """Row-major run-length code of an H×W id map as text: ``"value0 length0 value1 length1 ..."``."""
    flat = np.asarray(id_map).ravel()
    if flat.size == 0:
        return ""
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    return " ".join(map(str, np.stack([flat[starts].astype(np.int64), lengths], axis=1).ravel().tolist()))


def rle_decode(rle: str, height: int, width: int) -> NDArray[np.int32]:
    """Inverse of :func:`rle_encode`."""
    try:
        pairs = np.asarray([int(v) for v in rle.split()], np.int64).reshape(-1, 2)
    except ValueError as exc:
        raise BenchError(f"run-length code is not pairs of integers ({exc})") from None
    if int(pairs[:, 1].sum()) != height * width:
        raise BenchError(f"run-length code covers {int(pairs[:, 1].sum())} pixels, expected {height}x{width}")
    return np.repeat(pairs[:, 0], pairs[:, 1]).astype(np.int32).reshape(height, width)


@dataclass(frozen=True)
class ImagePanoptic:
    """One image's panoptic result: id map (H×W int32 at the original size) and ``segments_info`` dicts
    (contiguous category ids, as :func:`panoptic_deploy.predict.segments_info` writes them)."""

    name: str
    panoptic_seg: NDArray[np.int32]
    segments: tuple[dict[str, Any], ...]

    def pair(self, categories: CategorySet | None = None) -> PanopticPair:
        """(id map, segments with the dataset ids of ``categories``, default COCO)."""
        return panoptic_pair(self.panoptic_seg, self.segments, categories)

    def to_json(self) -> dict[str, Any]:
        height, width = self.panoptic_seg.shape
        return {
            "name": self.name,
            "height": int(height),
            "width": int(width),
            "rle": rle_encode(self.panoptic_seg),
            "segments": list(self.segments),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImagePanoptic:
        seg = rle_decode(data["rle"], int(data["height"]), int(data["width"]))
        return cls(data["name"], seg, tuple(dict(s) for s in data["segments"]))


@dataclass(frozen=True)
class ReferenceImage:
    """Torch FP32 outputs of one evaluation image."""

    name: str
    path: str
    image_size: tuple[int, int]  # resized, before padding
    orig_size: tuple[int, int]
    outputs: dict[str, NDArray[Any]]
    panoptic: ImagePanoptic


@dataclass(frozen=True)
class Reference:
    """The torch FP32 reference of one model: per-image network outputs and panoptic results."""

    model: str
    input_shape: tuple[int, int, int, int]
    images: tuple[ReferenceImage, ...]
    meta: dict[str, Any]
    sha256: str
    categories: CategorySet = COCO  # the model's category set (meta "categories"; COCO in older files)


def _image_names(images: Sequence[PathLike]) -> list[str]:
    names = [Path(p).stem for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BenchError(f"several evaluation images are named {duplicates[0]!r}; names must be unique")
    return names


def write_reference(
    config: PathLike,
    weights: PathLike,
    images: Sequence[PathLike],
    output: PathLike,
    input_hw: Sequence[int],
    opts: Sequence[str] = (),
    *,
    model_name: str | None = None,
    threads: int | None = None,
    categories: CategorySet = COCO,
) -> Reference:
    """Run torch FP32 on CPU over ``images`` (all must pad to ``input_hw``) and write ``output`` (.npz).

    The file holds, per image ``i``: ``img{i}.<output name>`` (the seven network outputs),
    ``img{i}.panoptic_seg`` (H×W int32) and ``img{i}.segments`` (JSON), plus ``meta`` (JSON: model name,
    input shape, image names and paths, sizes, versions, the model's category set). ``model_name`` defaults
    to the file stem. The config's head sizes must fit ``categories``; the benchmarks take them from here.
    """
    from panoptic_deploy.postprocess import postprocess
    from panoptic_deploy.predict import load_model, segments_info

    if not images:
        raise BenchError(f"{output}: no evaluation images")
    names = _image_names(images)
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_model(config, weights, opts, "cpu", categories)
    height, width = (int(v) for v in input_hw)
    arrays: dict[str, NDArray[Any]] = {}
    entries = []
    with torch.no_grad():
        for i, (path, name) in enumerate(zip(images, names, strict=True)):
            prepared = prepare_at_size(path, model.input_params, (height, width))
            outputs = model(prepared.tensor)
            result = postprocess(outputs, prepared.image_size, prepared.orig_size, model.inference)
            for key, value in as_numpy_outputs(outputs).items():
                arrays[f"img{i}.{key}"] = value
            arrays[f"img{i}.panoptic_seg"] = result.panoptic_seg.astype(np.int32)
            arrays[f"img{i}.segments"] = np.asarray(json.dumps(segments_info(result, categories)))
            entries.append(
                {
                    "name": name,
                    "path": str(path),
                    "image_size": list(prepared.image_size),
                    "orig_size": list(prepared.orig_size),
                }
            )
    meta = {
        "format_version": REFERENCE_FORMAT_VERSION,
        "model": model_name or Path(output).stem,
        "config": str(config),
        "opts": list(opts),
        "input_shape": [1, 3, height, width],
        "images": entries,
        "categories": categories.to_json(),
        "category_source": categories.source,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    with atomic_path(output) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return read_reference(output)


def read_reference(path: PathLike) -> Reference:
    """Load a file written by :func:`write_reference`; :class:`BenchError` names the file and the problem."""

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: reference file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format_version") != REFERENCE_FORMAT_VERSION:
                raise BenchError(f"{path}: reference format {meta.get('format_version')!r} is not supported")
            images = []
            for i, entry in enumerate(meta["images"]):
                outputs = {name: np.asarray(data[f"img{i}.{name}"]) for name in OUTPUT_NAMES}
                segments = tuple(json.loads(str(data[f"img{i}.segments"])))
                panoptic = ImagePanoptic(entry["name"], np.asarray(data[f"img{i}.panoptic_seg"]), segments)
                images.append(
                    ReferenceImage(
                        entry["name"],
                        entry["path"],
                        (int(entry["image_size"][0]), int(entry["image_size"][1])),
                        (int(entry["orig_size"][0]), int(entry["orig_size"][1])),
                        outputs,
                        panoptic,
                    )
                )
    except BenchError:
        raise
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not a valid reference file ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(v) for v in meta["input_shape"])
    categories = COCO
    if "categories" in meta:
        categories = CategorySet.from_json(meta["categories"], str(meta.get("category_source", path)))
    return Reference(
        meta["model"],
        shape,  # type: ignore[arg-type]
        tuple(images),
        meta,
        file_sha256(path),
        categories,
    )


# ---------------------------------------------------------------------------------------------------------
# Result dataclasses


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over ``count`` timed runs; percentiles by linear interpolation (numpy's default)."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    count: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, np.float64)
        if a.size == 0:
            raise BenchError("no timing samples")
        p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
        return cls(float(a.mean()), p50, p90, p99, float(a.min()), float(a.max()), int(a.size))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyStats:
        return cls(**data)


@dataclass(frozen=True)
class Latency:
    """Per-run timing of each stage and of their sum."""

    network: LatencyStats
    preprocess: LatencyStats
    postprocess: LatencyStats
    end_to_end: LatencyStats

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_json() for k in ("network", "preprocess", "postprocess", "end_to_end")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Latency:
        return cls(**{k: LatencyStats.from_json(v) for k, v in data.items()})


@dataclass(frozen=True)
class Memory:
    """Host RSS (MB = 10^6 bytes) before the runner was loaded and at the process peak; GPU memory on GPU."""

    baseline_rss_mb: float
    peak_rss_mb: float
    gpu_peak_allocated_mb: float | None = None  # torch.cuda.max_memory_allocated during the benchmark
    gpu_engine_mb: float | None = None  # TensorRT: the engine's device memory (activations + scratch)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Memory:
        return cls(**data)


@dataclass(frozen=True)
class EngineInfo:
    """The engine file a benchmark ran (from its sidecar)."""

    file: str
    bytes: int
    sha256: str
    build_seconds: float
    backend_version: str
    device_name: str
    source_onnx: str
    builder: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineInfo:
        return cls(**{**data, "builder": dict(data["builder"])})


@dataclass(frozen=True)
class Accuracy:
    """Agreement with the torch FP32 reference on the evaluation images."""

    reference: str  # file name of the reference .npz
    reference_sha256: str
    tensors: dict[str, OutputError]
    instances_reference: int
    instances_backend: int
    instances_matched: int
    panoptic: PanopticAgreement

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "reference_sha256": self.reference_sha256,
            "tensors": {name: err.to_json() for name, err in self.tensors.items()},
            "instances": {
                "reference": self.instances_reference,
                "backend": self.instances_backend,
                "matched": self.instances_matched,
            },
            "panoptic": self.panoptic.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Accuracy:
        tensors = {}
        for name, t in data["tensors"].items():
            fields = {k: v for k, v in t.items() if k not in ("mismatch_fraction",)}
            tensors[name] = OutputError(name=name, **fields)
        inst = data["instances"]
        return cls(
            data["reference"],
            data["reference_sha256"],
            tensors,
            inst["reference"],
            inst["backend"],
            inst["matched"],
            PanopticAgreement(**data["panoptic"]),
        )

    @property
    def max_abs_error(self) -> float | None:
        """Largest absolute error over the float outputs (None if nothing was compared)."""
        values = [e.max_abs for e in self.tensors.values() if e.kind == "float" and e.max_abs is not None]
        return max(values) if values else None


@dataclass(frozen=True)
class PQSummary:
    """PQ/SQ/RQ (0..1) and category count for All / Things / Stuff."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass(frozen=True)
class GroundTruthPQ:
    """PQ of this backend's panoptic output against COCO panoptic ground truth."""

    gt_json: str
    num_images: int
    all: PQSummary
    things: PQSummary
    stuff: PQSummary

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroundTruthPQ:
        return cls(
            data["gt_json"],
            data["num_images"],
            PQSummary(**data["all"]),
            PQSummary(**data["things"]),
            PQSummary(**data["stuff"]),
        )


@dataclass(frozen=True)
class BenchSettings:
    """How the benchmark ran."""

    warmup: int
    iterations: int
    threads: int | None
    images: tuple[str, ...]  # paths of the evaluation images
    cuda_graph: bool = False
    compile_seconds: float | None = None  # torch_compile: the first (compiling) call

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "images": list(self.images)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BenchSettings:
        return cls(**{**data, "images": tuple(data["images"])})


@dataclass(frozen=True)
class BenchResult:
    """One benchmark: one model × backend × precision on one device. Serialised by :func:`write_bench`."""

    model: str
    backend: str
    precision: str
    device: str  # "cpu" | "cuda"
    device_name: str
    input_shape: tuple[int, int, int, int]
    settings: BenchSettings
    latency: Latency
    throughput_ips: float  # network runs per second (1000 / mean network ms), batch 1
    end_to_end_ips: float  # images per second through pre + network + post
    memory: Memory
    accuracy: Accuracy
    ground_truth: GroundTruthPQ | None
    engine: EngineInfo | None
    environment: Environment
    panoptic: tuple[ImagePanoptic, ...]  # this backend's result for every evaluation image
    notes: tuple[str, ...] = ()
    package_version: str = __version__
    created: str = ""
    schema_version: int = BENCH_SCHEMA_VERSION
    categories: CategorySet | None = None  # the model's category set (report colours and legends)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "device_name": self.device_name,
            "input_shape": list(self.input_shape),
            "settings": self.settings.to_json(),
            "latency": self.latency.to_json(),
            "throughput_ips": self.throughput_ips,
            "end_to_end_ips": self.end_to_end_ips,
            "memory": self.memory.to_json(),
            "accuracy": self.accuracy.to_json(),
            "ground_truth": None if self.ground_truth is None else self.ground_truth.to_json(),
            "engine": None if self.engine is None else self.engine.to_json(),
            "environment": self.environment.to_json(),
            "panoptic": [p.to_json() for p in self.panoptic],
            "notes": list(self.notes),
            "package_version": self.package_version,
            "created": self.created,
            **(
                {}
                if self.categories is None
                else {"categories": {"source": self.categories.source, "list": self.categories.to_json()}}
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BenchResult:
        return cls(
            model=data["model"],
            backend=data["backend"],
            precision=data["precision"],
            device=data["device"],
            device_name=data["device_name"],
            input_shape=tuple(data["input_shape"]),
            settings=BenchSettings.from_json(data["settings"]),
            latency=Latency.from_json(data["latency"]),
            throughput_ips=data["throughput_ips"],
            end_to_end_ips=data["end_to_end_ips"],
            memory=Memory.from_json(data["memory"]),
            accuracy=Accuracy.from_json(data["accuracy"]),
            ground_truth=None
            if data["ground_truth"] is None
            else GroundTruthPQ.from_json(data["ground_truth"]),
            engine=None if data["engine"] is None else EngineInfo.from_json(data["engine"]),
            environment=Environment.from_json(data["environment"]),
            panoptic=tuple(ImagePanoptic.from_json(p) for p in data["panoptic"]),
            notes=tuple(data["notes"]),
            package_version=data["package_version"],
            created=data["created"],
            schema_version=data["schema_version"],
            categories=None
            if "categories" not in data
            else CategorySet.from_json(data["categories"]["list"], data["categories"]["source"]),
        )


# ---------------------------------------------------------------------------------------------------------
# Schema, writing and reading


def bench_schema() -> dict[str, Any]:
    """The JSON schema of a benchmark result (draft 2020-12)."""
    return load_schema("bench.schema.json")


def write_bench(result: BenchResult, path: PathLike) -> None:
    """Validate against the schema and write atomically (indented JSON)."""
    write_checked_json(result.to_json(), path, "bench.schema.json", "benchmark result", BenchError, indent=1)


def read_bench(path: PathLike) -> BenchResult:
    """Read and validate a benchmark result; :class:`BenchError` names the file and the offending key."""
    return BenchResult.from_json(read_checked_json(path, "bench.schema.json", "benchmark result", BenchError))


# ---------------------------------------------------------------------------------------------------------
# Runners: prepared input -> network outputs, each with its own timer


@dataclass
class _Runner:
    """``to_device`` moves the prepared 1×3×H×W tensor where the network reads it (counted as pre-processing),
    ``run`` runs the network, ``timed_run`` runs it and returns (outputs, milliseconds)."""

    device: str
    to_device: Callable[[torch.Tensor], Any]
    run: Callable[[Any], Any]
    notes: list[str] = field(default_factory=list)
    engine: EngineInfo | None = None
    gpu_engine_mb: float | None = None
    cuda_graph: bool = False

    def timed_run(self, x: Any) -> tuple[Any, float]:
        if self.device == "cuda":
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            out = self.run(x)
            end.record()
            end.synchronize()
            return out, float(start.elapsed_time(end))
        t0 = time.perf_counter()
        out = self.run(x)
        return out, (time.perf_counter() - t0) * 1000.0


class _CompiledNetwork:
    """``torch.compile`` of the whole network; if compiling it fails, of ``forward_heads`` alone.

    Inductor of torch 2.11 fails on the fixed-size decode (a Triton codegen error in the gather/sort part,
    measured on the H100), so the fallback compiles the backbone, FPN and heads, where nearly all the time
    goes, and runs the decode eagerly. The note says which happened.
    """

    def __init__(self, model: PanopticFCN, notes: list[str], mode: str = "default") -> None:
        self.model = model
        self.notes = notes
        self.mode = mode
        self.fell_back = False
        self.fn: Callable[[torch.Tensor], Any] = torch.compile(model, mode=mode)

    def _heads_then_decode(self, heads: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
        return lambda x: self.model.decode(heads(x))

    def __call__(self, x: torch.Tensor) -> Any:
        try:
            return self.fn(x)
        except (
            Exception
        ) as exc:  # torch._dynamo / Inductor raise many types; only the first failure falls back
            if self.fell_back:
                raise
            self.fell_back = True
            lines = str(exc).strip().splitlines()
            first = lines[0][:160] if lines else ""
            self.notes.append(
                f"torch.compile of the whole network failed ({type(exc).__name__}: {first}); compiled "
                "forward_heads (backbone, FPN, heads) only, the fixed-size decode runs eagerly"
            )
            self.fn = self._heads_then_decode(torch.compile(self.model.forward_heads, mode=self.mode))
            return self.fn(x)


def _torch_runner(
    backend: str,
    precision: str,
    device: str,
    config: PathLike,
    weights: PathLike | None,
    opts: Sequence[str],
    allow_tf32: bool | None,
    compile_mode: str = "default",
) -> _Runner:
    from panoptic_deploy.predict import load_model

    if weights is None:
        raise BenchError(f"{backend}: the torch backends need --weights")
    model = load_model(config, weights, opts, device)
    notes: list[str] = []
    network: Callable[[torch.Tensor], Any] = model
    if backend == "torch_compile":
        network = _CompiledNetwork(model, notes, compile_mode)
        graphs = " with CUDA graphs" if compile_mode == "reduce-overhead" else ""
        notes.append(
            f"torch.compile ({compile_mode} mode{graphs}, Inductor); compilation happens in the first "
            "warm-up run"
        )
    autocast = precision == "fp16"
    if autocast:
        notes.append("FP16 through torch.autocast(float16): FP32 weights and I/O, autocast op lists")
    if device == "cuda":
        if allow_tf32 is not None:
            # Process-wide switches; a benchmark process runs one configuration.
            torch.backends.cudnn.allow_tf32 = allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        notes.append(
            "cuDNN TF32 "
            + ("on" if torch.backends.cudnn.allow_tf32 else "off")
            + ", matmul TF32 "
            + ("on" if torch.backends.cuda.matmul.allow_tf32 else "off")
            + (
                " (as the process had them; PyTorch's default is cuDNN on, matmul off)"
                if allow_tf32 is None
                else " (set by the benchmark)"
            )
        )

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=autocast):
            return network(x)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device)

    return _Runner(device, to_device, run, notes)


def _engine_info(engine: PathLike, sidecar: Any) -> EngineInfo:
    return EngineInfo(
        file=Path(engine).name,
        bytes=int(sidecar.engine_bytes),
        sha256=str(sidecar.engine_sha256),
        build_seconds=float(sidecar.build_seconds),
        backend_version=str(sidecar.backend_version),
        device_name=str(sidecar.device.name),
        source_onnx=str(sidecar.source_onnx),
        builder=dict(sidecar.builder),
    )


def _ort_runner(precision: str, engine: PathLike, sidecar_file: PathLike, threads: int | None) -> _Runner:
    from panoptic_deploy.engines.onnxruntime import OrtRunner, ort_precision_support
    from panoptic_deploy.engines.sidecar import read_sidecar

    sidecar = read_sidecar(sidecar_file)
    if sidecar.precision != precision:
        raise BenchError(
            f"{sidecar_file}: engine precision is {sidecar.precision}, benchmark asks {precision}"
        )
    runner = OrtRunner(engine, sidecar, threads)
    _, note = ort_precision_support(precision)

    def to_device(x: torch.Tensor) -> dict[str, NDArray[np.float32]]:
        return {INPUT_NAME: x.numpy()}

    return _Runner(
        "cpu", to_device, runner.run, [f"onnxruntime CPU provider: {note}"], _engine_info(engine, sidecar)
    )


def _trt_runner(precision: str, engine: PathLike, sidecar_file: PathLike, cuda_graph: bool) -> _Runner:
    from panoptic_deploy.engines.sidecar import read_sidecar
    from panoptic_deploy.engines.tensorrt import TrtRunner

    sidecar = read_sidecar(sidecar_file)
    if sidecar.precision != precision:
        raise BenchError(
            f"{sidecar_file}: engine precision is {sidecar.precision}, benchmark asks {precision}"
        )
    runner = TrtRunner(engine, sidecar, cuda_graph=cuda_graph)
    memory = runner.memory()
    notes = [
        "network time includes the runner's copy into its bound input buffer and the clone of its "
        "outputs (CUDA events on the caller's stream)"
    ]
    if runner.cuda_graph_failure is not None:
        notes.append(f"CUDA graph asked for but not used: {runner.cuda_graph_failure}")

    def to_device(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {INPUT_NAME: x.to("cuda")}

    return _Runner(
        "cuda",
        to_device,
        runner.run,
        notes,
        _engine_info(engine, sidecar),
        gpu_engine_mb=memory.engine_device_memory_bytes / 1e6,
        cuda_graph=runner.cuda_graph,  # what runs do: False after a failed capture
    )


# ---------------------------------------------------------------------------------------------------------
# Benchmark


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


def check_ground_truth_categories(gt: Sequence[Category], model: CategorySet, source: str) -> None:
    """One-line error unless the ground truth's categories (id, isthing) are the model's category set."""
    gt_keys = sorted((c.id, c.isthing) for c in gt)
    model_keys = [(c.id, c.isthing) for c in model.categories]
    if gt_keys == model_keys:
        return
    extra = sorted({i for i, _ in gt_keys} - {i for i, _ in model_keys})
    missing = sorted({i for i, _ in model_keys} - {i for i, _ in gt_keys})
    detail = f"ids only in the ground truth: {extra[:8]}" if extra else ""
    if missing:
        detail += ("; " if detail else "") + f"ids only in the model's set: {missing[:8]}"
    if not detail:
        detail = "the same ids differ in isthing"
    raise PanopticFormatError(
        f"{source}: ground-truth categories ({len(gt_keys)}) are not the model's category set {model.source} "
        f"({len(model_keys)}): {detail}"
    )


def _ground_truth_pq(
    gt_json: PathLike,
    gt_dir: PathLike,
    names: Sequence[str],
    pairs: Sequence[PanopticPair],
    categories: CategorySet = COCO,
) -> GroundTruthPQ:
    """PQ of ``pairs`` (one per evaluation image, named by file stem; dataset ids of ``categories``)
    against a COCO panoptic dataset, whose categories must be those of the model."""
    from panoptic_deploy.panoptic_format import load_panoptic_json, read_panoptic_png
    from panoptic_deploy.pq import PQResult, PQStat, pq_from_arrays

    gt = load_panoptic_json(gt_json, require_categories=True)
    assert gt.categories is not None
    check_ground_truth_categories(gt.categories, categories, str(gt_json))
    by_stem = {Path(a.file_name).stem: a for a in gt.annotations}
    category_ids = [c.id for c in gt.categories]
    stat = PQStat.zeros(category_ids)
    for name, (pred_ids, pred_segments) in zip(names, pairs, strict=True):
        ann = by_stem.get(name)
        if ann is None:
            raise PanopticFormatError(f"{gt_json}: no annotation for evaluation image '{name}'")
        png = Path(gt_dir) / ann.file_name
        if not png.is_file():
            raise PanopticFormatError(f"{ann.describe()}: ground-truth PNG {png} not found")
        stat += pq_from_arrays(
            read_panoptic_png(png),
            ann.segments_info,
            pred_ids,
            pred_segments,
            category_ids,
            image=ann.describe(),
        )
    result = PQResult.from_stat(stat, gt.categories, len(names))

    def summary(m: Any) -> PQSummary:
        return PQSummary(m.pq, m.sq, m.rq, m.n)

    return GroundTruthPQ(
        str(gt_json), len(names), summary(result.all), summary(result.things), summary(result.stuff)
    )


def run_bench(
    backend: str,
    precision: str,
    *,
    config: PathLike,
    reference: PathLike,
    output: PathLike | None = None,
    images: Sequence[PathLike] | None = None,
    weights: PathLike | None = None,
    engine: PathLike | None = None,
    sidecar: PathLike | None = None,
    opts: Sequence[str] = (),
    model: str | None = None,
    device: str | None = None,
    warmup: int = 1,
    iterations: int = 10,
    threads: int | None = None,
    gt_json: PathLike | None = None,
    gt_dir: PathLike | None = None,
    cuda_graph: bool = False,
    allow_tf32: bool | None = None,
    compile_mode: str = "default",
) -> BenchResult:
    """Benchmark ``backend`` × ``precision`` and write the result to ``output`` (JSON, if given).

    ``images`` default to the reference's images and must equal them (names, order). The torch backends need
    ``weights``; engine backends need ``engine`` (``sidecar`` defaults to ``<engine>.json``).
    ``config``/``opts``
    give the pre- and post-processing. ``threads``: torch intra-op threads and ONNX Runtime intra-op threads.
    ``gt_json``/``gt_dir``: COCO panoptic ground truth whose annotation file stems equal the image stems.
    ``allow_tf32`` (torch backends on CUDA): None keeps PyTorch's settings (TF32 convolutions), False gives
    strict FP32 convolutions and matrix products, True TF32 for both. ``compile_mode`` (torch_compile): one of
    :data:`COMPILE_MODES`, passed to ``torch.compile``.
    """
    if warmup < 0 or iterations < 1:
        raise BenchError(f"need warmup >= 0 and iterations >= 1, got {warmup} and {iterations}")
    if compile_mode not in COMPILE_MODES:
        raise BenchError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
    device = device or default_device(backend)
    ok, reason = combo_support(backend, precision, device)
    if not ok:
        raise BenchError(f"cannot run this benchmark here: {reason}")
    if (gt_json is None) != (gt_dir is None):
        raise BenchError("ground truth needs both gt_json and gt_dir")
    ref = read_reference(reference)
    ref_names = [r.name for r in ref.images]
    if images is None:
        images = [r.path for r in ref.images]
    elif _image_names(images) != ref_names:
        raise BenchError(
            f"{reference}: reference images {ref_names} differ from the evaluation images "
            f"{_image_names(images)}"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    categories = ref.categories
    input_params, inference = load_model_params(config, opts, categories)
    decoded = [read_image(p, input_params.input_format) for p in images]
    input_hw = ref.input_shape[2:]

    # torch's TF32 switches are process-wide: restore them so that a later benchmark in this process
    # starts from the same settings.
    tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        baseline_rss = _rss_mb()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if backend in ("torch", "torch_compile"):
            runner = _torch_runner(
                backend, precision, device, config, weights, opts, allow_tf32, compile_mode
            )
        else:
            if engine is None:
                raise BenchError(f"{backend}: an engine file is needed")
            from panoptic_deploy.engines.sidecar import sidecar_path

            sidecar_file = sidecar or sidecar_path(engine)
            if backend == "onnxruntime":
                runner = _ort_runner(precision, engine, sidecar_file, threads)
            else:
                runner = _trt_runner(precision, engine, sidecar_file, cuda_graph)

        from panoptic_deploy.postprocess import postprocess
        from panoptic_deploy.predict import segments_info
        from panoptic_deploy.preprocess import prepare_image

        def pipeline(k: int) -> tuple[Any, Any, float, float, float]:
            """Image ``k`` through pre / network / post -> (outputs, result, pre ms, network ms, post ms)."""
            t0 = time.perf_counter()
            prepared = prepare_image(decoded[k], input_params)
            if tuple(prepared.tensor.shape[-2:]) != tuple(input_hw):
                raise BenchError(
                    f"{images[k]}: pads to network input {tuple(prepared.tensor.shape[-2:])}, the reference "
                    f"{reference} is for {tuple(input_hw)}"
                )
            x = runner.to_device(prepared.tensor)
            if runner.device == "cuda":
                torch.cuda.synchronize()
            pre_ms = (time.perf_counter() - t0) * 1000.0
            outputs, net_ms = runner.timed_run(x)
            t1 = time.perf_counter()
            with torch.inference_mode():
                result = postprocess(_as_mapping(outputs), prepared.image_size, prepared.orig_size, inference)
            post_ms = (time.perf_counter() - t1) * 1000.0
            return outputs, result, pre_ms, net_ms, post_ms

        compile_seconds = None
        t_first = time.perf_counter()
        for w in range(warmup):
            pipeline(w % len(images))
            if w == 0 and backend == "torch_compile":
                compile_seconds = round(time.perf_counter() - t_first, 2)

        # Accuracy: one (untimed) run per image.
        acc = ErrorAccumulator(inference.inst_thres)
        results: list[ImagePanoptic] = []
        for k, ref_image in enumerate(ref.images):
            outputs, result, *_ = pipeline(k)
            acc.add(as_numpy_outputs(outputs), ref_image.outputs)
            results.append(
                ImagePanoptic(
                    ref_image.name,
                    result.panoptic_seg.astype(np.int32),
                    tuple(segments_info(result, categories)),
                )
            )
        if backend == "torch_compile" and compile_seconds is None:
            compile_seconds = round(time.perf_counter() - t_first, 2)

        pre, net, post, total = [], [], [], []
        for it in range(iterations):
            _, _, pre_ms, net_ms, post_ms = pipeline(it % len(images))
            pre.append(pre_ms)
            net.append(net_ms)
            post.append(post_ms)
            total.append(pre_ms + net_ms + post_ms)

        agreement = panoptic_agreement(
            [r.pair(categories) for r in results],
            [r.panoptic.pair(categories) for r in ref.images],
            ref_names,
            categories,
        )
        ground_truth = (
            _ground_truth_pq(gt_json, gt_dir, ref_names, [r.pair(categories) for r in results], categories)
            if gt_json is not None and gt_dir is not None
            else None
        )
        gpu_peak = torch.cuda.max_memory_allocated() / 1e6 if device == "cuda" else None
        latency = Latency(
            LatencyStats.from_samples(net),
            LatencyStats.from_samples(pre),
            LatencyStats.from_samples(post),
            LatencyStats.from_samples(total),
        )
        env = capture_environment()
        errors = acc.result()
        result = BenchResult(
            model=model or ref.model,
            backend=backend,
            precision=precision,
            device=device,
            device_name=env.gpu_name if device == "cuda" and env.gpu_name else env.cpu_name,
            input_shape=ref.input_shape,
            settings=BenchSettings(
                warmup=warmup,
                iterations=iterations,
                threads=threads,
                images=tuple(str(p) for p in images),
                cuda_graph=runner.cuda_graph,
                compile_seconds=compile_seconds,
            ),
            latency=latency,
            throughput_ips=1000.0 / latency.network.mean_ms,
            end_to_end_ips=1000.0 / latency.end_to_end.mean_ms,
            memory=Memory(round(baseline_rss, 1), round(_peak_rss_mb(), 1), gpu_peak, runner.gpu_engine_mb),
            accuracy=Accuracy(
                reference=Path(reference).name,
                reference_sha256=ref.sha256,
                tensors=errors,
                instances_reference=acc.instances_ref,
                instances_backend=acc.instances_test,
                instances_matched=acc.instances_matched,
                panoptic=agreement,
            ),
            ground_truth=ground_truth,
            engine=runner.engine,
            environment=env,
            panoptic=tuple(results),
            notes=tuple(runner.notes),
            created=_utc_now(),
            categories=categories,
        )
        if output is not None:
            write_bench(result, output)
        return result
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32_saved


def _as_mapping(outputs: Any) -> Mapping[str, Any]:
    """Network outputs of any runner as a name -> tensor/array mapping for post-processing."""
    if hasattr(outputs, "_asdict"):
        return dict(outputs._asdict())
    if isinstance(outputs, Mapping):
        return outputs
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def _utc_now() -> str:
    from panoptic_deploy.engines.sidecar import utc_now

    return utc_now()
