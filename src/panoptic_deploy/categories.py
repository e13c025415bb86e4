"""COCO panoptic categories (80 things + 53 stuff) and the model's contiguous <-> COCO id mapping.

The network numbers its classes contiguously (spec Appendix A, detectron2's "panoptic separated" metadata):
thing segments carry ``category_id`` 0..79 (COCO categories with ``isthing = 1`` sorted by COCO id) and
stuff segments carry the stuff-head channel 1..53 (channel 0 is the merged "things" class and is never a
segment). COCO panoptic JSON carries the COCO category id instead; ``isthing`` picks the table.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from panoptic_deploy.errors import PanopticFormatError
from panoptic_deploy.jsonfiles import read_json


@dataclass(frozen=True)
class Category:
    """One COCO panoptic category.

    ``color`` is a fixed RGB colour for visualisation (ours, not COCO's palette).
    """

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] = (0, 0, 0)


# (COCO id, name) in contiguous order: index = contiguous thing id 0..79.
_THINGS: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"),
    (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"),
    (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"),
    (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"),
    (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip

# (COCO id, name) in contiguous order: index + 1 = stuff-head channel 1..53 (names are detectron2's).
_STUFF: tuple[tuple[int, str], ...] = (
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"),
    (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"),
    (141, "pillow"), (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"),
    (149, "road"), (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"),
    (159, "snow"), (161, "stairs"), (166, "tent"), (168, "towel"), (171, "wall-brick"),
    (175, "wall-stone"), (176, "wall-tile"), (177, "wall-wood"), (178, "water"), (180, "window-blind"),
    (181, "window"), (184, "tree"), (185, "fence"), (186, "ceiling"), (187, "sky"),
    (188, "cabinet"), (189, "table"), (190, "floor"), (191, "pavement"), (192, "mountain"),
    (193, "grass"), (194, "dirt"), (195, "paper"), (196, "food"), (197, "building"),
    (198, "rock"), (199, "wall"), (200, "rug"),
)  # fmt: skip

NUM_THING_CLASSES = len(_THINGS)  # 80
NUM_STUFF_CLASSES = len(_STUFF)  # 53 (the stuff head has 54 channels: 0 = things)

# THING_CONTIGUOUS_TO_COCO[c] for c in 0..79.
THING_CONTIGUOUS_TO_COCO: tuple[int, ...] = tuple(coco_id for coco_id, _ in _THINGS)
# STUFF_CONTIGUOUS_TO_COCO[c] for c in 1..53 (channel 0, the merged things class, has no COCO id).
STUFF_CONTIGUOUS_TO_COCO: dict[int, int] = {i + 1: coco_id for i, (coco_id, _) in enumerate(_STUFF)}
# COCO id -> (contiguous id, isthing).
COCO_TO_CONTIGUOUS: dict[int, tuple[int, bool]] = {
    **{coco_id: (c, True) for c, coco_id in enumerate(THING_CONTIGUOUS_TO_COCO)},
    **{coco_id: (c, False) for c, coco_id in STUFF_CONTIGUOUS_TO_COCO.items()},
}


def _palette_color(index: int, isthing: bool) -> tuple[int, int, int]:
    """Deterministic colour: hues spread by the golden ratio; things saturated, stuff paler."""
    hue = (index * 0.618033988749895) % 1.0
    saturation, value = (0.85, 0.95) if isthing else (0.45, 0.80)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


COCO_CATEGORIES: tuple[Category, ...] = tuple(
    sorted(
        [Category(i, n, True, _palette_color(k, True)) for k, (i, n) in enumerate(_THINGS)]
        + [Category(i, n, False, _palette_color(k, False)) for k, (i, n) in enumerate(_STUFF)],
        key=lambda cat: cat.id,
    )
)
"""All 133 categories, sorted by COCO id."""

CATEGORY_BY_ID: dict[int, Category] = {cat.id: cat for cat in COCO_CATEGORIES}


def coco_id_from_contiguous(contiguous_id: int, isthing: bool) -> int:
    """COCO category id of a model segment (``category_id`` is contiguous; ``isthing`` picks the table)."""
    if isthing:
        if 0 <= contiguous_id < NUM_THING_CLASSES:
            return THING_CONTIGUOUS_TO_COCO[contiguous_id]
        raise PanopticFormatError(f"thing category_id {contiguous_id} is outside 0..{NUM_THING_CLASSES - 1}")
    if contiguous_id in STUFF_CONTIGUOUS_TO_COCO:
        return STUFF_CONTIGUOUS_TO_COCO[contiguous_id]
    raise PanopticFormatError(f"stuff category_id {contiguous_id} is outside 1..{NUM_STUFF_CLASSES}")


def contiguous_from_coco(coco_id: int) -> tuple[int, bool]:
    """(contiguous id, isthing) of a COCO panoptic category id."""
    try:
        return COCO_TO_CONTIGUOUS[coco_id]
    except KeyError:
        raise PanopticFormatError(f"unknown COCO panoptic category id {coco_id}") from None


# ---------------------------------------------------------------------------------------------------------
# Category sets: COCO (the default) or a custom COCO-panoptic ``categories`` list


@dataclass(frozen=True)
class CategorySet:
    """A model's categories and its contiguous <-> dataset id mapping (detectron2's metadata convention).

    * Things (``isthing = 1``) sorted by dataset id get contiguous ids 0..T-1
      (``thing_dataset_id_to_contiguous_id``); they are the thing head's T classes
      (``MODEL.POSITION_HEAD.THING.NUM_CLASSES = T``).
    * Stuff sorted by dataset id get contiguous ids 1..S (``stuff_dataset_id_to_contiguous_id`` of the
      "panoptic separated" metadata); stuff-head channel 0 is the merged "things" class
      (``STUFF.WITH_THING True``), so ``MODEL.POSITION_HEAD.STUFF.NUM_CLASSES = S + 1``.

    ``categories`` are sorted by dataset id; ``source`` names where the set came from (``"coco"`` or a
    file) for messages. COCO's set is :data:`COCO`.
    """

    categories: tuple[Category, ...]
    source: str = "coco"

    @classmethod
    def from_categories(cls, categories: Sequence[Category], source: str) -> CategorySet:
        """Validate and sort: unique ids >= 1, unique names not required, at least one thing and one stuff."""
        cats = tuple(sorted(categories, key=lambda c: c.id))
        if not cats:
            raise PanopticFormatError(f"{source}: the category list is empty")
        ids = [c.id for c in cats]
        for i in range(1, len(ids)):
            if ids[i] == ids[i - 1]:
                raise PanopticFormatError(f"{source}: category id {ids[i]} listed twice")
        if ids[0] < 1:
            raise PanopticFormatError(f"{source}: category id {ids[0]} is not a positive integer")
        if not any(c.isthing for c in cats):
            raise PanopticFormatError(f"{source}: no thing category (isthing = 1)")
        if all(c.isthing for c in cats):
            raise PanopticFormatError(f"{source}: no stuff category (isthing = 0)")
        # Give categories without a colour (black) one from the palette, by contiguous index.
        things = [c for c in cats if c.isthing]
        stuff = [c for c in cats if not c.isthing]
        colored: dict[int, Category] = {}
        for group, isthing in ((things, True), (stuff, False)):
            for k, c in enumerate(group):
                color = c.color if c.color != (0, 0, 0) else _palette_color(k, isthing)
                colored[c.id] = Category(c.id, c.name, c.isthing, color)
        return cls(categories=tuple(colored[i] for i in ids), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CategorySet:
        """Read a JSON file: a COCO panoptic JSON (its ``categories``) or a bare list of categories."""
        p = Path(path)
        if not p.is_file():
            raise PanopticFormatError(f"{p}: category file not found")
        data = read_json(p, "a categories list", PanopticFormatError)
        if isinstance(data, dict):
            if "categories" not in data:
                raise PanopticFormatError(f"{p}: no 'categories' list")
            data = data["categories"]
        return cls.from_json(data, str(p))

    # -- derived tables ------------------------------------------------------------------------------

    @cached_property
    def things(self) -> tuple[Category, ...]:
        """Thing categories in contiguous order (index = contiguous id)."""
        return tuple(c for c in self.categories if c.isthing)

    @cached_property
    def stuff(self) -> tuple[Category, ...]:
        """Stuff categories in contiguous order (index + 1 = contiguous id / stuff-head channel)."""
        return tuple(c for c in self.categories if not c.isthing)

    @cached_property
    def num_things(self) -> int:
        """T: thing classes (``THING.NUM_CLASSES``)."""
        return len(self.things)

    @cached_property
    def num_stuff(self) -> int:
        """S: stuff classes; the stuff head has S + 1 channels (``STUFF.NUM_CLASSES``)."""
        return len(self.stuff)

    @cached_property
    def thing_dataset_id_to_contiguous_id(self) -> dict[int, int]:
        return {c.id: k for k, c in enumerate(self.things)}

    @cached_property
    def stuff_dataset_id_to_contiguous_id(self) -> dict[int, int]:
        return {c.id: k + 1 for k, c in enumerate(self.stuff)}

    @cached_property
    def by_id(self) -> dict[int, Category]:
        return {c.id: c for c in self.categories}

    @property
    def is_coco(self) -> bool:
        """Whether this is COCO's set (same ids and thing/stuff split; names and colours may differ)."""
        return [(c.id, c.isthing) for c in self.categories] == [(c.id, c.isthing) for c in COCO_CATEGORIES]

    def dataset_id(self, contiguous_id: int, isthing: bool) -> int:
        """Dataset category id of a model segment (contiguous ``category_id`` + ``isthing``)."""
        if isthing:
            if 0 <= contiguous_id < self.num_things:
                return self.things[contiguous_id].id
            raise PanopticFormatError(
                f"thing category_id {contiguous_id} is outside 0..{self.num_things - 1} ({self.source})"
            )
        if 1 <= contiguous_id <= self.num_stuff:
            return self.stuff[contiguous_id - 1].id
        raise PanopticFormatError(
            f"stuff category_id {contiguous_id} is outside 1..{self.num_stuff} ({self.source})"
        )

    def contiguous(self, dataset_id: int) -> tuple[int, bool]:
        """(contiguous id, isthing) of a dataset category id."""
        cat = self.by_id.get(dataset_id)
        if cat is None:
            raise PanopticFormatError(f"unknown category id {dataset_id} ({self.source})")
        if cat.isthing:
            return self.thing_dataset_id_to_contiguous_id[dataset_id], True
        return self.stuff_dataset_id_to_contiguous_id[dataset_id], False

    def category(self, contiguous_id: int, isthing: bool) -> Category:
        """The category of a model segment."""
        return self.by_id[self.dataset_id(contiguous_id, isthing)]

    def check_head_sizes(self, thing_classes: int, stuff_classes: int, config: str = "config") -> None:
        """One-line error when the config's head sizes disagree with this set (T things, S + 1 stuff)."""
        if thing_classes == self.num_things and stuff_classes == self.num_stuff + 1:
            return
        raise PanopticFormatError(
            f"{config}: MODEL.POSITION_HEAD.THING.NUM_CLASSES = {thing_classes} and "
            f"STUFF.NUM_CLASSES = {stuff_classes} do not match the category set {self.source} "
            f"({self.num_things} things, {self.num_stuff} stuff: expects {self.num_things} and "
            f"{self.num_stuff + 1}, stuff channel 0 being the merged things class)"
        )

    def check_config(self, cfg: Mapping[str, Any], config: str = "config") -> None:
        """:meth:`check_head_sizes` with the head sizes of a loaded model config (``cfg.MODEL...``)."""
        head = cfg["MODEL"]["POSITION_HEAD"]
        self.check_head_sizes(int(head["THING"]["NUM_CLASSES"]), int(head["STUFF"]["NUM_CLASSES"]), config)

    @classmethod
    def from_json(cls, data: Any, source: str) -> CategorySet:
        """From a decoded ``categories`` list (e.g. what :meth:`to_json` wrote)."""
        from panoptic_deploy.panoptic_format import parse_categories

        return cls.from_categories(parse_categories(data, source), source=source)

    def to_json(self) -> list[dict[str, object]]:
        """The COCO panoptic ``categories`` list."""
        return [
            {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
            for c in self.categories
        ]


COCO = CategorySet(categories=COCO_CATEGORIES, source="coco")
"""The default: COCO panoptic's 80 things + 53 stuff."""


def load_category_set(spec: str | os.PathLike[str] | None) -> CategorySet:
    """``None`` or ``"coco"`` -> :data:`COCO`; otherwise a JSON file (see :meth:`CategorySet.load`)."""
    if spec is None or str(spec) == "coco":
        return COCO
    return CategorySet.load(spec)


def check_ground_truth_categories(gt: Sequence[Category], model: CategorySet, source: str) -> None:
    """One-line error unless the ground truth's categories (id, isthing) are the model's category set.

    The one home of this check: the workflow plan runs it at start without importing torch, and
    :func:`panoptic_deploy.bench.accuracy.ground_truth_pq` before it scores.
    """
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
