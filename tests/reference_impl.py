"""The straightforward PanopticFCN inference of spec §5–§6, written for tests only.

Data-dependent shapes, boolean indexing, ``unique`` and Python loops, exactly as the official post-processing
is described. The fixed-size export path (``PanopticFCN.decode`` + ``postprocess``) must give the same
panoptic output.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from panoptic_deploy.modeling.panoptic_fcn import CENTER_POOL_SIZES, HeadOutputs, PanopticFCN
from panoptic_deploy.postprocess import PanopticResult, Segment


def resize_to_original(
    probs: torch.Tensor, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> torch.Tensor:
    """The official post-processing resize, written out here (not taken from the code under test): stride-4
    maps N×Hf×Wf up ×4 (bilinear, align_corners=False), cropped to the resized image, then resized to the
    original size the same way."""
    if probs.shape[0] == 0:
        return probs.new_zeros((0, *orig_size))
    up = F.interpolate(probs[None], scale_factor=4, mode="bilinear", align_corners=False)
    cropped = up[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(cropped, size=orig_size, mode="bilinear", align_corners=False)[0]


def reference_inference(
    model: PanopticFCN, heads: HeadOutputs, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> PanopticResult:
    p = model.inference
    hf, wf = heads.encoded.shape[-2:]
    encoded = heads.encoded.reshape(heads.encoded.shape[0], -1)

    # Thing candidates per level, then concatenated and re-sorted (spec §5.1).
    th_score, th_cls, th_feat = [], [], []
    for centre, kernel, pool in zip(heads.centre_logits, heads.kernels, CENTER_POOL_SIZES, strict=True):
        hw = centre.shape[1] * centre.shape[2]
        c = torch.sigmoid(centre)[None]
        c = (c + F.avg_pool2d(c, pool, 1, (pool - 1) // 2, count_include_pad=True)) / 2
        c = c * (F.max_pool2d(c, 3, 1, 1) == c)
        s, idx = torch.topk(c.flatten(), min(hw, p.top_num // 2))
        ok = s > p.thing_thres
        th_score.append(s[ok])
        th_cls.append(idx[ok] // hw)
        th_feat.append(kernel.reshape(kernel.shape[0], -1)[:, idx[ok] % hw].t())
    score = torch.cat(th_score)
    masks_s4 = torch.zeros(0, hf * wf, dtype=encoded.dtype)
    classes = torch.zeros(0, dtype=torch.int64)
    if score.numel():
        order = torch.argsort(score, descending=True)
        score, classes = score[order], torch.cat(th_cls)[order]
        weights = model.thing_generator(torch.cat(th_feat)[order])
        # Fusion (spec §5.3), row by row.
        n = weights.shape[0]
        norms = weights.norm(dim=1).clamp(min=1e-8)
        sim = (weights @ weights.t()) / (norms[:, None] * norms[None, :])
        sim_rows, cls_list = sim.tolist(), classes.tolist()
        claimed_by: list[int | None] = [None] * n
        for i in range(n):
            for j in range(i, n):
                same = cls_list[i] == cls_list[j] or not p.class_specific
                if claimed_by[j] is None and same and sim_rows[i][j] >= p.similar_thres:
                    claimed_by[j] = i
        kept = [i for i in range(n) if claimed_by[i] == i]
        fused = torch.stack([weights[[j for j in range(n) if claimed_by[j] == i]].mean(0) for i in kept])
        score, classes = score[kept], classes[kept]
        probs = torch.sigmoid(fused @ encoded)
        binary = probs > p.inst_thres
        score = score * (probs * binary).sum(1) / (binary.sum(1) + 1e-6)
        order = torch.argsort(score, descending=True)
        score, classes, probs = score[order], classes[order], probs[order]
        keep = score >= 0.05
        score, classes, probs = score[keep][: p.top_num], classes[keep][: p.top_num], probs[keep][: p.top_num]
        masks_s4 = probs

    # Stuff candidates per level with unique (spec §5.2), fused by class (§5.3).
    st_score, st_cls, st_feat = [], [], []
    for region, kernel in zip(heads.region_logits, heads.kernels, strict=True):
        r = torch.sigmoid(region).reshape(region.shape[0], -1)
        lab = r.argmax(0)
        flat_kernel = kernel.reshape(kernel.shape[0], -1)
        for u in torch.unique(lab).tolist():
            region_mask = lab == u
            sc = r[u][region_mask].sum() / region_mask.sum()
            if sc > p.stuff_thres:
                st_score.append(sc)
                st_cls.append(u)
                st_feat.append(flat_kernel[:, region_mask].sum(1) / flat_kernel.shape[1])
    num_stuff = heads.region_logits[0].shape[0]
    sem = torch.zeros(num_stuff, *orig_size, dtype=encoded.dtype)
    if st_cls:
        cls_t = torch.tensor(st_cls)
        kernels = model.stuff_generator(torch.stack(st_feat))
        present = torch.unique(cls_t)
        fused_st = torch.stack([kernels[cls_t == v].mean(0) for v in present.tolist()])
        stuff_probs = torch.sigmoid(fused_st @ encoded).reshape(-1, hf, wf)
        sem[present] = resize_to_original(stuff_probs, image_size, orig_size)
    stuff_label = sem.argmax(0)

    masks = resize_to_original(masks_s4.reshape(-1, hf, wf), image_size, orig_size) > p.inst_thres
    combine = (score >= p.combine_inst_thresh) if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
    panoptic, segments = reference_merge(
        masks[combine].numpy(), classes[combine].tolist(), score[combine].tolist(), stuff_label.numpy(), model
    )
    return PanopticResult(
        panoptic_seg=panoptic,
        segments=segments,
        sem_seg_argmax=stuff_label.numpy(),
        instance_classes=classes.numpy(),
        instance_scores=score.numpy(),
    )


def reference_merge(
    masks: np.ndarray, classes: list[int], scores: list[float], stuff_label: np.ndarray, model: PanopticFCN
) -> tuple[np.ndarray, list[Segment]]:
    """The greedy panoptic merge, literally as the pseudo-code of spec §5.7 (NumPy)."""
    p = model.inference
    pan = np.zeros(stuff_label.shape, np.int32)
    segments: list[Segment] = []
    for idx, (instance_mask, cls, score) in enumerate(zip(masks, classes, scores, strict=True)):
        area = int(instance_mask.sum())
        inter = int((instance_mask & (pan > 0)).sum())
        if area == 0 or inter / area > p.overlap_thresh:
            continue
        mask = instance_mask & (pan == 0) if inter > 0 else instance_mask
        pan[mask] = len(segments) + 1
        segments.append(Segment(len(segments) + 1, int(cls), True, int(mask.sum()), float(score), idx))
    for lab in np.unique(stuff_label).tolist():
        if lab == 0:
            continue
        mask = (stuff_label == lab) & (pan == 0)
        if int(mask.sum()) < p.stuff_area_limit:
            continue
        pan[mask] = len(segments) + 1
        segments.append(Segment(len(segments) + 1, int(lab), False, int(mask.sum())))
    return pan, segments
