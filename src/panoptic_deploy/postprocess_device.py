"""Device-side post-processing with fixed shapes: the merge and resize of :mod:`panoptic_deploy.postprocess`
without a host synchronisation, so that a CUDA graph can capture it with the network.

The host algorithm reads data-dependent sizes (how many instances are valid and pass the merge threshold,
which stuff classes are present, which instances the greedy merge accepts) and loops over them on the host.
Here every such set is a fixed-size mask instead: all T instance slots are sorted (invalid ones last) and
resized, the greedy merge runs over all T slots with an ``eligible`` flag, the stuff arg-max covers all S
channels with the absent ones at -inf, and the segment ids come from cumulative sums. Every step is per pixel
or per instance in the host's score order, so the result equals :func:`postprocess.postprocess` (without
instance masks) exactly; tests/test_postprocess_device.py holds them equal on random scenes.

:func:`postprocess_on_device` returns one int32 tensor on the device (:class:`PackedLayout`); one
device-to-host copy of it and :func:`unpack_result` give the :class:`PanopticResult`.
Memory: all (T + S) maps at the original size at once, (T + S)·H·W·4 bytes (190 MB for T = 100 and COCO's
S = 54 at 640×480); the host path bounds it with chunks instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from panoptic_deploy.modeling.panoptic_fcn import InferenceParams, NetworkOutputs
from panoptic_deploy.postprocess import PanopticResult, Segment, _as_tensors, _rejects, resize_to_original


@dataclass(frozen=True)
class PackedLayout:
    """Where each part lies in the packed int32 result of :func:`postprocess_on_device`, in this order:
    panoptic H·W, stuff labels H·W, then per instance slot in score order (T each) the score's float32
    bits, class, valid flag, accepted flag and pixel count, then per stuff channel (S each) the free-pixel
    count and the kept flag."""

    orig_size: tuple[int, int]
    slots: int
    stuff: int

    @property
    def length(self) -> int:
        return 2 * self.orig_size[0] * self.orig_size[1] + 5 * self.slots + 2 * self.stuff

    def split(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """The named parts of a packed host array (views, no copies)."""
        if packed.shape != (self.length,):
            raise ValueError(f"packed result of shape {packed.shape}, the layout needs ({self.length},)")
        pixels = self.orig_size[0] * self.orig_size[1]
        sizes = {"panoptic": pixels, "stuff_label": pixels}
        sizes.update(dict.fromkeys(("score_bits", "classes", "valid", "accepted", "thing_area"), self.slots))
        sizes.update(dict.fromkeys(("stuff_area", "stuff_keep"), self.stuff))
        parts, start = {}, 0
        for name, size in sizes.items():
            parts[name] = packed[start : start + size]
            start += size
        for name in ("panoptic", "stuff_label"):
            parts[name] = parts[name].reshape(self.orig_size)
        return parts


def postprocess_on_device(
    outputs: NetworkOutputs | Mapping[str, torch.Tensor],
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
    params: InferenceParams,
) -> torch.Tensor:
    """Network outputs on any device -> the packed int32 result (:class:`PackedLayout`) on that device.

    No host synchronisation for CUDA tensors: fixed shapes, no ``nonzero``/``unique``/boolean indexing and
    no Python value read from a tensor.
    """
    out = _as_tensors(outputs)
    valid = out["inst_valid"].to(torch.bool)
    # Invalid slots at -inf sort last; the valid ones keep the host's order (stable, by score descending).
    keys = torch.where(valid, out["inst_scores"], torch.full_like(out["inst_scores"], -float("inf")))
    order = torch.argsort(keys, descending=True, stable=True)
    scores, valid = out["inst_scores"][order], valid[order]
    classes = out["inst_classes"][order].to(torch.int64)
    eligible = valid & (scores >= params.combine_inst_thresh) & params.combine_enable
    present = out["stuff_present"].to(torch.bool)
    stuff_label = _stuff_labels(out["stuff_probs"], present, image_size, orig_size)
    masks = resize_to_original(out["inst_probs"][order], image_size, orig_size) > params.inst_thres
    owner, accepted = greedy_fixed(masks, eligible, params.overlap_thresh)
    del masks
    panoptic, thing_area, stuff_area, stuff_keep = _assemble(
        owner, accepted, stuff_label, out["stuff_probs"].shape[0], params
    )
    parts = (
        panoptic,
        stuff_label,
        scores.to(torch.float32).view(torch.int32),
        classes,
        valid,
        accepted,
        thing_area,
        stuff_area,
        stuff_keep,
    )
    return torch.cat([part.flatten().to(torch.int32) for part in parts])


def _stuff_labels(
    stuff_probs: torch.Tensor, present: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> torch.Tensor:
    """The host's :func:`postprocess.stuff_label_map` over all S channels: absent ones at -inf, so the first
    maximum is the first present one; where the best is <= 0 (underflow, or nothing present) the host picks
    the lowest channel of all, which is 0."""
    resized = resize_to_original(stuff_probs, image_size, orig_size)
    masked = torch.where(present[:, None, None], resized, torch.full_like(resized, -float("inf")))
    del resized
    index, best = masked.argmax(dim=0), masked.amax(dim=0)
    return torch.where(best <= 0, torch.zeros_like(index), index)


def greedy_fixed(
    masks: torch.Tensor, eligible: torch.Tensor, overlap_thresh: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy thing merge over all N slots of N×H×W bool ``masks``, deciding on the device.

    Slot i is accepted when ``eligible[i]``, its mask is not empty and its overlap with the pixels already
    taken is at most ``overlap_thresh`` of its area (the host's test, in float64); it then owns its free
    pixels. -> (owner H×W int32: slot + 1, 0 = free; accepted N bool). N steps of a few kernels each.
    """
    owner = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    taken = torch.zeros(masks.shape[1:], dtype=torch.bool, device=masks.device)
    take = torch.empty_like(taken)
    areas = torch.count_nonzero(masks.flatten(1), dim=1).to(torch.float64)
    accepted = []
    for index in range(masks.shape[0]):
        # In place, a handful of kernels per slot; count_nonzero is the fast bool reduction on a CPU.
        torch.logical_and(masks[index], taken, out=take)
        overlap = torch.count_nonzero(take).to(torch.float64)
        ok = eligible[index] & ~_rejects(overlap, areas[index], overlap_thresh)
        torch.logical_and(masks[index], ok, out=take)
        owner.masked_fill_(take & ~taken, index + 1)
        taken |= take
        accepted.append(ok)
    if not accepted:
        return owner, torch.zeros(0, dtype=torch.bool, device=masks.device)
    return owner, torch.stack(accepted)


def _assemble(
    owner: torch.Tensor,
    accepted: torch.Tensor,
    stuff_label: torch.Tensor,
    stuff: int,
    params: InferenceParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The host's :func:`postprocess.assemble_panoptic` with fixed shapes: accepted things get ids 1..K in
    score order, then each stuff label 1..max label with at least STUFF_AREA_LIMIT free pixels the next ids.
    -> (panoptic H×W int32, thing pixel counts N, stuff free-pixel counts S, stuff kept S bool)."""
    device, slots = owner.device, accepted.shape[0]
    owner_flat = owner.flatten().to(torch.int64)
    ones = torch.ones_like(owner_flat)
    thing_area = torch.zeros(slots + 1, dtype=torch.int64, device=device).scatter_add_(0, owner_flat, ones)
    thing_ids = torch.cumsum(accepted, 0, dtype=torch.int32) * accepted
    lookup = torch.cat([torch.zeros(1, dtype=torch.int32, device=device), thing_ids])
    panoptic = lookup[owner_flat].view(owner.shape)

    free = owner == 0
    # Labels on taken pixels go to an extra bin S, dropped after the count (no boolean indexing).
    binned = torch.where(free, stuff_label, torch.full_like(stuff_label, stuff)).flatten()
    stuff_bins = torch.zeros(stuff + 1, dtype=torch.int64, device=device)
    stuff_area = stuff_bins.scatter_add_(0, binned, ones)[:stuff]
    labels = torch.arange(stuff, device=device)
    # The host counts labels 1 .. max label of the whole map (0 is the merged "things" class).
    stuff_keep = (stuff_area >= params.stuff_area_limit) & (labels >= 1) & (labels <= stuff_label.max())
    stuff_keep &= params.combine_enable
    things = accepted.sum(dtype=torch.int32)
    stuff_ids = (things + torch.cumsum(stuff_keep, 0, dtype=torch.int32)) * stuff_keep
    panoptic = torch.where(free, stuff_ids[stuff_label], panoptic)
    return panoptic, thing_area[1:], stuff_area, stuff_keep


def unpack_result(packed: np.ndarray | torch.Tensor, layout: PackedLayout) -> PanopticResult:
    """The host copy of :func:`postprocess_on_device`'s result -> :class:`PanopticResult` (no instance
    masks), as :func:`postprocess.postprocess` gives it."""
    host = packed.numpy() if isinstance(packed, torch.Tensor) else np.asarray(packed)
    parts = layout.split(host)
    scores = parts["score_bits"].view(np.float32)
    valid = parts["valid"].astype(bool)
    segments: list[Segment] = []
    for index in np.flatnonzero(parts["accepted"]).tolist():
        area = int(parts["thing_area"][index])
        cat = int(parts["classes"][index])
        segments.append(Segment(len(segments) + 1, cat, True, area, float(scores[index]), index))
    for label in np.flatnonzero(parts["stuff_keep"]).tolist():
        segments.append(Segment(len(segments) + 1, label, False, int(parts["stuff_area"][label])))
    num_valid = int(valid.sum())
    return PanopticResult(
        panoptic_seg=parts["panoptic"].copy(),
        segments=segments,
        sem_seg_argmax=parts["stuff_label"].astype(np.int64),
        instance_classes=parts["classes"][:num_valid].astype(np.int64),
        instance_scores=scores[:num_valid].copy(),
    )
