"""Generated panoptic scenes in COCO panoptic layout (``panoptic-deploy make-dataset``).

Layout of ``DIR`` (what :func:`make_dataset` writes)::

    DIR/images/NNNNN.png       the scene, RGB (``--image-format jpg``: NNNNN.jpg, quality 95)
    DIR/panoptic/NNNNN.png     its ground truth, segment id = R + 256 G + 65536 B (panoptic_format.py)
    DIR/panoptic.json          COCO panoptic JSON: ``info``, ``images``, ``annotations``, ``categories``

``images[i]`` is ``{"id": i, "file_name": "NNNNN.png", "width", "height"}`` (``NNNNN`` = ``i`` with 5
digits); ``annotations[i]`` has ``image_id`` ``i``, ``file_name`` (the panoptic PNG's name) and
``segments_info`` entries ``{"id", "category_id", "iscrowd": 0, "bbox": [x, y, w, h], "area"}``. Every
pixel belongs to exactly one segment (there is no VOID); stuff segments come first (one per stuff
category present), then things in drawing order (bottom first). Segment ids are 1, 2, ... per image.

Categories (:data:`SCENE_CATEGORIES`; dataset ids are deliberately not contiguous):

* things, ids 1..6: circle, triangle, square, star, ring, cross. Every instance has a random colour and
  surface pattern (flat, gradient, stripes, checks, spots, optional dark outline), so only the outline
  gives the class. Circumradius 4 px (diameter 8) up to a quarter of the shorter side (diameter half of
  it); rings and stars start larger so that they stay recognisable. About a third of the instances are
  placed next to an instance of the same class so that they touch or overlap; later instances occlude
  earlier ones. An instance left with fewer than :data:`MIN_THING_AREA` visible pixels is removed
  (not drawn at all).
* stuff, ids 11..14: sky, grass, water, sand: regions of thresholded multi-octave value noise (sky
  biased to the top), each with its own texture (clouds, vertical blades, horizontal waves, speckle);
  base colours overlap between classes, and one region in four gets a random colour. A stuff category
  with fewer than :data:`MIN_STUFF_AREA` pixels left visible is merged into the largest stuff region.

Then lighting (a gain ramp in a random direction, a low-frequency gain field, a colour cast), an optional
3x3 blur and per-pixel noise apply to the whole image.

Determinism: scene ``i`` of seed ``N`` is drawn from ``numpy.random.Generator(PCG64(SeedSequence([N,
i])))`` only, so it does not depend on ``--count`` (the first K scenes of a larger set are the same).
All geometry and colour arithmetic is integer numpy (sines come from a table rounded to 1/16384);
shapes are rasterised by PIL's polygon/ellipse drawing with integer coordinates. So the pixel arrays are
the same on every machine for a given Pillow version; the *file bytes* also depend on the encoders
bundled with the Pillow wheel (zlib for PNG, libjpeg-turbo for JPEG): with the same Pillow build they
are byte-identical, which the tests check (SHA-256 of every file).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from panoptic_deploy.dataset.scenes import (
    DEFAULT_SIZE,
    GENERATOR_VERSION,
    IMAGE_FORMATS,
    MIN_STUFF_AREA,
    MIN_THING_AREA,
    SCENE_CATEGORIES,
    STUFF_IDS,
    STUFF_NAMES,
    THING_IDS,
    THING_NAMES,
    Scene,
    generate_scene,
    scene_category_set,
)
from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import atomic_path, write_text_atomic
from panoptic_deploy.panoptic_format import write_panoptic_png

__all__ = [
    "DEFAULT_SIZE",
    "GENERATOR_VERSION",
    "IMAGE_FORMATS",
    "MIN_STUFF_AREA",
    "MIN_THING_AREA",
    "SCENE_CATEGORIES",
    "STUFF_IDS",
    "STUFF_NAMES",
    "THING_IDS",
    "THING_NAMES",
    "DatasetError",
    "DatasetSummary",
    "Scene",
    "generate_scene",
    "make_dataset",
    "parse_size",
    "scene_category_set",
]


class DatasetError(PanopticDeployError):
    """Bad ``make-dataset`` arguments or an output folder that cannot be used."""


# ---------------------------------------------------------------------------------------------------------
# The dataset on disk


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W); each side 64..4096."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise DatasetError(f"--size {text!r}: expected HxW, e.g. 256x320")
    h, w = int(m.group(1)), int(m.group(2))
    if not (64 <= h <= 4096 and 64 <= w <= 4096):
        raise DatasetError(f"--size {text!r}: each side must lie in 64..4096")
    return h, w


_OWN_FILE = re.compile(r"\d{5,}\.(png|jpg)")


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DatasetError(f"{out}: folder is not empty (pass --force to replace a generated dataset)")
        # Remove only what a previous make-dataset wrote.
        for sub in ("images", "panoptic"):
            d = out / sub
            if d.is_dir():
                for f in d.iterdir():
                    if f.is_file() and _OWN_FILE.fullmatch(f.name):
                        f.unlink()
        (out / "panoptic.json").unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "panoptic").mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`make_dataset` wrote."""

    output: Path
    images: int
    segments: int


def make_dataset(
    seed: int,
    count: int,
    output: str | os.PathLike[str],
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    image_format: str = "png",
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Write ``count`` scenes of ``seed`` to ``output`` in COCO panoptic layout (module docstring)."""
    if count < 1:
        raise DatasetError(f"--count must be at least 1, got {count}")
    if seed < 0:
        raise DatasetError(f"--seed must be >= 0, got {seed}")
    if image_format not in IMAGE_FORMATS:
        raise DatasetError(f"image format {image_format!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    out = Path(output)
    _prepare_output(out, force)
    h, w = size
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n_segments = 0
    for i in range(count):
        scene = generate_scene(seed, i, size)
        stem = f"{i:05d}"
        image_name = f"{stem}.{image_format}"
        with atomic_path(out / "images" / image_name) as tmp:
            pil = Image.fromarray(scene.image, mode="RGB")
            if image_format == "png":
                pil.save(tmp, format="PNG")
            else:
                pil.save(tmp, format="JPEG", quality=95)
        write_panoptic_png(out / "panoptic" / f"{stem}.png", scene.id_map)
        images.append({"id": i, "file_name": image_name, "width": w, "height": h})
        annotations.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": list(scene.segments)})
        n_segments += len(scene.segments)
        if progress is not None:
            progress(i + 1)
    data = {
        "info": {
            "description": "panoptic-deploy generated scenes",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "count": count,
            "size": [h, w],
        },
        "images": images,
        "annotations": annotations,
        "categories": scene_category_set().to_json(),
    }
    write_text_atomic(out / "panoptic.json", json.dumps(data, indent=1) + "\n")
    return DatasetSummary(output=out, images=count, segments=n_segments)
