"""A COCO-panoptic folder as PanopticFCN training samples (training spec §1, separated format).

Layout (what ``panoptic-deploy make-dataset`` writes, and COCO's own): ``DIR/panoptic.json`` with
``images``, ``annotations`` and ``categories``; images under ``DIR/images/`` and panoptic PNGs under
``DIR/panoptic/``. Things become (contiguous class, bitmask of the segment, tight box); the semantic map
has 0 on thing pixels (crowd too), the stuff-head channel 1..S-1 on stuff and 255 on void. Crowd things are
not instances (spec §1.1). Augmentation (spec §1.3): short-side resize drawn from MIN_SIZE_TRAIN, long side
capped by MAX_SIZE_TRAIN, horizontal flip with probability 0.5.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from panoptic_deploy.categories import CategorySet
from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.panoptic_format import PanopticAnnotation, load_panoptic_json, read_panoptic_png
from panoptic_deploy.preprocess import padded_shape, read_image, resized_shape
from panoptic_deploy.training.targets import BatchTargets, Sample, TargetParams, build_targets


@dataclass(frozen=True)
class InputSettings:
    """Training-time input settings (spec §1.3, §1.4)."""

    min_sizes: tuple[int, ...]
    max_size: int
    flip: bool
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    input_format: str = "BGR"
    ignore_value: int = 255  # MODEL.IGNORE_VALUE: the void label of the semantic map

    @classmethod
    def from_config(cls, cfg: object) -> InputSettings:
        c = cfg  # detectron2 keys
        return cls(
            min_sizes=tuple(int(s) for s in c.INPUT.MIN_SIZE_TRAIN),  # type: ignore[attr-defined]
            max_size=int(c.INPUT.MAX_SIZE_TRAIN),  # type: ignore[attr-defined]
            flip=c.INPUT.RANDOM_FLIP == "horizontal",  # type: ignore[attr-defined]
            pixel_mean=tuple(float(v) for v in c.MODEL.PIXEL_MEAN),  # type: ignore[attr-defined,arg-type]
            pixel_std=tuple(float(v) for v in c.MODEL.PIXEL_STD),  # type: ignore[attr-defined,arg-type]
            input_format=str(c.INPUT.FORMAT),  # type: ignore[attr-defined]
            ignore_value=int(c.MODEL.IGNORE_VALUE),  # type: ignore[attr-defined]
        )


class PanopticDataset(torch.utils.data.Dataset[Sample]):
    """Training samples of a COCO-panoptic folder; each sample's augmentation is drawn from a generator
    seeded by a key (``seed`` and the index by default), so runs are reproducible."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        settings: InputSettings,
        num_thing_classes: int,
        num_stuff_classes: int,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        json_path = self.root / "panoptic.json"
        data = load_panoptic_json(json_path, require_categories=True)
        self.categories = CategorySet.load(json_path)
        self.categories.check_head_sizes(num_thing_classes, num_stuff_classes)
        images = {img.id: img.file_name for img in data.images}
        self.items: list[tuple[Path, Path, PanopticAnnotation]] = []
        for ann in data.annotations:
            if ann.image_id not in images:
                raise PanopticFormatError(f"{json_path}: annotation {ann.file_name} has no entry in 'images'")
            self.items.append(
                (self.root / "images" / images[ann.image_id], self.root / "panoptic" / ann.file_name, ann)
            )
        if not self.items:
            raise PanopticFormatError(f"{json_path}: no annotated images")
        self.settings = settings
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, bool]]]:
        """(image H×W×3 uint8 in INPUT.FORMAT order, id map H×W, [(segment id, dataset category, crowd)])."""
        image_path, png_path, ann = self.items[index]
        image = read_image(image_path, self.settings.input_format)
        ids = read_panoptic_png(png_path)
        if ids.shape != image.shape[:2]:
            raise PanopticFormatError(
                f"{png_path}: size {ids.shape} differs from its image {image.shape[:2]}"
            )
        return image, ids, [(s.id, s.category_id, s.iscrowd) for s in ann.segments_info]

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index, f"{self.seed}/{index}")

    def sample(self, index: int, key: str) -> Sample:
        """Image ``index`` with the augmentation drawn from a generator seeded by ``key``."""
        rng = random.Random(key)
        image, ids, segments = self.load(index)
        size = rng.choice(self.settings.min_sizes)
        new_h, new_w = resized_shape(image.shape[0], image.shape[1], size, self.settings.max_size)
        flip = self.settings.flip and rng.random() < 0.5
        return make_sample(image, ids, segments, self.categories, (new_h, new_w), flip, self.settings)


class ConcatPanoptic:
    """Several :class:`PanopticDataset` folders as one index space (same categories required)."""

    def __init__(self, parts: Sequence[PanopticDataset]) -> None:
        if not parts:
            raise PanopticFormatError("no dataset folder given")
        for part in parts[1:]:
            if part.categories.categories != parts[0].categories.categories:
                raise PanopticFormatError(f"{part.root}: its categories differ from those of {parts[0].root}")
        self.parts = list(parts)
        self.categories = parts[0].categories

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def sample(self, index: int, key: str) -> Sample:
        for part in self.parts:
            if index < len(part):
                return part.sample(index, key)
            index -= len(part)
        raise IndexError(index)


def make_sample(
    image: np.ndarray,
    ids: np.ndarray,
    segments: Sequence[tuple[int, int, bool]],
    categories: CategorySet,
    size: tuple[int, int],
    flip: bool,
    settings: InputSettings,
) -> Sample:
    """Resize (PIL bilinear for the image, nearest for the id map) and flip one image and its segments."""
    new_h, new_w = size
    if (new_h, new_w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        ids = np.asarray(
            Image.fromarray(ids.astype(np.int32)).resize((new_w, new_h), Image.Resampling.NEAREST)
        ).astype(np.int64)
    if flip:
        image = image[:, ::-1]
        ids = ids[:, ::-1]
    ids = np.ascontiguousarray(ids).astype(np.int64)
    semantic = np.full(ids.shape, settings.ignore_value, np.int64)
    classes, masks, boxes = [], [], []
    thing_ids = categories.thing_dataset_id_to_contiguous_id
    stuff_ids = categories.stuff_dataset_id_to_contiguous_id
    for seg_id, category, crowd in segments:
        region = ids == seg_id
        if category in thing_ids:
            semantic[region] = 0
            if crowd or not region.any():
                continue
            rows = np.flatnonzero(region.any(axis=1))
            cols = np.flatnonzero(region.any(axis=0))
            classes.append(thing_ids[category])
            masks.append(region)
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        elif category in stuff_ids:
            semantic[region] = stuff_ids[category]
        else:
            raise PanopticFormatError(f"segment {seg_id} has category {category}, not in the categories list")
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
    mean = torch.tensor(settings.pixel_mean).view(3, 1, 1)
    std = torch.tensor(settings.pixel_std).view(3, 1, 1)
    h, w = ids.shape
    return Sample(
        image=(tensor - mean) / std,
        semantic=torch.from_numpy(semantic),
        classes=torch.tensor(classes, dtype=torch.int64),
        masks=torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    )


class Collate:
    """Pads a list of samples to one batch (multiple of 32, zeros) and builds its targets (spec §1.4, §2)."""

    def __init__(self, params: TargetParams) -> None:
        self.params = params

    def __call__(self, samples: list[Sample]) -> tuple[torch.Tensor, BatchTargets]:
        height = max(s.image.shape[1] for s in samples)
        width = max(s.image.shape[2] for s in samples)
        pad_h, pad_w = padded_shape(height, width, 32)
        images = torch.zeros(len(samples), 3, pad_h, pad_w)
        for b, s in enumerate(samples):
            images[b, :, : s.image.shape[1], : s.image.shape[2]] = s.image
        return images, build_targets(samples, (pad_h, pad_w), self.params)
