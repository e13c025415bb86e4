"""Eager PyTorch prediction: image files -> COCO panoptic PNG + segments JSON per image.

:class:`Predictor` is the reference path (host pre- and post-processing); :class:`DevicePredictor` keeps
one input size on the device from the uint8 image to the packed panoptic result (issue 12)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from panoptic_deploy.categories import COCO, CategorySet, load_category_set
from panoptic_deploy.errors import ImageError, OutputError, PanopticDeployError
from panoptic_deploy.fileio import PathLike, atomic_files
from panoptic_deploy.geometry import padded_shape, resized_shape
from panoptic_deploy.modeling import PanopticFCN, build_model
from panoptic_deploy.outputs import output_file, output_folder, refuse_overwriting_inputs
from panoptic_deploy.panoptic_format import (
    ImageInfo,
    PanopticAnnotation,
    SegmentInfo,
    save_panoptic_png,
    write_panoptic_json,
)
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.postprocess_device import PackedLayout, postprocess_on_device, unpack_result
from panoptic_deploy.preprocess import prepare_image, prepare_on_device, read_image
from panoptic_deploy.spec import ModelSpec


class Predictor:
    """Pre-processing + network + host post-processing for one image at a time (batch 1, as official).

    ``categories``: the model's category set (default COCO), for dataset ids in the outputs."""

    def __init__(
        self, model: PanopticFCN, device: str | torch.device = "cpu", categories: CategorySet = COCO
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.categories = categories

    @classmethod
    def from_files(
        cls,
        config: str | os.PathLike[str],
        weights: str | os.PathLike[str],
        opts: Sequence[str] = (),
        device: str | torch.device = "cpu",
        categories: CategorySet = COCO,
    ) -> Predictor:
        """Build the model of ``config`` and load ``weights`` strictly (:mod:`panoptic_deploy.checkpoint`);
        the config's head sizes must fit ``categories``."""
        return cls(load_model(config, weights, opts, device, categories), device, categories)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> PanopticResult:
        """H×W×3 uint8 in the model's channel order (``INPUT.FORMAT``) -> result at the image's size."""
        prepared = prepare_image(image, self.model.input_params)
        outputs = self.model(prepared.tensor.to(self.device))
        return postprocess(outputs, prepared.image_size, prepared.orig_size, self.model.inference)

    def predict_file(self, path: str | os.PathLike[str]) -> PanopticResult:
        return self(read_image(path, self.model.input_params.input_format))


class DevicePredictor:
    """Device pre-processing -> network -> device post-processing for images of one size (``orig_size``,
    (h, w) as decoded; ``input_hw``: the network input, default its padded size), batch 1: the uint8 image
    goes to ``device`` once and one packed int32 tensor comes back. :meth:`run_device` has fixed shapes and
    no host synchronisation, so on a GPU :meth:`capture` records it as one CUDA graph. The result equals
    :class:`Predictor`'s up to the resampling of the pre-processing (docs/pipeline.md, "Device pre- and
    post-processing")."""

    def __init__(
        self,
        model: PanopticFCN,
        orig_size: tuple[int, int],
        device: str | torch.device = "cpu",
        input_hw: Sequence[int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.orig_size = (int(orig_size[0]), int(orig_size[1]))
        params = model.input_params
        self.image_size = resized_shape(*self.orig_size, params.min_size, params.max_size)
        # The network input: the padded size, or a static size that holds it (a size bucket, an engine's).
        padded = padded_shape(*self.image_size, params.size_divisibility)
        self.input_hw = padded if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        self._layout: PackedLayout | None = None

    @property
    def layout(self) -> PackedLayout:
        """The packed result's layout (known after the first run: the network's instance slots)."""
        if self._layout is None:
            raise RuntimeError("DevicePredictor.layout: run the predictor once first")
        return self._layout

    def check_image(self, image: np.ndarray | torch.Tensor) -> None:
        """:class:`ImageError` unless ``image`` is H×W×3 uint8 of this predictor's size."""
        if tuple(image.shape[:2]) != self.orig_size:
            raise ImageError(
                f"image of {image.shape[0]}x{image.shape[1]} (H x W): this predictor is built for "
                f"{self.orig_size[0]}x{self.orig_size[1]}"
            )

    @torch.no_grad()
    def run_device(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """H×W×3 uint8 (host or device) -> the packed result on the device (:mod:`postprocess_device`)."""
        prepared = prepare_on_device(image, self.model.input_params, self.device, self.input_hw)
        outputs = self.model(prepared)
        if self._layout is None:
            slots, stuff = outputs.inst_scores.shape[0], outputs.stuff_probs.shape[0]
            self._layout = PackedLayout(self.orig_size, slots, stuff)
        return postprocess_on_device(outputs, self.image_size, self.orig_size, self.model.inference)

    def __call__(self, image: np.ndarray) -> PanopticResult:
        """H×W×3 uint8 in the model's channel order -> result at the image's size (one copy to the host)."""
        self.check_image(image)
        packed = self.run_device(image).cpu()
        return unpack_result(packed, self.layout)

    def capture(self, warmup: int = 3) -> CapturedPredictor:
        """The whole :meth:`run_device` as one CUDA graph (CUDA devices only), after ``warmup`` eager runs
        on a side stream (cuDNN picks its kernels and the lazy constants are made before capture)."""
        if self.device.type != "cuda":
            raise RuntimeError(f"DevicePredictor.capture needs a CUDA device, not {self.device}")
        static_input = torch.zeros((*self.orig_size, 3), dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # untyped in torch 2.13
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self.run_device(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self.run_device(static_input)
        return CapturedPredictor(self, graph, static_input, static_output)


@dataclass
class CapturedPredictor:
    """A :class:`DevicePredictor` captured as one CUDA graph: copy the image in, replay, one copy out."""

    predictor: DevicePredictor
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor
    host_output: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.host_output = torch.empty_like(self.static_output, device="cpu").pin_memory()

    def run(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Replay on ``image``: -> the packed result in pinned host memory (synchronised)."""
        self.predictor.check_image(image)
        pixels = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        self.static_input.copy_(pixels)
        self.graph.replay()
        self.host_output.copy_(self.static_output, non_blocking=True)
        torch.cuda.current_stream(self.static_output.device).synchronize()
        return self.host_output

    def __call__(self, image: np.ndarray) -> PanopticResult:
        return unpack_result(self.run(image), self.predictor.layout)


def load_model(
    config: ModelSpec | PathLike,
    weights: PathLike,
    opts: Sequence[str] = (),
    device: str | torch.device = "cpu",
    categories: CategorySet | None = None,
) -> PanopticFCN:
    """Eval-mode model of ``config`` (a :class:`ModelSpec`, or a config file with ``opts``) with ``weights``
    loaded strictly, on ``device``. With ``categories``, the config's head sizes must fit them (one-line
    error otherwise)."""
    from panoptic_deploy.checkpoint import load_weights

    spec = ModelSpec.of(config, opts)
    if categories is not None:
        spec.check_categories(categories)
    model = build_model(spec.cfg)
    load_weights(model, weights)
    return model.to(device).eval()


def segments_info(result: PanopticResult, categories: CategorySet = COCO) -> list[dict[str, Any]]:
    """``segments_info`` entries: id, category_id (contiguous, as the network predicts it),
    dataset_category_id (the id in ``categories``), isthing, score (things; None for stuff), area,
    instance_id (things). With COCO's set, ``coco_category_id`` (the same id) is kept for older readers."""
    out = []
    for seg in result.segments:
        dataset_id = categories.dataset_id(seg.category_id, seg.isthing)
        entry: dict[str, Any] = {
            "id": seg.id,
            "category_id": seg.category_id,
            "dataset_category_id": dataset_id,
        }
        if categories.is_coco:
            entry["coco_category_id"] = dataset_id
        entry.update(isthing=seg.isthing, score=seg.score, area=seg.area, instance_id=seg.instance_id)
        out.append(entry)
    return out


def write_prediction(
    result: PanopticResult, output_dir: str | os.PathLike[str], name: str, categories: CategorySet = COCO
) -> None:
    """Write ``NAME.png`` (segment id = R + 256 G + 65536 B) and ``NAME.json`` into ``output_dir``.

    The two are one atomic set (:func:`panoptic_deploy.fileio.atomic_files`) whose completion marker is the
    JSON: it is renamed into place last, so a ``NAME.json`` always describes the ``NAME.png`` beside it, and a
    PNG without its JSON is an incomplete prediction.
    """
    png, json_path = prediction_paths(output_dir, name)
    document = {
        "file_name": f"{name}.png",
        "height": int(result.panoptic_seg.shape[0]),
        "width": int(result.panoptic_seg.shape[1]),
        "segments_info": segments_info(result, categories),
    }
    with atomic_files() as files:
        save_panoptic_png(files.path(png), result.panoptic_seg, name=png)
        files.path(json_path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def prediction_paths(output_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The two files :func:`write_prediction` writes for ``name``: ``NAME.png`` and ``NAME.json``."""
    out = Path(output_dir)
    return out / f"{name}.png", out / f"{name}.json"


def _failure(path: str | os.PathLike[str], exc: Exception) -> str:
    """One line naming the image: the package's errors as they are (with the path if they lack it), anything
    else with its type."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, PanopticDeployError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if text.startswith(str(path)) else f"{path}: {text}"


def predict_files(
    config: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    opts: Sequence[str] = (),
    threads: int | None = None,
    progress: bool = True,
    categories: CategorySet | str | os.PathLike[str] | None = None,
    coco_json: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Predict every image; returns one line per image that failed, naming it (the others are still written).

    ``categories``: the model's category set (a :class:`CategorySet`, ``"coco"``/None or a JSON file, see
    :func:`categories.load_category_set`). ``coco_json``: also write one COCO panoptic predictions file
    for all written images (``image_id`` and PNG ``file_name`` from the image's name, dataset category ids)
    that ``panoptic-deploy pq --pred-json FILE --pred-dir OUTPUT_DIR`` reads.

    Before anything is read or written: :class:`OutputError` if ``output_dir`` is not a folder, ``coco_json``
    is a folder, or an output would overwrite an input (an image, the config, the weights, the category file)
    or another output; :class:`ImageError` if two images share a name. Whatever one image raises (an
    undecodable or oversized file, an impossible aspect ratio, a bug) is caught, reported and the batch goes
    on; only an interrupt stops it.
    """
    cats = categories if isinstance(categories, CategorySet) else load_category_set(categories)
    names = [Path(p).stem for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImageError(f"several input images share the name {duplicates[0]!r}; outputs would collide")
    outputs = [path for name in names for path in prediction_paths(output_dir, name)]
    output_folder(output_dir, "--output")
    category_file = None if isinstance(categories, CategorySet) else categories  # a path, "coco" or None
    inputs = [*images, config, weights, category_file]
    if coco_json is not None:
        output_file(coco_json, "--coco-json")
        if Path(coco_json).resolve() in {p.resolve() for p in outputs}:
            raise OutputError(
                f"--coco-json {coco_json}: is also the JSON of a predicted image; choose another path"
            )
        outputs.append(Path(coco_json))
    refuse_overwriting_inputs(outputs, inputs)
    if threads is not None:
        torch.set_num_threads(threads)
    predictor = Predictor.from_files(config, weights, opts, categories=cats)
    failures: list[str] = []
    annotations: list[PanopticAnnotation] = []
    image_infos: list[ImageInfo] = []
    for path, name in tqdm(
        list(zip(images, names, strict=True)),
        desc="predict",
        unit="img",
        disable=not progress or len(images) < 2,
    ):
        try:
            result = predictor.predict_file(path)
            write_prediction(result, output_dir, name, cats)
        except Exception as exc:  # one bad image never stops the batch
            failures.append(_failure(path, exc))
            continue
        if coco_json is not None:
            segments = tuple(
                SegmentInfo(s["id"], s["dataset_category_id"], area=s["area"])
                for s in segments_info(result, cats)
            )
            annotations.append(PanopticAnnotation(name, f"{name}.png", segments))
            height, width = (int(v) for v in result.panoptic_seg.shape)
            image_infos.append(ImageInfo(name, Path(path).name, width, height))
    if coco_json is not None:
        write_panoptic_json(coco_json, annotations, cats.categories, image_infos)
    return failures
