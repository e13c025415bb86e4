"""Host-side post-processing: fixed-size network outputs -> panoptic segmentation of the original image.

Implements spec §5.5 steps 7–8, §5.6 and §5.7 on the outputs of the export boundary
(:class:`panoptic_deploy.modeling.NetworkOutputs`); works on CPU or GPU tensors.

Memory is bounded for large images: the stride-4 maps are resized to the original size a chunk of channels
at a time (at most :data:`RESIZE_CHUNK_BYTES` of float maps; a 640×480 image takes all of them in one chunk,
an 8000×6000 image one at a time), and each chunk is folded into a running arg-max (stuff) or the greedy
merge (things) before the next is resized. Every step is per pixel or per instance in score order, so the
result is exactly that of resizing all maps at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from panoptic_deploy.modeling.panoptic_fcn import InferenceParams, NetworkOutputs


@dataclass(frozen=True)
class Segment:
    """One panoptic segment with the model's contiguous category id (things 0..79, stuff 1..53)."""

    id: int
    category_id: int
    isthing: bool
    area: int
    score: float | None = None
    instance_id: int | None = None


@dataclass
class PanopticResult:
    """Panoptic output at the original image size.

    panoptic_seg: H×W int32 segment ids (0 = void); segments in id order; sem_seg_argmax: H×W stuff label
    (0 = things) used by the merge; instances: the score-sorted instances (classes, scores) that passed
    the score floor, and their binary masks when requested (N×H×W bool).
    """

    panoptic_seg: np.ndarray
    segments: list[Segment]
    sem_seg_argmax: np.ndarray
    instance_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    instance_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    instance_masks: np.ndarray | None = None


# Float32 maps at the original size resized in one go, at most (bytes). 256 MiB: all the maps of a
# COCO-sized image in one chunk (~2 MB each at 640×480), one map of an 8000×6000 image (192 MB).
RESIZE_CHUNK_BYTES = 256 << 20


def maps_per_chunk(probs: torch.Tensor, orig_size: tuple[int, int]) -> int:
    """How many of the N×Hf×Wf stride-4 maps :func:`resize_to_original` takes at once (at least 1)."""
    hf, wf = probs.shape[-2:]
    per_map = 4 * (orig_size[0] * orig_size[1] + 16 * hf * wf)  # float32: the result and the ×4 stage
    return max(1, RESIZE_CHUNK_BYTES // per_map)


def _chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def resize_to_original(
    probs: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> torch.Tensor:
    """Two-step bilinear resize of stride-4 probabilities: N×Hf×Wf -> N×orig_h×orig_w.

    ×4 to the padded input size, crop to the resized image, then resize to the original size (both with
    ``align_corners=False``), as the official post-processing does.
    """
    if probs.shape[0] == 0:
        return probs.new_zeros((0, *orig_size))
    up = F.interpolate(probs[None], scale_factor=4.0, mode="bilinear", align_corners=False)
    up = up[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(up, size=orig_size, mode="bilinear", align_corners=False)[0]


def stuff_label_map(
    stuff_probs: torch.Tensor,
    stuff_present: torch.Tensor,
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
) -> torch.Tensor:
    """Arg-max over the 54-channel semantic score map (absent classes 0): -> orig_h×orig_w int64.

    The present channels are resized a chunk at a time (:func:`maps_per_chunk`) into a running arg-max.
    """
    present = torch.nonzero(stuff_present).flatten()
    if present.numel() == 0:
        return torch.zeros(orig_size, dtype=torch.int64, device=stuff_probs.device)
    best_index: torch.Tensor | None = None
    best = stuff_probs.new_empty(0)
    for start, stop in _chunks(present.numel(), maps_per_chunk(stuff_probs, orig_size)):
        resized = resize_to_original(stuff_probs[present[start:stop]], image_size, orig_size)
        if best_index is None:
            best_index, best = channel_argmax(resized)  # first maximum wins, as in the official arg-max
        else:
            channel_argmax_into(resized, start, best_index, best)
        del resized
    assert best_index is not None
    labels = present[best_index]
    del best_index
    underflow = best <= 0
    if bool(underflow.any()):
        # Probabilities that underflow to 0 everywhere: the official arg-max over all 54 channels then
        # picks the lowest channel, present or absent.
        absent = torch.nonzero(~stuff_present).flatten()
        lowest = min(int(present[0]), int(absent[0])) if absent.numel() else int(present[0])
        labels.masked_fill_(underflow, lowest)
    return labels


def channel_argmax(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C×H×W -> (index H×W int64 of the first maximum over C, as ``argmax(dim=0)``; that maximum H×W).

    On a CPU, torch's reduction over the outer dimension of a C×H×W tensor is slow (87 ms for 53×512×512 on
    2 threads); a running maximum over the contiguous channel planes gives the same indices in 28 ms. With a
    NaN (a broken backend) the two could differ, so such maps take ``argmax``. On a GPU ``argmax`` is one
    kernel and stays.
    """
    if maps.device.type != "cpu" or _has_nan(maps):
        return maps.argmax(dim=0), maps.amax(dim=0)
    best = maps[0].clone()
    index = torch.zeros(maps.shape[1:], dtype=torch.int64)
    _running_argmax(maps[1:], 1, index, best)
    return index, best


def _has_nan(maps: torch.Tensor) -> bool:
    """Whether ``maps`` holds a NaN: its maximum is NaN then (a reduction, ~4x cheaper than ``isnan``)."""
    return maps.numel() > 0 and bool(torch.isnan(maps.amax()))


def _running_argmax(maps: torch.Tensor, offset: int, index: torch.Tensor, best: torch.Tensor) -> None:
    """Fold NaN-free CPU maps (channels ``offset``, ``offset + 1``, ...) into ``index``/``best`` in place."""
    for channel in range(maps.shape[0]):
        # Strictly greater: the first maximum stays.
        index.masked_fill_(maps[channel] > best, offset + channel)
        torch.maximum(best, maps[channel], out=best)


def channel_argmax_into(maps: torch.Tensor, offset: int, index: torch.Tensor, best: torch.Tensor) -> None:
    """Continue :func:`channel_argmax` over more channels: fold C×H×W ``maps`` (channels ``offset`` ...
    ``offset + C - 1``) into the running ``index``/``best`` of the channels before them, in place, so that
    the result equals ``argmax``/``amax`` over all channels at once (first maximum; a NaN is the maximum)."""
    if maps.device.type == "cpu" and not _has_nan(maps) and not _has_nan(best):
        _running_argmax(maps, offset, index, best)
        return
    chunk_index, chunk_best = maps.argmax(dim=0), maps.amax(dim=0)
    # Strictly greater keeps the earlier channel on ties; a NaN wins over a number, an earlier NaN stays.
    better = (chunk_best > best) | (torch.isnan(chunk_best) & ~torch.isnan(best))
    index.copy_(torch.where(better, chunk_index + offset, index))
    best.copy_(torch.where(better, chunk_best, best))


def postprocess(
    outputs: NetworkOutputs | Mapping[str, torch.Tensor | np.ndarray],
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
    params: InferenceParams,
    with_instance_masks: bool = False,
) -> PanopticResult:
    """Network outputs (torch or numpy, any device) -> :class:`PanopticResult` at ``orig_size``.

    Only instances that can enter the panoptic map (score >= COMBINE.INST_THRESH) are resized unless
    ``with_instance_masks`` asks for all of them.
    """
    out = _as_tensors(outputs)
    valid = out["inst_valid"].to(torch.bool)
    scores = out["inst_scores"][valid]
    classes = out["inst_classes"][valid].to(torch.int64)
    probs = out["inst_probs"][valid]
    # Instances arrive sorted by score; keep that order explicitly in case a backend reorders ties.
    order = torch.argsort(scores, descending=True, stable=True)
    scores, classes, probs = scores[order], classes[order], probs[order]

    num_combined = int((scores >= params.combine_inst_thresh).sum()) if params.combine_enable else 0
    stuff_label = stuff_label_map(
        out["stuff_probs"], out["stuff_present"].to(torch.bool), image_size, orig_size
    )

    masks = None
    if with_instance_masks:  # every instance's mask at full size, as asked (memory grows with the image)
        masks = resize_to_original(probs, image_size, orig_size) > params.inst_thres
    panoptic = torch.zeros(orig_size, dtype=torch.int32, device=stuff_label.device)
    segments: list[Segment] = []
    if params.combine_enable:
        if masks is not None:
            greedy = merge_greedy(masks[:num_combined], params.overlap_thresh)
        else:  # a chunk of instances at a time, in score order, through the greedy merge
            greedy = GreedyState.empty(orig_size, probs.device)
            for start, stop in _chunks(num_combined, maps_per_chunk(probs, orig_size)):
                chunk = resize_to_original(probs[start:stop], image_size, orig_size) > params.inst_thres
                merge_greedy(chunk, params.overlap_thresh, greedy, start)
                del chunk
        panoptic, segments = assemble_panoptic(
            greedy, num_combined, classes[:num_combined], scores[:num_combined], stuff_label, params
        )
    return PanopticResult(
        panoptic_seg=panoptic.cpu().numpy(),
        segments=segments,
        sem_seg_argmax=stuff_label.cpu().numpy(),
        instance_classes=classes.cpu().numpy(),
        instance_scores=scores.cpu().numpy(),
        instance_masks=masks.cpu().numpy() if masks is not None else None,
    )


def merge_panoptic(
    masks: torch.Tensor,
    classes: torch.Tensor,
    scores: torch.Tensor,
    stuff_label: torch.Tensor,
    params: InferenceParams,
) -> tuple[torch.Tensor, list[Segment]]:
    """The official greedy merge (spec §5.7): things by score, then stuff on the remaining pixels.

    masks N×H×W bool (score-sorted, all with score >= COMBINE.INST_THRESH), classes N, scores N,
    stuff_label H×W -> (panoptic H×W int32, segments).
    """
    greedy = merge_greedy(masks, params.overlap_thresh)
    return assemble_panoptic(greedy, masks.shape[0], classes, scores, stuff_label, params)


def assemble_panoptic(
    greedy: GreedyState,
    num_instances: int,
    classes: torch.Tensor,
    scores: torch.Tensor,
    stuff_label: torch.Tensor,
    params: InferenceParams,
) -> tuple[torch.Tensor, list[Segment]]:
    """Segments and the panoptic id map from the finished greedy thing merge of ``num_instances``
    instances (``classes``, ``scores``): accepted things in score order, then stuff on the free pixels."""
    device = stuff_label.device
    accepted, owner = greedy.accepted, greedy.owner
    segments: list[Segment] = []
    lookup = torch.zeros(num_instances + 1, dtype=torch.int32, device=device)
    if accepted:
        pixel_counts = torch.bincount(owner.flatten(), minlength=num_instances + 1).tolist()
        class_list, score_list = classes.tolist(), scores.tolist()
        for index in accepted:
            segment_id = len(segments) + 1
            lookup[index + 1] = segment_id
            segments.append(
                Segment(
                    segment_id,
                    int(class_list[index]),
                    True,
                    int(pixel_counts[index + 1]),
                    float(score_list[index]),
                    index,
                )
            )
    panoptic = lookup[owner]

    free = owner == 0
    del greedy, owner
    num_labels = int(stuff_label.max()) + 1
    free_counts = torch.bincount(stuff_label[free], minlength=num_labels).tolist()
    stuff_lookup = torch.zeros(num_labels, dtype=torch.int32, device=device)
    for label in range(1, num_labels):  # label 0 is the merged "things" class
        if free_counts[label] < params.stuff_area_limit:
            continue
        segment_id = len(segments) + 1
        stuff_lookup[label] = segment_id
        segments.append(Segment(segment_id, label, False, int(free_counts[label])))
    panoptic = torch.where(free, stuff_lookup[stuff_label], panoptic)
    return panoptic, segments


# The greedy thing merge, two exact ways. Instance i (in score order) is accepted when its mask is not empty
# and overlap_i / area_i <= OVERLAP_THRESH, where overlap_i counts its pixels already taken by accepted
# instances before it; it then owns its pixels that are still free. Both return the accepted indices and the
# owner map H×W int32 (index + 1, 0 = free); tests/test_postprocess.py holds them equal. Both can go on from
# a GreedyState: the masks of the instances offset, offset + 1, ... after those already merged into it.


@dataclass
class GreedyState:
    """The greedy merge so far: ``owner`` H×W int32 (index + 1 of the owning instance, 0 = free), ``taken``
    H×W bool (owned by an accepted instance), ``accepted`` instance indices in score order."""

    owner: torch.Tensor
    taken: torch.Tensor
    accepted: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, size: tuple[int, ...], device: torch.device | str) -> GreedyState:
        owner = torch.zeros(size, dtype=torch.int32, device=device)
        return cls(owner, torch.zeros(size, dtype=torch.bool, device=device))


def merge_greedy(
    masks: torch.Tensor, overlap_thresh: float, state: GreedyState | None = None, offset: int = 0
) -> GreedyState:
    """Merge N×H×W bool ``masks`` (instances ``offset`` ... ``offset + N - 1``) into ``state`` (a new one if
    None) with the strategy of their device: sequential on a CPU, batched on a GPU."""
    state = state if state is not None else GreedyState.empty(tuple(masks.shape[1:]), masks.device)
    greedy = greedy_things_batched if masks.device.type == "cuda" else greedy_things_sequential
    greedy(masks, overlap_thresh, state, offset)
    return state


def _rejects(overlap: torch.Tensor, area: torch.Tensor, overlap_thresh: float) -> torch.Tensor:
    """The official test, in float64 as the official code divides: empty, or too much already taken."""
    return (area <= 0) | (overlap / area.clamp(min=1) > overlap_thresh)


def greedy_things_sequential(
    masks: torch.Tensor, overlap_thresh: float, state: GreedyState | None = None, offset: int = 0
) -> tuple[list[int], torch.Tensor]:
    """One instance at a time, deciding on the host: cheap where a host read is free (CPU tensors).

    A rejected instance (most of them: duplicates) costs two passes over its mask; an accepted one four.
    """
    state = state if state is not None else GreedyState.empty(tuple(masks.shape[1:]), masks.device)
    owner, taken, accepted = state.owner, state.taken, state.accepted
    for index in range(masks.shape[0]):
        mask = masks[index]
        # Per mask: torch's CPU reduction of an N×(H·W) bool tensor along dim 1 is ~20x slower than N
        # reductions of its contiguous rows (110 vs 6 ms for 94 masks of 512×512, 2 threads).
        area = torch.count_nonzero(mask).to(torch.float64)
        overlap = torch.count_nonzero(mask & taken).to(torch.float64)
        if bool(_rejects(overlap, area, overlap_thresh)):
            continue
        owner.masked_fill_(mask & ~taken, offset + index + 1)
        taken |= mask
        accepted.append(offset + index)
    return accepted, owner


def greedy_things_batched(
    masks: torch.Tensor, overlap_thresh: float, state: GreedyState | None = None, offset: int = 0
) -> tuple[list[int], torch.Tensor]:
    """Accepted instance by accepted instance: for GPUs, where each kernel launch and host read costs.

    ``taken`` changes only when an instance is accepted, so the overlaps of all later instances with it are
    computed in one batched pass; every instance before the first that passes is rejected, that one is
    accepted, and the search goes on after it. One host read per accepted instance (plus one), a handful of
    kernels each, instead of about fifteen kernels per instance.
    """
    state = state if state is not None else GreedyState.empty(tuple(masks.shape[1:]), masks.device)
    owner, taken, accepted = state.owner, state.taken, state.accepted
    areas = masks.flatten(1).sum(dim=1, dtype=torch.float64)
    start = 0
    while start < masks.shape[0]:
        rest = masks[start:]
        overlaps = (rest & taken).flatten(1).sum(dim=1, dtype=torch.float64)
        passing = torch.nonzero(~_rejects(overlaps, areas[start:], overlap_thresh))[:1].flatten().tolist()
        if not passing:
            break
        index = start + int(passing[0])
        mask = masks[index]
        owner.masked_fill_(mask & ~taken, offset + index + 1)
        taken |= mask
        accepted.append(offset + index)
        start = index + 1
    return accepted, owner


def _as_tensors(outputs: NetworkOutputs | Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    items = outputs._asdict().items() if isinstance(outputs, NetworkOutputs) else outputs.items()
    result: dict[str, torch.Tensor] = {}
    for name, value in items:
        tensor = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value
        # Reduced-precision backends may return FP16 maps; the thresholds are applied in FP32 (or FP64).
        result[name] = tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
    return result
