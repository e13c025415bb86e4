"""Training targets of PanopticFCN (training spec §2), built per batch on the padded geometry.

Everything here runs without gradient on CPU tensors (in the data loader's workers): centre heat-maps per
level, soft stuff targets at stride 4 and per level, stride-4 thing masks, and the per-level assignment of
things by object scale. The losses (:mod:`panoptic_deploy.training.losses`) consume :class:`BatchTargets`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Values below this fraction of the window's maximum are set to 0 (numpy's float64 eps, as CenterNet).
_GAUSS_FLOOR = 2.220446049250313e-16
# Guidance threshold on the level-resampled mask (spec §3.3 step 2), used by the losses.
GUIDANCE_THRESHOLD = 0.1


@dataclass(frozen=True)
class TargetParams:
    """The config values target generation reads (spec §0)."""

    num_thing_classes: int
    num_stuff_classes: int  # stuff-head channels, channel 0 = the merged things class
    instance_scales: tuple[tuple[float, float], ...]
    min_overlap: float = 0.7
    gaussian_sigma: float = 3.0
    center_type: str = "mass"
    ignore_value: int = 255

    @classmethod
    def from_config(cls, cfg: object) -> TargetParams:
        m = cfg.MODEL  # type: ignore[attr-defined]
        return cls(
            num_thing_classes=int(m.POSITION_HEAD.THING.NUM_CLASSES),
            num_stuff_classes=int(m.POSITION_HEAD.STUFF.NUM_CLASSES),
            instance_scales=tuple((float(lo), float(hi)) for lo, hi in m.KERNEL_HEAD.INSTANCE_SCALES),
            min_overlap=float(m.POSITION_HEAD.THING.MIN_OVERLAP),
            gaussian_sigma=float(m.POSITION_HEAD.THING.GAUSSIAN_SIGMA),
            center_type=str(m.POSITION_HEAD.THING.CENTER_TYPE),
            ignore_value=int(m.IGNORE_VALUE),
        )


@dataclass
class Sample:
    """One augmented training image in the separated format of spec §1.2.

    image: 3×h×w float32, normalised (not padded). semantic: h×w int64, 0 = thing pixels, 1..S-1 stuff,
    ``ignore_value`` = void. classes: N int64 contiguous thing ids; masks: N×h×w bool; boxes: N×4 float32
    XYXY in resized-image pixels.
    """

    image: torch.Tensor
    semantic: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor


@dataclass
class LevelTargets:
    """Targets of one head level for the whole batch.

    heatmap: B×C×Hl×Wl centre heat-maps. stuff: B×S×Hl×Wl region targets Y_l (soft, zeroed below 0.5).
    Assignments (one per (image, instance) assigned to this level): image, cls, thing (row of
    :attr:`BatchTargets.thing_masks`) and slot (the assignment's index among its image's assignments over
    all levels, for batched mask prediction), all int64 vectors of length J_l.
    """

    heatmap: torch.Tensor
    stuff: torch.Tensor
    image: torch.Tensor
    cls: torch.Tensor
    thing: torch.Tensor
    slot: torch.Tensor


@dataclass
class BatchTargets:
    """Targets of one batch (padded input ``input_hw``).

    stuff4: B×S×Hf×Wf stride-4 stuff dice targets; thing_masks: N×Hf×Wf stride-4 thing dice targets of all
    kept instances of the batch; levels: p3..p7; slots_per_image: the largest number of assignments of one
    image (over all levels).
    """

    input_hw: tuple[int, int]
    stuff4: torch.Tensor
    thing_masks: torch.Tensor
    levels: list[LevelTargets]
    slots_per_image: int

    @property
    def num_assignments(self) -> int:
        """N_th of spec §2.3."""
        return sum(int(level.image.numel()) for level in self.levels)

    def to(self, device: torch.device, non_blocking: bool = False) -> BatchTargets:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return BatchTargets(
            self.input_hw,
            move(self.stuff4),
            move(self.thing_masks),
            [
                LevelTargets(
                    *(move(getattr(lv, f)) for f in ("heatmap", "stuff", "image", "cls", "thing", "slot"))
                )
                for lv in self.levels
            ],
            self.slots_per_image,
        )


def quarter(h: int, w: int) -> tuple[int, int]:
    """(h4, w4) of spec §2: ``int(x / 4 + 0.5)``."""
    return int(h / 4 + 0.5), int(w / 4 + 0.5)


def level_sizes(input_h: int, input_w: int) -> list[tuple[int, int]]:
    """(Hl, Wl) of p3..p7 as the network produces them: p3..p5 exact divisions (inputs are multiples of 32),
    p6 and p7 from 3×3 stride-2 convs with padding 1 (ceil of a half)."""
    sizes = [(input_h // s, input_w // s) for s in (8, 16, 32)]
    for _ in range(2):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PyTorch bilinear resampling, ``align_corners=False``, no antialiasing, over the last two dims."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).to(torch.float32)
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def stride4(masks: torch.Tensor, hf: int, wf: int) -> torch.Tensor:
    """…×h×w masks -> soft …×Hf×Wf: bilinear to (h4, w4), pasted top-left into zeros (spec §2)."""
    h4, w4 = quarter(masks.shape[-2], masks.shape[-1])
    out = torch.zeros(*masks.shape[:-2], hf, wf)
    if masks.numel():
        out[..., :h4, :w4] = bilinear(masks, (h4, w4))
    return out


def gaussian_radius(box_w: float, box_h: float, min_overlap: float = 0.7) -> int:
    """CornerNet radius in the widely copied variant of spec §2.4 (every root halved, not divided by 2a)."""
    ov = min_overlap
    b1 = box_w + box_h
    c1 = box_w * box_h * (1 - ov) / (1 + ov)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    b2 = 2 * (box_w + box_h)
    c2 = (1 - ov) * box_w * box_h
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    b3 = -2 * ov * (box_w + box_h)
    c3 = (ov - 1) * box_w * box_h
    r3 = (b3 + math.sqrt(max(b3 * b3 - 16 * ov * c3, 0.0))) / 2
    return int(max(0.0, min(r1, r2, r3)))


def gaussian_window(radius: int, sigma_divisor: float = 3.0) -> torch.Tensor:
    """(2r+1)² window, σ = (2r+1)/sigma_divisor, peak 1.0, tiny values zeroed (spec §2.4 step 4)."""
    d = 2 * radius + 1
    sigma = d / sigma_divisor
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    window[window < _GAUSS_FLOOR * window.max()] = 0
    return window.to(torch.float32)


def draw_gaussian(heatmap: torch.Tensor, cy: int, cx: int, radius: int, sigma_divisor: float = 3.0) -> None:
    """Element-wise max of the window centred at (cy, cx) into ``heatmap`` (h×w), clipped at the border."""
    window = gaussian_window(radius, sigma_divisor)
    h, w = heatmap.shape
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    left, right = min(cx, radius), min(w - cx, radius + 1)
    if bottom <= 0 or right <= 0:
        return
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = window[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, patch, out=region)


def mass_centre(mask4: torch.Tensor) -> tuple[float, float] | None:
    """Unweighted mean (column, row) of the non-zero cells of a stride-4 soft mask; None if it is empty."""
    rows, cols = torch.nonzero(mask4, as_tuple=True)
    if rows.numel() == 0:
        return None
    return float(cols.to(torch.float64).mean()), float(rows.to(torch.float64).mean())


def stuff_stride4(
    semantic: torch.Tensor, num_stuff: int, ignore_value: int, hf: int, wf: int
) -> torch.Tensor:
    """Semantic map h×w -> S×Hf×Wf soft one-hot at stride 4; ignore pixels are 0 in every channel."""
    labels = semantic.clone()
    labels[labels == ignore_value] = num_stuff
    if int(labels.min()) < 0 or int(labels.max()) > num_stuff:
        raise ValueError(f"semantic labels must be 0..{num_stuff - 1} or {ignore_value}")
    one_hot = F.one_hot(labels, num_stuff + 1)[..., :num_stuff].permute(2, 0, 1).to(torch.float32)
    return stride4(one_hot, hf, wf)


def level_stuff(stuff4: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Y_l of spec §2.1 step 3: bilinear to the level, clamp to <= 1, values < 0.5 set to 0."""
    y = bilinear(stuff4, size).clamp(max=1.0)
    return torch.where(y < 0.5, torch.zeros_like(y), y)


def build_targets(samples: Sequence[Sample], input_hw: tuple[int, int], params: TargetParams) -> BatchTargets:
    """Targets of a batch whose images are padded to ``input_hw`` (spec §2, §7 ``make_targets``).

    Instances whose stride-4 mask is empty are dropped (spec §2.6: the official code would put a spurious
    peak in the top-left corner); instances outside every INSTANCE_SCALES range keep no thing target.
    """
    input_h, input_w = input_hw
    hf, wf = input_h // 4, input_w // 4
    sizes = level_sizes(input_h, input_w)
    batch = len(samples)
    stuff4 = torch.stack(
        [stuff_stride4(s.semantic, params.num_stuff_classes, params.ignore_value, hf, wf) for s in samples]
    )
    heatmaps = [torch.zeros(batch, params.num_thing_classes, h, w) for h, w in sizes]
    assign: list[list[tuple[int, int, int, int]]] = [[] for _ in sizes]
    thing_masks: list[torch.Tensor] = []
    max_slots = 0
    for b, sample in enumerate(samples):
        slots = 0
        if sample.masks.shape[0] == 0:
            continue
        h, w = sample.masks.shape[-2:]
        h4, w4 = quarter(h, w)
        soft = bilinear(sample.masks.to(torch.float32), (h4, w4))
        for j in range(sample.masks.shape[0]):
            x0, y0, x1, y1 = (float(v) for v in sample.boxes[j])
            box_w, box_h = x1 - x0, y1 - y0
            centre = mass_centre(soft[j]) if params.center_type == "mass" else ((x0 + x1) / 8, (y0 + y1) / 8)
            if centre is None or box_w <= 0 or box_h <= 0 or not soft[j].any():
                continue
            scale = math.sqrt(box_w * box_h)
            levels = [lv for lv, (lo, hi) in enumerate(params.instance_scales) if lo <= scale <= hi]
            if not levels:
                continue
            thing_index = len(thing_masks)
            mask4 = torch.zeros(hf, wf)
            mask4[:h4, :w4] = soft[j]
            thing_masks.append(mask4)
            cls = int(sample.classes[j])
            for lv in levels:
                hl, wl = sizes[lv]
                cx = min(max(int(centre[0] * wl / wf), 0), wl - 1)
                cy = min(max(int(centre[1] * hl / hf), 0), hl - 1)
                radius = gaussian_radius(box_w * wl / input_w, box_h * hl / input_h, params.min_overlap)
                draw_gaussian(heatmaps[lv][b, cls], cy, cx, radius, params.gaussian_sigma)
                assign[lv].append((b, cls, thing_index, slots))
                slots += 1
        max_slots = max(max_slots, slots)
    levels_out = []
    for lv, size in enumerate(sizes):
        rows = torch.tensor(assign[lv], dtype=torch.int64).reshape(-1, 4)
        levels_out.append(
            LevelTargets(
                heatmap=heatmaps[lv],
                stuff=level_stuff(stuff4, size),
                image=rows[:, 0].contiguous(),
                cls=rows[:, 1].contiguous(),
                thing=rows[:, 2].contiguous(),
                slot=rows[:, 3].contiguous(),
            )
        )
    masks = torch.stack(thing_masks) if thing_masks else torch.zeros(0, hf, wf)
    return BatchTargets((input_h, input_w), stuff4, masks, levels_out, max_slots)
