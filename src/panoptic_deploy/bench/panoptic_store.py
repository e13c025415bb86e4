"""Panoptic maps of every evaluation image as a COCO panoptic set: one PNG per image and ``panoptic.json``.

The torch FP32 reference and every benchmark row keep their per-image panoptic results here instead of
inside the .npz or the benchmark JSON (issue 11, storage that scales: PNGs compress the flat id maps to a few
KB each, and the benchmark JSON stays a summary). The set is a COCO panoptic dataset in its own right
(``panoptic-deploy pq --gt-json``/``--pred-json`` and the COCO panoptic API read it: ``category_id`` is the
dataset id, ``iscrowd`` 0, ``area`` the pixel count); each segment also keeps the model's own entry
(:func:`panoptic_deploy.predict.segments_info`) under ``prediction``, so that reading gives back exactly the
:class:`~panoptic_deploy.bench.results.ImagePanoptic` that was written and every comparison runs on the same
values as before. ``panoptic.json`` is written last (:func:`panoptic_deploy.fileio.atomic_files`): a folder
without it is incomplete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from panoptic_deploy.bench.results import ImagePanoptic
from panoptic_deploy.categories import CategorySet
from panoptic_deploy.errors import BenchError, PanopticFormatError
from panoptic_deploy.fileio import PathLike, atomic_files
from panoptic_deploy.jsonfiles import read_json
from panoptic_deploy.panoptic_format import category_to_dict, read_panoptic_png, save_panoptic_png

PANOPTIC_JSON = "panoptic.json"


def _segment(entry: dict[str, Any], categories: CategorySet) -> dict[str, Any]:
    dataset_id = categories.dataset_id(int(entry["category_id"]), bool(entry["isthing"]))
    return {
        "id": int(entry["id"]),
        "category_id": dataset_id,
        "iscrowd": 0,
        "area": int(entry["area"]),
        "prediction": entry,
    }


def write_panoptic_set(folder: PathLike, images: Sequence[ImagePanoptic], categories: CategorySet) -> Path:
    """Write ``folder/<name>.png`` per image and ``folder/panoptic.json`` (last); returns the JSON's path."""
    out = Path(folder)
    document: dict[str, Any] = {"images": [], "annotations": []}
    with atomic_files() as files:
        for k, image in enumerate(images):
            png = out / f"{image.name}.png"
            save_panoptic_png(files.path(png), image.panoptic_seg, name=png)
            height, width = image.panoptic_seg.shape
            document["images"].append({"id": k, "file_name": png.name, "width": width, "height": height})
            document["annotations"].append(
                {
                    "image_id": k,
                    "file_name": png.name,
                    "segments_info": [_segment(dict(s), categories) for s in image.segments],
                }
            )
        document["categories"] = [category_to_dict(c) for c in categories.categories]
        files.path(out / PANOPTIC_JSON).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return out / PANOPTIC_JSON


def read_panoptic_set(folder: PathLike, names: Sequence[str] | None = None) -> tuple[ImagePanoptic, ...]:
    """The images of a set written by :func:`write_panoptic_set`, in its order; with ``names``, exactly those
    (:class:`BenchError` naming the folder when one is missing)."""
    out = Path(folder)
    path = out / PANOPTIC_JSON
    if not path.is_file():
        raise BenchError(f"{out}: panoptic maps incomplete or missing (no {PANOPTIC_JSON})")
    data = read_json(path, "a panoptic set", BenchError)
    try:
        by_name = {
            Path(a["file_name"]).stem: (a["file_name"], tuple(s["prediction"] for s in a["segments_info"]))
            for a in data["annotations"]
        }
    except (KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise BenchError(f"{path}: not a panoptic set of this package ({problem})") from None
    wanted = list(by_name) if names is None else list(names)
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise BenchError(f"{path}: no panoptic map of image '{missing[0]}'")
    images = []
    for name in wanted:
        file_name, segments = by_name[name]
        try:
            ids = read_panoptic_png(out / file_name)
        except PanopticFormatError as exc:
            raise BenchError(str(exc)) from None
        images.append(ImagePanoptic(name, ids.astype(np.int32), tuple(dict(s) for s in segments)))
    return tuple(images)
