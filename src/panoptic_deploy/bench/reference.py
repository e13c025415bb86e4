"""The torch FP32 reference: every benchmark's accuracy is measured against it.

:func:`write_reference` runs the eager model on CPU once per model over the evaluation images. It stores the
panoptic result of every image as a COCO panoptic set beside the .npz (:func:`reference_panoptic_dir`,
:mod:`~panoptic_deploy.bench.panoptic_store`) and the seven raw network outputs (about 10 MB per image at
the demo's size) of the first ``fidelity_images`` images only, in the .npz: storage that scales to a large
evaluation set. :func:`read_reference` loads both for the benchmarks, which check that they run on the same
images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from panoptic_deploy import __version__
from panoptic_deploy.bench.results import ImagePanoptic
from panoptic_deploy.categories import COCO, CategorySet
from panoptic_deploy.compare import as_numpy_outputs
from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike, atomic_path, file_sha256
from panoptic_deploy.geometry import Size
from panoptic_deploy.preprocess import prepare_at_size
from panoptic_deploy.spec import ModelSpec
from panoptic_deploy.vocab import OUTPUT_NAMES

# How many images keep their raw outputs unless told: the config schema's default (defaults.py).
FIDELITY_IMAGES: int | None = schema_default("evaluation", "fidelity_images")
REFERENCE_FORMAT_VERSION = 2  # 2: raw outputs of a fidelity subset; panoptic maps as COCO panoptic


@dataclass(frozen=True)
class ReferenceImage:
    """Torch FP32 outputs of one evaluation image."""

    name: str
    path: str
    image_size: tuple[int, int]  # resized, before padding
    orig_size: tuple[int, int]
    outputs: dict[str, NDArray[Any]] | None  # None outside the fidelity subset (raw outputs not kept)
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

    @property
    def buckets(self) -> tuple[Size, ...] | None:
        """The size buckets its images were padded into (meta "buckets"), None for per-size padding."""
        buckets = self.meta.get("buckets")
        return None if buckets is None else tuple((int(h), int(w)) for h, w in buckets)


def reference_panoptic_dir(reference: PathLike) -> Path:
    """The folder of the reference's panoptic maps: ``<name>.panoptic/`` beside ``<name>.npz``."""
    path = Path(reference)
    return path.with_name(f"{path.stem}.panoptic")


def image_names(images: Sequence[PathLike]) -> list[str]:
    """File stems of ``images``: the names pairing an evaluation image with its reference and ground truth."""
    names = [Path(p).stem for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BenchError(f"several evaluation images are named {duplicates[0]!r}; names must be unique")
    return names


def write_reference(
    config: ModelSpec | PathLike,
    weights: PathLike,
    images: Sequence[PathLike],
    output: PathLike,
    input_hw: Sequence[int],
    opts: Sequence[str] = (),
    *,
    model_name: str | None = None,
    threads: int | None = None,
    categories: CategorySet = COCO,
    buckets: Sequence[Size] | None = None,
    fidelity_images: int | None = FIDELITY_IMAGES,
) -> Reference:
    """Run torch FP32 on CPU over ``images`` (all must pad to ``input_hw``; with ``buckets``, each into the
    smallest bucket holding it, which must be ``input_hw``) and write ``output`` (.npz) with the panoptic maps
    in :func:`reference_panoptic_dir` (written first; the .npz is the marker).

    The .npz holds ``img{i}.<output name>`` (the seven network outputs) for the first ``fidelity_images``
    images (default: the config schema's ``evaluation.fidelity_images``; None: every image) and
    ``meta`` (JSON: model name, input shape, image names and paths, sizes, versions, the model's category set,
    how many images kept their raw outputs). ``model_name`` defaults to the file stem. The config's head sizes
    must fit ``categories``; the benchmarks take them from here. ``config``: a :class:`ModelSpec` or a config
    file (then ``opts`` are its overrides).
    """
    from panoptic_deploy.bench.panoptic_store import write_panoptic_set
    from panoptic_deploy.postprocess import postprocess
    from panoptic_deploy.predict import load_model, segments_info

    if not images:
        raise BenchError(f"{output}: no evaluation images")
    names = image_names(images)
    raw_count = _raw_count(fidelity_images, len(images))
    spec = ModelSpec.of(config, opts)
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_model(spec, weights, device="cpu", categories=categories)
    height, width = (int(v) for v in input_hw)
    arrays: dict[str, NDArray[Any]] = {}
    entries = []
    panoptic = []
    with torch.no_grad():
        for i, (path, name) in enumerate(zip(images, names, strict=True)):
            prepared = prepare_at_size(path, model.input_params, (height, width), buckets)
            outputs = model(prepared.tensor)
            result = postprocess(outputs, prepared.image_size, prepared.orig_size, model.inference)
            if i < raw_count:
                for key, value in as_numpy_outputs(outputs).items():
                    arrays[f"img{i}.{key}"] = value
            segments = tuple(segments_info(result, categories))
            panoptic.append(ImagePanoptic(name, result.panoptic_seg.astype(np.int32), segments))
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
        "config": str(spec.config),
        "opts": list(spec.opts),
        "input_shape": [1, 3, height, width],
        "buckets": None if buckets is None else [[int(h), int(w)] for h, w in buckets],
        "images": entries,
        "raw_output_images": raw_count,
        "categories": categories.to_json(),
        "category_source": categories.source,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    write_panoptic_set(reference_panoptic_dir(output), panoptic, categories)
    with atomic_path(output) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return read_reference(output)


def _raw_count(fidelity_images: int | None, count: int) -> int:
    """How many of ``count`` images keep their raw outputs (None: all)."""
    if fidelity_images is None:
        return count
    if fidelity_images < 1:
        raise BenchError(f"fidelity_images must be >= 1 or None (every image), got {fidelity_images}")
    return min(int(fidelity_images), count)


def read_reference(path: PathLike) -> Reference:
    """Load a file written by :func:`write_reference` (and its panoptic maps beside it); :class:`BenchError`
    names the file and the problem."""
    from panoptic_deploy.bench.panoptic_store import read_panoptic_set

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: reference file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format_version") != REFERENCE_FORMAT_VERSION:
                raise BenchError(
                    f"{path}: reference format {meta.get('format_version')!r} is not supported "
                    f"(this package writes {REFERENCE_FORMAT_VERSION}; run the reference again)"
                )
            raw_count = int(meta["raw_output_images"])
            outputs = [
                {name: np.asarray(data[f"img{i}.{name}"]) for name in OUTPUT_NAMES} if i < raw_count else None
                for i in range(len(meta["images"]))
            ]
    except BenchError:
        raise
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not a valid reference file ({type(exc).__name__}: {exc})") from exc
    panoptic = read_panoptic_set(reference_panoptic_dir(path), [entry["name"] for entry in meta["images"]])
    images = [
        ReferenceImage(
            entry["name"],
            entry["path"],
            (int(entry["image_size"][0]), int(entry["image_size"][1])),
            (int(entry["orig_size"][0]), int(entry["orig_size"][1])),
            raw,
            pan,
        )
        for entry, raw, pan in zip(meta["images"], outputs, panoptic, strict=True)
    ]
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
