"""The generated scenes: categories, textures, shapes and :func:`generate_scene`, all integer arithmetic so
that a (seed, index) draws the same pixels on every machine (see :mod:`panoptic_deploy.dataset`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from panoptic_deploy.categories import Category, CategorySet

# Bumped whenever the same seed would draw other scenes. 1: the first generator (commit 99aa8fe), which made
# the demo model's training scenes (docs/training.md); 2: object sizes drawn less small-heavy (cd482c1).
GENERATOR_VERSION = 2
DEFAULT_SIZE = (256, 320)  # (H, W)
MIN_THING_AREA = 20
MIN_STUFF_AREA = 64
IMAGE_FORMATS = ("png", "jpg")

I64 = NDArray[np.int64]
BoolMap = NDArray[np.bool_]


# ---------------------------------------------------------------------------------------------------------
# Categories

THING_NAMES = ("circle", "triangle", "square", "star", "ring", "cross")
STUFF_NAMES = ("sky", "grass", "water", "sand")
THING_IDS = (1, 2, 3, 4, 5, 6)
STUFF_IDS = (11, 12, 13, 14)
_THING_COLORS = ((220, 20, 60), (0, 130, 200), (255, 200, 0), (145, 30, 180), (245, 130, 48), (60, 180, 75))
_STUFF_COLORS = ((135, 190, 235), (110, 160, 80), (40, 80, 150), (210, 190, 140))

SCENE_CATEGORIES: tuple[Category, ...] = tuple(
    [Category(i, n, True, c) for i, n, c in zip(THING_IDS, THING_NAMES, _THING_COLORS, strict=True)]
    + [Category(i, n, False, c) for i, n, c in zip(STUFF_IDS, STUFF_NAMES, _STUFF_COLORS, strict=True)]
)
"""The generated dataset's categories, sorted by id (6 things, 4 stuff)."""


def scene_category_set() -> CategorySet:
    """The category set of generated scenes (things 1..6 -> contiguous 0..5, stuff 11..14 -> 1..4)."""
    return CategorySet.from_categories(SCENE_CATEGORIES, source="generated scenes")


# ---------------------------------------------------------------------------------------------------------
# Integer helpers

_TRIG_STEPS = 360
_TRIG_ONE = 1 << 14
# sin/cos of k degrees in 1/16384 units; rounding a double to an integer is machine independent.
_SIN: I64 = np.array(
    [round(math.sin(2 * math.pi * k / _TRIG_STEPS) * _TRIG_ONE) for k in range(_TRIG_STEPS)], dtype=np.int64
)
_COS: I64 = np.array(
    [round(math.cos(2 * math.pi * k / _TRIG_STEPS) * _TRIG_ONE) for k in range(_TRIG_STEPS)], dtype=np.int64
)


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(rng.integers(lo, hi + 1))


def _value_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> I64:
    """Smooth value noise in 0..255: random lattice values, smoothstep-bilinear interpolation, integer."""
    cells_y, cells_x = max(1, cells_y), max(1, cells_x)
    grid = rng.integers(0, 256, size=(cells_y + 2, cells_x + 2), dtype=np.int64)
    oy, ox = _randint(rng, 0, 255), _randint(rng, 0, 255)
    ys = (np.arange(h, dtype=np.int64) * cells_y * 256) // h + oy
    xs = (np.arange(w, dtype=np.int64) * cells_x * 256) // w + ox
    iy, fy = ys >> 8, ys & 255
    ix, fx = xs >> 8, xs & 255
    fy = (fy * fy * (768 - 2 * fy)) >> 16  # smoothstep, 0..255
    fx = (fx * fx * (768 - 2 * fx)) >> 16
    # Separable: along x on the lattice rows (small), then along y at full size.
    rows = (grid[:, ix] * (256 - fx) + grid[:, ix + 1] * fx).astype(np.int32)  # (cells_y + 2, W)
    fy32 = fy.astype(np.int32)[:, None]
    out: I64 = ((rows[iy] * (256 - fy32) + rows[iy + 1] * fy32) >> 16).astype(np.int64)
    return out


def _ramp(h: int, w: int, angle: int) -> I64:
    """Linear ramp across the image in direction ``angle`` (degrees), scaled to -256..256."""
    cos, sin = int(_COS[angle % 360]), int(_SIN[angle % 360])
    y = np.arange(h, dtype=np.int64)[:, None] * 2 - (h - 1)
    x = np.arange(w, dtype=np.int64)[None, :] * 2 - (w - 1)
    proj = x * cos + y * sin  # |proj| <= (w + h) * 16384
    out: I64 = (proj * 256) // ((w + h) * _TRIG_ONE)
    return out


def _color(rgb: Sequence[int]) -> I64:
    return np.array(rgb, dtype=np.int64).reshape(1, 1, 3)


def _jitter_color(rng: np.random.Generator, base: Sequence[int], amount: int) -> list[int]:
    return [min(255, max(0, int(v) + _randint(rng, -amount, amount))) for v in base]


def _random_color(rng: np.random.Generator) -> list[int]:
    return [_randint(rng, 15, 240) for _ in range(3)]


# ---------------------------------------------------------------------------------------------------------
# Stuff


_STUFF_PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "sky": ((120, 170, 230), (175, 200, 225), (230, 160, 110), (60, 90, 170), (150, 150, 160)),
    "grass": ((70, 140, 50), (120, 160, 60), (50, 95, 40), (150, 150, 70), (90, 120, 90)),
    "water": ((40, 90, 160), (40, 120, 130), (80, 110, 140), (30, 60, 100), (90, 140, 120)),
    "sand": ((215, 190, 140), (200, 150, 90), (170, 150, 120), (230, 210, 170), (150, 130, 110)),
}


def _stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> I64:
    """(H, W, 3) int64 texture of one stuff class over the whole image."""
    palette = _STUFF_PALETTES[name]
    if rng.integers(0, 4) == 0:
        base = _color(_random_color(rng))
    else:
        base = _color(_jitter_color(rng, palette[int(rng.integers(0, len(palette)))], 20))
    if name == "sky":
        grad = _ramp(h, w, 90 + _randint(rng, -20, 20)) * _randint(rng, 10, 40) // 256  # lighter lower down
        clouds = _value_noise(rng, h, w, _randint(rng, 2, 4), _randint(rng, 3, 6))
        clouds = (clouds + _value_noise(rng, h, w, 8, 12) // 2) * 2 // 3
        cover = np.clip((clouds - _randint(rng, 120, 200)) * 4, 0, 255)  # soft cloud mask 0..255
        white = _color(_jitter_color(rng, (235, 235, 240), 15))
        tex = base + grad[..., None]
        tex = (tex * (256 - cover[..., None]) + white * cover[..., None]) >> 8
        return tex
    if name == "grass":
        blades = _value_noise(rng, h, w, max(1, h // _randint(rng, 12, 30)), w // _randint(rng, 2, 3))
        fine = rng.integers(-12, 13, size=(h, w), dtype=np.int64)
        shade = _value_noise(rng, h, w, 3, 4) - 128
        v = (blades - 128) * _randint(rng, 40, 70) // 128 + fine + shade // 5
        return base + v[..., None]
    if name == "water":
        period = _randint(rng, 5, 14)
        warp = _value_noise(rng, h, w, 4, 6)
        ys = np.arange(h, dtype=np.int64)[:, None]
        phase = (ys * 360 // period + warp * _randint(rng, 1, 3)) % 360
        waves = _SIN[phase] * _randint(rng, 14, 30) // _TRIG_ONE
        glint = np.where(_value_noise(rng, h, w, h // 6, w // 2) > 215, 45, 0)
        v = waves + glint + (_value_noise(rng, h, w, 2, 3) - 128) // 6
        water: I64 = base + v[..., None]
        return water
    # sand
    speckle = rng.integers(-28, 29, size=(h, w), dtype=np.int64)
    dunes = _value_noise(rng, h, w, _randint(rng, 2, 4), _randint(rng, 2, 5))
    ripples = _SIN[((np.arange(w, dtype=np.int64)[None, :] * 360 // _randint(rng, 9, 20)) + dunes * 2) % 360]
    v = speckle + (dunes - 128) // 5 + ripples * 10 // _TRIG_ONE
    sand: I64 = base + v[..., None]
    return sand


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> I64:
    """(H, W) stuff class index 0..3 (into STUFF_NAMES) per pixel: argmax of noisy per-class fields."""
    n_present = int(rng.choice([1, 2, 2, 3, 3, 3, 4, 4]))
    present = sorted(int(k) for k in rng.choice(len(STUFF_NAMES), size=n_present, replace=False))
    top_bias = _ramp(h, w, 270)  # +256 at the top row, -256 at the bottom
    fields = []
    for k in present:
        f = _value_noise(rng, h, w, _randint(rng, 1, 3), _randint(rng, 1, 4)) * 2
        f = f + _value_noise(rng, h, w, _randint(rng, 4, 7), _randint(rng, 5, 9))
        f = f + _value_noise(rng, h, w, _randint(rng, 12, 20), _randint(rng, 14, 24)) // 2
        if STUFF_NAMES[k] == "sky":
            f = f + top_bias * _randint(rng, 0, 3) // 2
        elif STUFF_NAMES[k] in ("water", "sand"):
            f = f - top_bias // 3
        fields.append(f)
    choice = np.argmax(np.stack(fields), axis=0)
    out: I64 = np.asarray(present, dtype=np.int64)[choice]
    return out


# ---------------------------------------------------------------------------------------------------------
# Things


@dataclass(frozen=True)
class _Thing:
    cls: int  # index into THING_NAMES
    cx: int
    cy: int
    r: int  # circumradius in pixels


_MIN_RADIUS = {"circle": 4, "triangle": 5, "square": 4, "star": 7, "ring": 8, "cross": 6}


def _polygon(
    cx: int, cy: int, r: int, angle: int, points: Sequence[tuple[int, int]], sx: int, sy: int
) -> list[tuple[int, int]]:
    """Local points in 1/1024 of r, scaled by (sx, sy)/1024, rotated by ``angle`` degrees, moved."""
    cos, sin = int(_COS[angle % 360]), int(_SIN[angle % 360])
    out = []
    for lx, ly in points:
        x, y = lx * sx // 1024, ly * sy // 1024
        rx = (x * cos - y * sin) // _TRIG_ONE
        ry = (x * sin + y * cos) // _TRIG_ONE
        out.append((cx + (rx * r + 512) // 1024, cy + (ry * r + 512) // 1024))
    return out


def _regular(n: int, start: int, radii: Sequence[int]) -> list[tuple[int, int]]:
    """n * len(radii) points around the origin, radius radii[j % len] (1/1024 units), from ``start`` deg."""
    m = n * len(radii)
    pts = []
    for j in range(m):
        a = (start + j * 360 // m) % 360
        rr = radii[j % len(radii)]
        pts.append((int(_COS[a]) * rr // _TRIG_ONE, int(_SIN[a]) * rr // _TRIG_ONE))
    return pts


def _thing_mask(rng: np.random.Generator, t: _Thing, h: int, w: int) -> BoolMap:
    """Rasterise one instance (full shape, before occlusion)."""
    name = THING_NAMES[t.cls]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    angle = _randint(rng, 0, 359)
    sx, sy = _randint(rng, 880, 1024), _randint(rng, 880, 1024)
    cx, cy, r = t.cx, t.cy, t.r
    if name in ("circle", "ring"):
        rx, ry = max(1, r * sx // 1024), max(1, r * sy // 1024)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        if name == "ring":
            k = _randint(rng, 440, 620)
            ix, iy = max(1, rx * k // 1024), max(1, ry * k // 1024)
            draw.ellipse((cx - ix, cy - iy, cx + ix, cy + iy), fill=0)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, angle, _regular(3, 270, [1024]), sx, sy), fill=255)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, angle, _regular(4, 45, [1024]), sx, sy), fill=255)
    elif name == "star":
        inner = _randint(rng, 390, 500)
        draw.polygon(_polygon(cx, cy, r, angle, _regular(5, 270, [1024, inner]), sx, sy), fill=255)
    else:  # cross
        a = _randint(rng, 300, 400)
        q = 1024
        pts = [(a, q), (a, a), (q, a), (q, -a), (a, -a), (a, -q),
               (-a, -q), (-a, -a), (-q, -a), (-q, a), (-a, a), (-a, q)]  # fmt: skip
        draw.polygon(_polygon(cx, cy, r, angle, pts, 1024, 1024), fill=255)
    mask: BoolMap = np.asarray(canvas) > 0
    return mask


def _place_things(rng: np.random.Generator, h: int, w: int) -> list[_Thing]:
    """Centres, classes and sizes (skewed to small, up to a quarter of the shorter side), a third of them
    next to an instance of the same class."""
    scale = max(1, h * w // (256 * 320))
    n = _randint(rng, 3, 12) * scale
    r_max = max(8, min(h, w) // 4)
    things: list[_Thing] = []
    for _ in range(n):
        u = _randint(rng, 0, 1023)
        if things and rng.integers(0, 3) == 0:
            near = things[int(rng.integers(0, len(things)))]
            cls = near.cls
            r = max(_MIN_RADIUS[THING_NAMES[cls]], min(r_max, near.r * _randint(rng, 600, 1400) // 1024))
            a = _randint(rng, 0, 359)
            dist = (near.r + r) * _randint(rng, 650, 1050) // 1024
            cx = near.cx + int(_COS[a]) * dist // _TRIG_ONE
            cy = near.cy + int(_SIN[a]) * dist // _TRIG_ONE
            cx, cy = min(w - 1, max(0, cx)), min(h - 1, max(0, cy))
        else:
            cls = int(rng.integers(0, len(THING_NAMES)))
            r_min = _MIN_RADIUS[THING_NAMES[cls]]
            # Between uniform and quadratic in u: ~1 in 8 instances under twice the smallest radius.
            r = r_min + (r_max - r_min) * u * (u + 1024) // (2 * 1024 * 1024)
            cx, cy = _randint(rng, 0, w - 1), _randint(rng, 0, h - 1)
        things.append(_Thing(cls, cx, cy, r))
    return things


def _thing_texture(rng: np.random.Generator, h: int, w: int, y0: int, x0: int, t: _Thing) -> I64:
    """(h, w, 3) texture of one instance over its box at (y0, x0): random colour and one of five
    patterns, all independent of the class."""
    base = _color(_random_color(rng))
    pattern = int(rng.integers(0, 5))
    amp = _randint(rng, 15, 60)
    if pattern == 0:  # flat
        v = np.zeros((h, w), dtype=np.int64)
    elif pattern == 1:  # gradient across the box
        v = _ramp(h, w, _randint(rng, 0, 359)) * amp // 256
    elif pattern in (2, 3):  # stripes / checks, in image coordinates
        period = _randint(rng, 3, 9)
        angle = _randint(rng, 0, 179)
        y = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
        x = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
        u = (x * int(_COS[angle]) + y * int(_SIN[angle])) // (_TRIG_ONE * period)
        if pattern == 3:
            u = u + (y * int(_COS[angle]) - x * int(_SIN[angle])) // (_TRIG_ONE * period)
        v = np.where(u % 2 == 0, amp, -amp).astype(np.int64)
    else:  # spots
        v = (_value_noise(rng, h, w, max(1, h // 8), max(1, w // 8)) - 128) * amp // 128
    out: I64 = base + v[..., None]
    return out


# ---------------------------------------------------------------------------------------------------------
# One scene


@dataclass(frozen=True)
class Scene:
    """One generated scene: the RGB image, its segment id map and the segments (dataset category ids)."""

    image: NDArray[np.uint8]  # (H, W, 3)
    id_map: NDArray[np.uint32]  # (H, W), every pixel > 0
    segments: tuple[dict[str, Any], ...]  # segments_info entries


def _boundary(mask: BoolMap) -> BoolMap:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    out: BoolMap = mask & ~inner
    return out


def generate_scene(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    """Scene ``index`` of dataset ``seed`` at ``size`` (H, W); deterministic (see the module docstring)."""
    h, w = size
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))

    stuff = _stuff_layout(rng, h, w)
    things = _place_things(rng, h, w)
    masks = [_thing_mask(rng, t, h, w) for t in things]

    def paint(keep: Sequence[int]) -> I64:
        owner = np.full((h, w), -1, dtype=np.int64)
        for k in keep:
            owner[masks[k]] = k
        return owner

    keep = [k for k in range(len(things)) if masks[k].any()]
    owner = paint(keep)
    areas = np.bincount(owner[owner >= 0], minlength=len(things))
    small = [k for k in keep if areas[k] < MIN_THING_AREA]
    if small:  # removing instances only uncovers others, so one pass suffices
        keep = [k for k in keep if areas[k] >= MIN_THING_AREA]
        owner = paint(keep)

    free = owner < 0
    stuff_area = np.bincount(stuff[free], minlength=len(STUFF_NAMES))
    if stuff_area.any():
        largest = int(np.argmax(stuff_area))
        for k in range(len(STUFF_NAMES)):
            if 0 < stuff_area[k] < MIN_STUFF_AREA and k != largest:
                stuff[stuff == k] = largest

    # Segment ids: stuff categories present (in id order), then things bottom to top.
    id_map = np.zeros((h, w), dtype=np.uint32)
    segments: list[dict[str, Any]] = []
    entries: list[tuple[BoolMap, int]] = []
    for k in range(len(STUFF_NAMES)):
        m = free & (stuff == k)
        if m.any():
            entries.append((m, STUFF_IDS[k]))
    for k in keep:
        entries.append((owner == k, THING_IDS[things[k].cls]))
    for seg_id, (m, cat) in enumerate(entries, start=1):
        id_map[m] = seg_id
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        segments.append({"id": seg_id, "category_id": cat, "iscrowd": 0, "bbox": bbox, "area": int(m.sum())})

    # Colours: stuff textures, then instances with their own textures, then lighting and noise.
    img = np.zeros((h, w, 3), dtype=np.int64)
    for k in range(len(STUFF_NAMES)):
        m = stuff == k
        if m.any():
            img[m] = _stuff_texture(rng, STUFF_NAMES[k], h, w)[m]
    for k in keep:
        ys, xs = np.nonzero(masks[k])
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        tex = _thing_texture(rng, y1 - y0, x1 - x0, y0, x0, things[k])
        if rng.integers(0, 5) < 2:  # dark or light outline along the full shape
            edge = _boundary(masks[k][y0:y1, x0:x1])
            tex[edge] = tex[edge] * _randint(rng, 100, 180) // 256 if rng.integers(0, 2) else 235
        vis = owner[y0:y1, x0:x1] == k
        img[y0:y1, x0:x1][vis] = tex[vis]

    gain = 256 + _ramp(h, w, _randint(rng, 0, 359)) * _randint(rng, 0, 90) // 256
    gain = gain + (_value_noise(rng, h, w, 2, 3) - 128) * _randint(rng, 0, 60) // 128
    cast = np.array([_randint(rng, 225, 287) for _ in range(3)], dtype=np.int64).reshape(1, 1, 3)
    img = img * gain[..., None] // 256 * cast // 256
    if rng.integers(0, 2):  # 3x3 box blur (integer)
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        acc = np.zeros_like(img)
        for dy in range(3):
            for dx in range(3):
                acc += p[dy : dy + h, dx : dx + w]
        img = acc // 9
    sigma = _randint(rng, 0, 14)
    if sigma:
        for _ in range(2):  # triangular noise: the sum of two uniform draws
            img = img + rng.integers(-sigma, sigma + 1, size=(h, w, 3), dtype=np.int64)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(image=image, id_map=id_map, segments=tuple(segments))
