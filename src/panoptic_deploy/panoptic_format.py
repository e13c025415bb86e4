"""COCO panoptic format: PNG id maps (``id = R + 256 G + 65536 B``) and their JSON annotations.

A COCO panoptic JSON has ``images``, ``annotations`` and ``categories``; each annotation names its PNG
through ``file_name`` and lists ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ``area``, ...).
A prediction JSON may be in results form: only ``annotations`` (or a bare list of them), segments with just
``id`` and ``category_id``; categories then come from the ground truth. Pixels with id 0 are VOID.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from panoptic_deploy.categories import CATEGORY_BY_ID, COCO, Category, CategorySet
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.fileio import atomic_path, write_text_atomic
from panoptic_deploy.jsonfiles import read_json

VOID = 0
MAX_SEGMENT_ID = 256**3 - 1  # the largest id three 8-bit channels can hold

ImageId = int | str


@dataclass(frozen=True)
class SegmentInfo:
    """One entry of ``segments_info``.

    ``category_id`` is a COCO category id. ``area`` is the JSON's value when it has one (the COCO
    panoptic API takes ground-truth areas from the JSON), else None (then the PNG's pixel count is used).
    """

    id: int
    category_id: int
    iscrowd: bool = False
    area: int | None = None


@dataclass(frozen=True)
class PanopticAnnotation:
    """One image's annotation: its PNG ``file_name`` and its segments."""

    image_id: ImageId
    file_name: str
    segments_info: tuple[SegmentInfo, ...]

    def describe(self) -> str:
        """How error messages name this image."""
        return f"image {self.image_id!r} ({self.file_name})"


@dataclass(frozen=True)
class ImageInfo:
    """One entry of ``images`` (kept for round trips; the evaluation does not need it)."""

    id: ImageId
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class PanopticJson:
    """A loaded COCO panoptic JSON. ``categories`` is None for a results-form file without them."""

    annotations: tuple[PanopticAnnotation, ...]
    categories: tuple[Category, ...] | None
    images: tuple[ImageInfo, ...] = ()


# ---------------------------------------------------------------------------------------------------------
# PNG <-> id map


def rgb_to_id(rgb: NDArray[np.integer[Any]]) -> NDArray[np.uint32]:
    """(H, W, 3) colours -> (H, W) uint32 segment ids ``R + 256 G + 65536 B``."""
    c: NDArray[np.uint32] = rgb.astype(np.uint32, copy=False)
    ids: NDArray[np.uint32] = c[..., 0] | (c[..., 1] << np.uint32(8)) | (c[..., 2] << np.uint32(16))
    return ids


def id_to_rgb(id_map: NDArray[np.integer[Any]]) -> NDArray[np.uint8]:
    """(H, W) segment ids in 0..2^24-1 -> (H, W, 3) uint8 colours."""
    ids = id_map.astype(np.uint32, copy=False)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids & 0xFF
    rgb[..., 1] = (ids >> 8) & 0xFF
    rgb[..., 2] = (ids >> 16) & 0xFF
    return rgb


def read_panoptic_png(path: str | os.PathLike[str]) -> NDArray[np.uint32]:
    """Read a panoptic PNG as an (H, W) uint32 id map.

    RGB (and RGBA, alpha ignored) decode as ``R + 256 G + 65536 B``; single-channel images (L, I, I;16, P)
    are taken as ids directly, as the COCO panoptic API does.
    """
    p = Path(path)
    if not p.is_file():
        raise PanopticFormatError(f"{p}: PNG not found")
    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise PanopticFormatError(f"{p}: cannot decode PNG ({exc})") from None
    if mode in ("RGB", "RGBA"):
        return rgb_to_id(arr[..., :3])
    if mode in ("L", "P", "I", "I;16"):
        return arr.astype(np.uint32)
    raise PanopticFormatError(f"{p}: unsupported PNG mode {mode!r} (expected RGB)")


def write_panoptic_png(path: str | os.PathLike[str], id_map: NDArray[np.integer[Any]]) -> None:
    """Write an (H, W) id map as an RGB panoptic PNG, atomically."""
    with atomic_path(path) as tmp:
        save_panoptic_png(tmp, id_map, name=path)


def save_panoptic_png(
    file: str | os.PathLike[str],
    id_map: NDArray[np.integer[Any]],
    name: str | os.PathLike[str] | None = None,
) -> None:
    """Write an (H, W) id map as an RGB panoptic PNG to exactly ``file`` (a temporary path of an atomic write;
    :func:`write_panoptic_png` for a final path). ``name``: the path errors name (default ``file``)."""
    where = file if name is None else name
    if id_map.ndim != 2:
        raise PanopticFormatError(f"{where}: id map must be 2-D (H, W), got shape {id_map.shape}")
    if id_map.size and (int(id_map.min()) < 0 or int(id_map.max()) > MAX_SEGMENT_ID):
        lo, hi = int(id_map.min()), int(id_map.max())
        raise PanopticFormatError(f"{where}: segment ids must lie in 0..{MAX_SEGMENT_ID}, got {lo}..{hi}")
    Image.fromarray(id_to_rgb(id_map), mode="RGB").save(file, format="PNG")


# ---------------------------------------------------------------------------------------------------------
# JSON


def _int_field(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    if key not in obj:
        if default is not None:
            return default
        raise PanopticFormatError(f"{where}: missing key {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise PanopticFormatError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _parse_segment(obj: Any, where: str) -> SegmentInfo:
    if not isinstance(obj, dict):
        raise PanopticFormatError(f"{where}: must be an object, got {type(obj).__name__}")
    iscrowd = _int_field(obj, "iscrowd", where, default=0)
    if iscrowd not in (0, 1):
        raise PanopticFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd}")
    area = _int_field(obj, "area", where) if "area" in obj else None
    return SegmentInfo(
        id=_int_field(obj, "id", where),
        category_id=_int_field(obj, "category_id", where),
        iscrowd=bool(iscrowd),
        area=area,
    )


def _parse_annotation(obj: Any, where: str) -> PanopticAnnotation:
    if not isinstance(obj, dict):
        raise PanopticFormatError(f"{where}: must be an object, got {type(obj).__name__}")
    for key in ("image_id", "file_name", "segments_info"):
        if key not in obj:
            raise PanopticFormatError(f"{where}: missing key {key!r}")
    image_id = obj["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int | str):
        raise PanopticFormatError(f"{where}: 'image_id' must be an integer or string, got {image_id!r}")
    file_name = obj["file_name"]
    if not isinstance(file_name, str) or not file_name:
        raise PanopticFormatError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
    segs = obj["segments_info"]
    if not isinstance(segs, list):
        raise PanopticFormatError(f"{where}: 'segments_info' must be a list")
    where = f"{where} (image {image_id!r})"
    segments = tuple(_parse_segment(s, f"{where} segments_info[{j}]") for j, s in enumerate(segs))
    return PanopticAnnotation(image_id=image_id, file_name=file_name, segments_info=segments)


def _parse_category(obj: Any, where: str) -> Category:
    if not isinstance(obj, dict):
        raise PanopticFormatError(f"{where}: must be an object, got {type(obj).__name__}")
    cat_id = _int_field(obj, "id", where)
    isthing = _int_field(obj, "isthing", where)
    if isthing not in (0, 1):
        raise PanopticFormatError(f"{where}: 'isthing' must be 0 or 1, got {isthing}")
    name = obj.get("name", str(cat_id))
    color_raw = obj.get("color")
    if isinstance(color_raw, list) and len(color_raw) == 3 and all(isinstance(v, int) for v in color_raw):
        color = (int(color_raw[0]), int(color_raw[1]), int(color_raw[2]))
    elif cat_id in CATEGORY_BY_ID:
        color = CATEGORY_BY_ID[cat_id].color
    else:
        color = (0, 0, 0)
    return Category(id=cat_id, name=str(name), isthing=bool(isthing), color=color)


def parse_categories(data: Any, source: str) -> tuple[Category, ...]:
    """Validate a decoded COCO panoptic ``categories`` list (``source`` names it in messages)."""
    if not isinstance(data, list):
        raise PanopticFormatError(f"{source}: 'categories' must be a list")
    categories = tuple(_parse_category(c, f"{source}: categories[{i}]") for i, c in enumerate(data))
    seen: set[int] = set()
    for c in categories:
        if c.id in seen:
            raise PanopticFormatError(f"{source}: category id {c.id} listed twice")
        seen.add(c.id)
    return categories


def _parse_image(obj: Any, where: str) -> ImageInfo:
    if not isinstance(obj, dict):
        raise PanopticFormatError(f"{where}: must be an object, got {type(obj).__name__}")
    if "id" not in obj:
        raise PanopticFormatError(f"{where}: missing key 'id'")
    return ImageInfo(
        id=obj["id"],
        file_name=str(obj.get("file_name", "")),
        width=_int_field(obj, "width", where, default=0),
        height=_int_field(obj, "height", where, default=0),
    )


def parse_panoptic_json(data: Any, source: str, *, require_categories: bool) -> PanopticJson:
    """Validate decoded JSON ``data`` (from ``source``, for messages) into a :class:`PanopticJson`.

    Accepts the full COCO form, the results form (only ``annotations``) and a bare list of annotations.
    Duplicate ``image_id``s, duplicate segment ids, segment id 0 (VOID) and duplicate category ids are errors.
    """
    if isinstance(data, list):
        data = {"annotations": data}
    if not isinstance(data, dict):
        raise PanopticFormatError(f"{source}: top level must be an object or a list of annotations")
    if "annotations" not in data or not isinstance(data["annotations"], list):
        raise PanopticFormatError(f"{source}: missing list 'annotations'")
    annotations = tuple(
        _parse_annotation(a, f"{source}: annotations[{i}]") for i, a in enumerate(data["annotations"])
    )
    seen_images: set[ImageId] = set()
    for ann in annotations:
        if ann.image_id in seen_images:
            raise PanopticFormatError(f"{source}: image_id {ann.image_id!r} has more than one annotation")
        seen_images.add(ann.image_id)
        seen_ids: set[int] = set()
        for seg in ann.segments_info:
            if seg.id == VOID:
                raise PanopticFormatError(f"{source}: {ann.describe()}: segment id 0 is reserved for VOID")
            if seg.id < 0 or seg.id > MAX_SEGMENT_ID:
                raise PanopticFormatError(f"{source}: {ann.describe()}: segment id {seg.id} out of range")
            if seg.id in seen_ids:
                raise PanopticFormatError(f"{source}: {ann.describe()}: segment id {seg.id} listed twice")
            seen_ids.add(seg.id)

    categories: tuple[Category, ...] | None = None
    if "categories" in data:
        categories = parse_categories(data["categories"], source)
    elif require_categories:
        raise PanopticFormatError(f"{source}: missing list 'categories'")

    images: tuple[ImageInfo, ...] = ()
    if isinstance(data.get("images"), list):
        images = tuple(_parse_image(im, f"{source}: images[{i}]") for i, im in enumerate(data["images"]))
    return PanopticJson(annotations=annotations, categories=categories, images=images)


def load_panoptic_json(path: str | os.PathLike[str], *, require_categories: bool = False) -> PanopticJson:
    """Read and validate a COCO panoptic JSON file (ground truth: ``require_categories=True``)."""
    p = Path(path)
    if not p.is_file():
        raise PanopticFormatError(f"{p}: JSON file not found")
    data = read_json(p, "a COCO panoptic JSON", PanopticFormatError)
    return parse_panoptic_json(data, str(p), require_categories=require_categories)


def segment_to_dict(seg: SegmentInfo) -> dict[str, Any]:
    """JSON object of a segment (``area`` only when known)."""
    out: dict[str, Any] = {"id": seg.id, "category_id": seg.category_id, "iscrowd": int(seg.iscrowd)}
    if seg.area is not None:
        out["area"] = seg.area
    return out


def annotation_to_dict(ann: PanopticAnnotation) -> dict[str, Any]:
    """JSON object of an annotation."""
    return {
        "image_id": ann.image_id,
        "file_name": ann.file_name,
        "segments_info": [segment_to_dict(s) for s in ann.segments_info],
    }


def category_to_dict(cat: Category) -> dict[str, Any]:
    """JSON object of a category (COCO panoptic ``categories`` entry)."""
    return {"id": cat.id, "name": cat.name, "isthing": int(cat.isthing), "color": list(cat.color)}


def write_panoptic_json(
    path: str | os.PathLike[str],
    annotations: Iterable[PanopticAnnotation],
    categories: Iterable[Category] | None = None,
    images: Iterable[ImageInfo] | None = None,
) -> None:
    """Write a COCO panoptic JSON atomically (results form when ``categories`` and ``images`` are None)."""
    data: dict[str, Any] = {}
    if images is not None:
        data["images"] = [
            {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height} for im in images
        ]
    data["annotations"] = [annotation_to_dict(a) for a in annotations]
    if categories is not None:
        data["categories"] = [category_to_dict(c) for c in categories]
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def segments_from_model_output(
    segments: Sequence[Mapping[str, Any]], categories: CategorySet | None = None
) -> tuple[SegmentInfo, ...]:
    """The model's ``panoptic_seg`` segment dicts (contiguous ``category_id`` + ``isthing``) -> dataset ids
    of ``categories`` (default COCO).

    Areas are dropped: for predictions the evaluation always counts pixels in the id map.
    """
    cats = COCO if categories is None else categories
    out = []
    for j, seg in enumerate(segments):
        try:
            seg_id, cat, isthing = int(seg["id"]), int(seg["category_id"]), bool(seg["isthing"])
        except KeyError as exc:
            raise PanopticFormatError(f"segments[{j}]: missing key {exc}") from None
        try:
            dataset_id = cats.dataset_id(cat, isthing)
        except PanopticFormatError as exc:
            raise PanopticFormatError(f"segments[{j}] (id {seg_id}): {exc}") from None
        out.append(SegmentInfo(id=seg_id, category_id=dataset_id))
    return tuple(out)
