"""Run one benchmark: a :class:`BenchSpec` in, a :class:`~panoptic_deploy.bench.results.BenchResult` out.

The timed unit is the whole pipeline of :class:`panoptic_deploy.predict.Predictor`, stage by stage
(:class:`_Pipeline`): host pre-processing (resize/normalise/pad of the decoded image, plus the copy to the
device), the network (a :mod:`~panoptic_deploy.bench.runners` runner with its own timer) and host
post-processing (panoptic merge at the original size). :func:`run_bench` then reads as the benchmark does:
``warmup`` untimed runs, one untimed accuracy run per image against the torch FP32 reference, timed runs
cycling over the images (batch 1) until at least ``iterations`` ran and ``min_seconds`` passed
(:func:`panoptic_deploy.timing.run_timed`), and the result with :func:`~panoptic_deploy.timing.timing_stats`
per stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptic_deploy.bench.accuracy import ground_truth_pq
from panoptic_deploy.bench.environment import capture_environment
from panoptic_deploy.bench.panoptic_store import write_panoptic_set
from panoptic_deploy.bench.reference import Reference, image_names, read_reference
from panoptic_deploy.bench.results import (
    Accuracy,
    BenchResult,
    BenchSettings,
    ImagePanoptic,
    Latency,
    Memory,
    write_bench,
)
from panoptic_deploy.bench.runners import (
    Runner,
    combo_support,
    default_device,
    ort_runner,
    torch_runner,
    trt_runner,
)
from panoptic_deploy.compare import ErrorAccumulator, as_numpy_outputs, panoptic_agreement
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.host import peak_rss_mb, rss_mb, utc_now
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.predict import segments_info
from panoptic_deploy.preprocess import PreparedImage, prepare_image, read_image
from panoptic_deploy.spec import ModelSpec
from panoptic_deploy.timing import (
    TimingEnvironment,
    TimingError,
    TimingPolicy,
    TimingRun,
    probe_environment,
    run_timed,
    timing_stats,
)
from panoptic_deploy.vocab import COMPILE_MODES, OUTPUT_NAMES, TORCH_BACKENDS


@dataclass(frozen=True)
class BenchSpec:
    """What to benchmark: ``backend`` × ``precision`` of one model, and how.

    ``config``: a :class:`ModelSpec` or a config file (``opts`` its overrides): the pre- and post-processing.
    ``reference``: the torch FP32 reference (:mod:`~panoptic_deploy.bench.reference`). ``images`` default to
    the reference's images and must equal them (names, order). The torch backends need ``weights``; engine
    backends need ``engine`` (``sidecar`` defaults to ``<engine>.json``). ``output``: result JSON, if given.
    ``model``: the name to record (default: the reference's). ``threads``: torch intra-op threads and ONNX
    Runtime intra-op threads. ``gt_json``/``gt_dir``: COCO panoptic ground truth whose annotation file stems
    equal the image stems. ``allow_tf32`` (torch backends on CUDA): None keeps PyTorch's settings (TF32
    convolutions), False gives strict FP32 convolutions and matrix products, True TF32 for both.
    ``compile_mode`` (torch_compile): one of :data:`~panoptic_deploy.vocab.COMPILE_MODES`. ``warmup``,
    ``iterations`` (the minimum count of timed runs), ``min_seconds`` and ``cov_threshold`` default to the
    workflow config schema's ``bench`` defaults (:class:`~panoptic_deploy.timing.TimingPolicy`'s);
    ``max_seconds`` caps the timed phase (None: no cap). ``panoptic_dir``: write every image's panoptic
    result there as COCO panoptic PNG + JSON (:mod:`~panoptic_deploy.bench.panoptic_store`); the result (and
    its JSON) carries only ``example_image``'s (file name or stem; default the first image), the one the
    report draws.
    """

    backend: str
    precision: str
    config: ModelSpec | PathLike
    reference: PathLike
    output: PathLike | None = None
    images: Sequence[PathLike] | None = None
    weights: PathLike | None = None
    engine: PathLike | None = None
    sidecar: PathLike | None = None
    opts: Sequence[str] = ()
    model: str | None = None
    device: str | None = None
    warmup: int = field(default_factory=lambda: TimingPolicy().warmup)
    iterations: int = field(default_factory=lambda: TimingPolicy().min_iterations)
    min_seconds: float = field(default_factory=lambda: TimingPolicy().min_seconds)
    max_seconds: float | None = None
    cov_threshold: float = field(default_factory=lambda: TimingPolicy().cov_threshold)
    threads: int | None = None
    gt_json: PathLike | None = None
    gt_dir: PathLike | None = None
    cuda_graph: bool = False
    allow_tf32: bool | None = None
    compile_mode: str = "default"
    panoptic_dir: PathLike | None = None
    example_image: str | None = None

    @property
    def timing(self) -> TimingPolicy:
        """How the rows are timed (count and time, CoV threshold)."""
        return TimingPolicy(
            warmup=self.warmup,
            min_iterations=self.iterations,
            min_seconds=self.min_seconds,
            max_seconds=self.max_seconds,
            cov_threshold=self.cov_threshold,
        )


def _checked_device(spec: BenchSpec) -> str:
    """The device, after every check that needs no file: a bad request fails before any work."""
    try:
        spec.timing.check()
    except TimingError as exc:
        raise BenchError(str(exc)) from None
    if spec.compile_mode not in COMPILE_MODES:
        raise BenchError(f"compile mode {spec.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
    device = spec.device or default_device(spec.backend)
    ok, reason = combo_support(spec.backend, spec.precision, device)
    if not ok:
        raise BenchError(f"cannot run this benchmark here: {reason}")
    if (spec.gt_json is None) != (spec.gt_dir is None):
        raise BenchError("ground truth needs both gt_json and gt_dir")
    return device


def _evaluation_images(spec: BenchSpec, ref: Reference) -> list[PathLike]:
    """The images to run: the reference's, or the given ones if they are the same (names, order)."""
    ref_names = [r.name for r in ref.images]
    if spec.images is None:
        return [r.path for r in ref.images]
    if image_names(spec.images) != ref_names:
        raise BenchError(
            f"{spec.reference}: reference images {ref_names} differ from the evaluation images "
            f"{image_names(spec.images)}"
        )
    return list(spec.images)


def _open_runner(spec: BenchSpec, model: ModelSpec, device: str) -> Runner:
    if spec.backend in TORCH_BACKENDS:
        return torch_runner(
            spec.backend, spec.precision, device, model, spec.weights, spec.allow_tf32, spec.compile_mode
        )
    if spec.engine is None:
        raise BenchError(f"{spec.backend}: an engine file is needed")
    from panoptic_deploy.engines.sidecar import sidecar_path

    sidecar_file = spec.sidecar or sidecar_path(spec.engine)
    if spec.backend == "onnxruntime":
        return ort_runner(spec.precision, spec.engine, sidecar_file, spec.threads)
    return trt_runner(spec.precision, spec.engine, sidecar_file, spec.cuda_graph)


@dataclass(frozen=True)
class _Run:
    """One image through the pipeline: the network outputs, the panoptic result, and each stage's ms."""

    outputs: Any
    result: PanopticResult
    pre_ms: float
    network_ms: float
    post_ms: float


class _Pipeline:
    """Pre-processing -> network -> post-processing of the decoded evaluation images, timed per stage."""

    def __init__(
        self,
        images: Sequence[PathLike],
        decoded: Sequence[np.ndarray],
        model: ModelSpec,
        runner: Runner,
        ref: Reference,
        reference: PathLike,
    ) -> None:
        self.images = images
        self.decoded = decoded
        self.input_params = model.input_params
        self.inference = model.inference_params
        self.runner = runner
        self.input_hw = ref.input_shape[2:]
        self.buckets = ref.buckets
        self.reference = reference

    def pre(self, k: int) -> tuple[PreparedImage, Any]:
        prepared = prepare_image(self.decoded[k], self.input_params, self.buckets)
        if tuple(prepared.tensor.shape[-2:]) != tuple(self.input_hw):
            raise BenchError(
                f"{self.images[k]}: pads to network input {tuple(prepared.tensor.shape[-2:])}, the reference "
                f"{self.reference} is for {tuple(self.input_hw)}"
            )
        x = self.runner.to_device(prepared.tensor)
        if self.runner.device == "cuda":
            torch.cuda.synchronize()
        return prepared, x

    def post(self, outputs: Any, prepared: PreparedImage) -> PanopticResult:
        with torch.inference_mode():
            return postprocess(_as_mapping(outputs), prepared.image_size, prepared.orig_size, self.inference)

    def __call__(self, k: int) -> _Run:
        """Image ``k`` through pre / network / post."""
        t0 = time.perf_counter()
        prepared, x = self.pre(k)
        pre_ms = (time.perf_counter() - t0) * 1000.0
        outputs, network_ms = self.runner.timed_run(x)
        t1 = time.perf_counter()
        result = self.post(outputs, prepared)
        post_ms = (time.perf_counter() - t1) * 1000.0
        return _Run(outputs, result, pre_ms, network_ms, post_ms)


def _timed_runs(pipeline: _Pipeline, policy: TimingPolicy, count: int) -> tuple[Latency, TimingRun]:
    """Timed runs cycling over the ``count`` images until ``policy`` is met (its warm-up ran already: the
    accuracy runs come between). The loop's samples are the runner's network times; the stages beside."""
    pre: list[float] = []
    post: list[float] = []
    total: list[float] = []

    def step(k: int) -> float:
        run = pipeline(k % count)
        pre.append(run.pre_ms)
        post.append(run.post_ms)
        total.append(run.pre_ms + run.network_ms + run.post_ms)
        return run.network_ms

    timed = run_timed(step, replace(policy, warmup=0))
    threshold = policy.cov_threshold
    latency = Latency(
        timing_stats(timed.samples_ms, threshold),
        timing_stats(pre, threshold),
        timing_stats(post, threshold),
        timing_stats(total, threshold),
    )
    return latency, timed


def run_bench(spec: BenchSpec) -> BenchResult:
    """Benchmark ``spec.backend`` × ``spec.precision`` and write the result to ``spec.output`` (if given)."""
    device = _checked_device(spec)
    ref = read_reference(spec.reference)
    images = _evaluation_images(spec, ref)
    _example_index([r.name for r in ref.images], spec.example_image)  # a bad name fails before any work
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    categories = ref.categories
    model = ModelSpec.of(spec.config, spec.opts)
    model.check_categories(categories)
    decoded = [read_image(p, model.input_params.input_format) for p in images]

    # torch's TF32 switches are process-wide: restore them so that a later benchmark in this process
    # starts from the same settings.
    tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        # Probed first: the load average and clocks the timings below meet, not those after them.
        probed = probe_environment()
        baseline_rss = rss_mb()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runner = _open_runner(spec, model, device)
        pipeline = _Pipeline(images, decoded, model, runner, ref, spec.reference)

        compile_seconds = None
        t_first = time.perf_counter()
        for w in range(spec.warmup):
            pipeline(w % len(images))
            if w == 0 and spec.backend == "torch_compile":
                compile_seconds = round(time.perf_counter() - t_first, 2)

        # Accuracy: one (untimed) run per image.
        acc = ErrorAccumulator(pipeline.inference.inst_thres)
        results: list[ImagePanoptic] = []
        for k, ref_image in enumerate(ref.images):
            run = pipeline(k)
            if ref_image.outputs is not None:  # the reference's fidelity subset kept raw outputs
                acc.add(as_numpy_outputs(run.outputs), ref_image.outputs)
            results.append(
                ImagePanoptic(
                    ref_image.name,
                    run.result.panoptic_seg.astype(np.int32),
                    tuple(segments_info(run.result, categories)),
                )
            )
        if spec.backend == "torch_compile" and compile_seconds is None:
            compile_seconds = round(time.perf_counter() - t_first, 2)

        latency, timed = _timed_runs(pipeline, spec.timing, len(images))
        measured = _Measured(results, acc, latency, timed, compile_seconds, baseline_rss, probed)
        result = _result(spec, device, ref, images, runner, measured)
        if spec.panoptic_dir is not None:
            write_panoptic_set(spec.panoptic_dir, results, categories)
        if spec.output is not None:
            write_bench(result, spec.output)
        return result
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32_saved


@dataclass(frozen=True)
class _Measured:
    """What the runs of one benchmark measured, before it becomes a result."""

    results: Sequence[ImagePanoptic]
    acc: ErrorAccumulator
    latency: Latency
    timed: TimingRun
    compile_seconds: float | None
    baseline_rss: float
    probed: TimingEnvironment  # probed before the runner was loaded


def _result(
    spec: BenchSpec, device: str, ref: Reference, images: Sequence[PathLike], runner: Runner, m: _Measured
) -> BenchResult:
    """The result of the measured runs: agreement with the reference (and ground truth), memory, settings."""
    categories = ref.categories
    ref_names = [r.name for r in ref.images]
    results, acc, latency = m.results, m.acc, m.latency
    agreement = panoptic_agreement(
        [r.pair(categories) for r in results],
        [r.panoptic.pair(categories) for r in ref.images],
        ref_names,
        categories,
    )
    ground_truth = (
        ground_truth_pq(
            spec.gt_json, spec.gt_dir, ref_names, [r.pair(categories) for r in results], categories
        )
        if spec.gt_json is not None and spec.gt_dir is not None
        else None
    )
    gpu_peak = torch.cuda.max_memory_allocated() / 1e6 if device == "cuda" else None
    env = capture_environment(m.probed)
    return BenchResult(
        model=spec.model or ref.model,
        backend=spec.backend,
        precision=spec.precision,
        device=device,
        device_name=env.gpu_name if device == "cuda" and env.gpu_name else env.cpu_name,
        input_shape=ref.input_shape,
        settings=BenchSettings(
            warmup=spec.warmup,
            iterations=spec.iterations,
            threads=spec.threads,
            images=tuple(str(p) for p in images),
            cuda_graph=runner.cuda_graph,
            compile_seconds=m.compile_seconds,
            min_seconds=spec.min_seconds,
            max_seconds=spec.max_seconds,
            timed_seconds=round(m.timed.seconds, 3),
            stopped_by=m.timed.stopped_by,
        ),
        latency=latency,
        throughput_ips=1000.0 / latency.network.mean_ms,
        end_to_end_ips=1000.0 / latency.end_to_end.mean_ms,
        memory=Memory(round(m.baseline_rss, 1), round(peak_rss_mb(), 1), gpu_peak, runner.gpu_engine_mb),
        accuracy=Accuracy(
            reference=Path(spec.reference).name,
            reference_sha256=ref.sha256,
            tensors=acc.result(),
            tensor_images=sum(1 for r in ref.images if r.outputs is not None),
            instances_reference=acc.instances_ref,
            instances_backend=acc.instances_test,
            instances_matched=acc.instances_matched,
            panoptic=agreement,
        ),
        ground_truth=ground_truth,
        engine=runner.engine,
        environment=env,
        panoptic=(results[_example_index(ref_names, spec.example_image)],),
        notes=tuple(runner.notes),
        created=utc_now(),
        categories=categories,
    )


def _example_index(names: Sequence[str], example_image: str | None) -> int:
    """Which image's panoptic result the benchmark file carries: ``example_image``'s (file name or stem),
    else the first."""
    if example_image is None:
        return 0
    stem = Path(example_image).stem
    if stem not in names:
        raise BenchError(f"example image '{example_image}' is not among the evaluation images {list(names)}")
    return list(names).index(stem)


def _as_mapping(outputs: Any) -> Mapping[str, Any]:
    """Network outputs of any runner as a name -> tensor/array mapping for post-processing."""
    if hasattr(outputs, "_asdict"):
        return dict(outputs._asdict())
    if isinstance(outputs, Mapping):
        return outputs
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))
