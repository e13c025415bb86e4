"""What a benchmark measured, as dataclasses, and their JSON file (``bench.schema.json``).

Torch-free on purpose: the report reads these files, and rendering Markdown should not load PyTorch (a test
imports this module in a fresh interpreter and checks that torch stays out). The JSON layout is declared
beside the fields (:func:`panoptic_deploy.jsonfiles.json_meta`) and converted by the one codec of
:mod:`panoptic_deploy.jsonfiles`; the few fields whose JSON is not their value (run-length panoptic maps,
per-output errors, the category set) name their encode/decode pair there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy import __version__
from panoptic_deploy.categories import CategorySet
from panoptic_deploy.compare import OutputError, PanopticAgreement, PanopticPair, panoptic_pair
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.jsonfiles import (
    from_json,
    json_meta,
    load_schema,
    read_checked_json,
    to_json,
    write_checked_json,
)
from panoptic_deploy.timing import TimingEnvironment, TimingStats

BENCH_SCHEMA_VERSION = 3  # 2: stable timings (count and time, CoV, percentiles from enough runs); 3: the
# example image's panoptic map only, accuracy.tensor_images


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


# A panoptic map is stored run-length coded (the id maps are mostly long runs): its own JSON form.
def _panoptic_to_json(images: Sequence[ImagePanoptic]) -> list[dict[str, Any]]:
    out = []
    for image in images:
        height, width = image.panoptic_seg.shape
        out.append(
            {
                "name": image.name,
                "height": int(height),
                "width": int(width),
                "rle": rle_encode(image.panoptic_seg),
                "segments": list(image.segments),
            }
        )
    return out


def _panoptic_from_json(items: Sequence[Mapping[str, Any]]) -> tuple[ImagePanoptic, ...]:
    return tuple(
        ImagePanoptic(
            data["name"],
            rle_decode(data["rle"], int(data["height"]), int(data["width"])),
            tuple(dict(s) for s in data["segments"]),
        )
        for data in items
    )


# Per-output errors are keyed by output name; the JSON drops the name inside each entry and adds the
# derived mismatch fraction (OutputError.to_json), so reading puts the name back and drops the fraction.
def _tensors_to_json(tensors: Mapping[str, OutputError]) -> dict[str, Any]:
    return {name: err.to_json() for name, err in tensors.items()}


def _tensors_from_json(data: Mapping[str, Any]) -> dict[str, OutputError]:
    return {
        name: OutputError(name=name, **{k: v for k, v in t.items() if k != "mismatch_fraction"})
        for name, t in data.items()
    }


def _categories_to_json(categories: CategorySet) -> dict[str, Any]:
    return {"source": categories.source, "list": categories.to_json()}


def _categories_from_json(data: Mapping[str, Any]) -> CategorySet:
    return CategorySet.from_json(data["list"], data["source"])


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
    # what affects timings, probed before the runner was loaded (governor, load, GPU clocks and temperature)
    timing: TimingEnvironment


@dataclass(frozen=True)
class Latency:
    """Per-run timing of each stage and of their sum (:func:`panoptic_deploy.timing.timing_stats`: p90 and
    p99 only from enough runs, the CoV and the unstable flag against the row's threshold)."""

    network: TimingStats
    preprocess: TimingStats
    postprocess: TimingStats
    end_to_end: TimingStats

    @property
    def unstable(self) -> bool:
        """The row's flag: its network latency's CoV exceeds the threshold it ran with (or is unknown)."""
        return self.network.unstable


@dataclass(frozen=True)
class Memory:
    """Host RSS (MB = 10^6 bytes) before the runner was loaded and at the process peak; GPU memory on GPU."""

    baseline_rss_mb: float
    peak_rss_mb: float
    gpu_peak_allocated_mb: float | None = None  # torch.cuda.max_memory_allocated during the benchmark
    gpu_engine_mb: float | None = None  # TensorRT: the engine's device memory (activations + scratch)


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


@dataclass(frozen=True)
class Accuracy:
    """Agreement with the torch FP32 reference on the evaluation images."""

    reference: str  # file name of the reference .npz
    reference_sha256: str
    tensors: dict[str, OutputError] = field(
        metadata=json_meta(encode=_tensors_to_json, decode=_tensors_from_json)
    )
    instances_reference: int = field(metadata=json_meta(key=("instances", "reference")))
    instances_backend: int = field(metadata=json_meta(key=("instances", "backend")))
    instances_matched: int = field(metadata=json_meta(key=("instances", "matched")))
    panoptic: PanopticAgreement  # over every evaluation image
    # how many images the tensor errors and instances are over: the reference's fidelity subset (the first
    # evaluation.fidelity_images images, whose raw outputs it kept)
    tensor_images: int

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


@dataclass(frozen=True)
class BenchSettings:
    """How the benchmark ran."""

    warmup: int
    iterations: int  # the minimum count of timed runs (latency.network.count: how many ran)
    threads: int | None
    images: tuple[str, ...]  # paths of the evaluation images
    cuda_graph: bool = False
    compile_seconds: float | None = None  # torch_compile: the first (compiling) call
    min_seconds: float = 0.0  # the minimum seconds of timed runs
    max_seconds: float | None = None  # a cap on the timed phase, if any
    timed_seconds: float = 0.0  # how long the timed phase took
    stopped_by: str = "min_iterations+min_seconds"  # timing.TimingRun.stopped_by


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
    # this backend's result for the example image only (the report draws it; every image's result goes to
    # a COCO panoptic set, bench.panoptic_store, when asked)
    panoptic: tuple[ImagePanoptic, ...] = field(
        metadata=json_meta(encode=_panoptic_to_json, decode=_panoptic_from_json)
    )
    notes: tuple[str, ...] = ()
    package_version: str = __version__
    created: str = ""
    schema_version: int = BENCH_SCHEMA_VERSION
    # the model's category set (report colours and legends); absent in older files
    categories: CategorySet | None = field(
        default=None,
        metadata=json_meta(omit_none=True, encode=_categories_to_json, decode=_categories_from_json),
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON object :func:`write_bench` writes (the codec's; :func:`read_bench` reads it back)."""
        data: dict[str, Any] = to_json(self)
        return data


def bench_schema() -> dict[str, Any]:
    """The JSON schema of a benchmark result (draft 2020-12)."""
    return load_schema("bench.schema.json")


def write_bench(result: BenchResult, path: PathLike) -> None:
    """Validate against the schema and write atomically (indented JSON)."""
    write_checked_json(to_json(result), path, "bench.schema.json", "benchmark result", BenchError, indent=1)


def read_bench(path: PathLike) -> BenchResult:
    """Read and validate a benchmark result; :class:`BenchError` names the file and the offending key."""
    data = read_checked_json(path, "bench.schema.json", "benchmark result", BenchError)
    return from_json(BenchResult, data)


# ---------------------------------------------------------------------------------------------------------
# Which rows compare with which (the report's tables and the release gates)


def row_where(r: BenchResult) -> str:
    """The device a row ran on: the GPU's name, or "CPU" (ONNX Runtime and the CPU torch rows)."""
    return r.device_name if r.device == "cuda" else "CPU"


def row_group(r: BenchResult) -> tuple[str, str]:
    """Rows are grouped by model branch and device: each GPU type is its own table with its own baseline."""
    return (r.model, row_where(r))


def baseline_row(rows: Sequence[BenchResult], row: BenchResult) -> BenchResult | None:
    """The torch FP32 row of ``row``'s model on ``row``'s device (the speedup baseline)."""
    for r in rows:
        if row_group(r) == row_group(row) and r.backend == "torch" and r.precision == "fp32":
            return r
    return None
