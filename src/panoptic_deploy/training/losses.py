"""PanopticFCN's training losses (training spec §3.3–§4): focal position losses and weighted dice.

Vectorised over the batch: thing kernels of every assignment of every level are predicted with one
batched matrix product per batch (slots), stuff kernels with one per level. Losses run in float32 even
when the network ran under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.training.targets import GUIDANCE_THRESHOLD, BatchTargets, bilinear

DICE_EPS = 1e-8
WEIGHT_EPS = 1e-8


@dataclass(frozen=True)
class LossParams:
    """Loss weights and focal parameters (spec §0, §4) and ``POS_NUM`` (spec §3.3)."""

    position_weight: float = 1.0
    segment_weight: float = 3.0
    alpha: float = 0.25
    gamma: float = 2.0
    pos_num: int = 7

    @classmethod
    def from_config(cls, cfg: object) -> LossParams:
        m = cfg.MODEL  # type: ignore[attr-defined]
        return cls(
            position_weight=float(m.LOSS_WEIGHT.POSITION),
            segment_weight=float(m.LOSS_WEIGHT.SEGMENT),
            alpha=float(m.LOSS_WEIGHT.FOCAL_LOSS_ALPHA),
            gamma=float(m.LOSS_WEIGHT.FOCAL_LOSS_GAMMA),
            pos_num=int(m.POSITION_HEAD.THING.POS_NUM),
        )


@dataclass
class HeadBatch:
    """Raw head outputs of a batch: encoded E (B×64×Hf×Wf) and per level p3..p7 the centre logits
    (B×C×Hl×Wl), region logits (B×S×Hl×Wl) and kernel features (B×D×Hl×Wl)."""

    encoded: torch.Tensor
    centre_logits: list[torch.Tensor]
    region_logits: list[torch.Tensor]
    kernels: list[torch.Tensor]


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise sigmoid focal loss with soft targets (spec §4.1); BCE from the logit."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − 2ΣPT / max(ΣP² + ΣT², 1e-8) over the last dimension (spec §4.3; no smoothing constant)."""
    inter = (probs * targets).sum(-1)
    denom = (probs * probs).sum(-1) + (targets * targets).sum(-1)
    return 1 - 2 * inter / denom.clamp(min=DICE_EPS)


def guided_topk(
    centre_logits: torch.Tensor, guidance_mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §3.3 steps 2–4: J×P centre logits (the assignment's class channel), J×P boolean region ->
    (weights J×K, cell indices J×K). Guidance keeps its gradient; empty guidance gives all-zero weights."""
    guidance = torch.where(guidance_mask, torch.sigmoid(centre_logits), torch.zeros_like(centre_logits))
    scores, index = torch.topk(guidance, min(k, guidance.shape[1]), dim=1)
    weights = scores / scores.sum(dim=1, keepdim=True).clamp(min=WEIGHT_EPS)
    return weights, index


def panoptic_losses(
    heads: HeadBatch,
    targets: BatchTargets,
    thing_generator: nn.Module,
    stuff_generator: nn.Module,
    params: LossParams,
) -> dict[str, torch.Tensor]:
    """``loss_pos_th``, ``loss_pos_st``, ``loss_seg_th``, ``loss_seg_st`` (weighted, spec §4.2–§4.4)."""
    encoded = heads.encoded.float()
    batch = encoded.shape[0]
    flat_e = encoded.flatten(2)  # B × E × Hf·Wf
    n_th = targets.num_assignments
    norm_th = max(n_th, 1)
    pos_th = encoded.new_zeros(())
    pos_st = encoded.new_zeros(())
    seg_st_sum = encoded.new_zeros(())
    n_st = encoded.new_zeros(())
    thing_kernels: list[torch.Tensor] = []
    thing_weights: list[torch.Tensor] = []
    thing_rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for lv, level in enumerate(targets.levels):
        centre = heads.centre_logits[lv].float()
        region = heads.region_logits[lv].float()
        kernels = heads.kernels[lv].float()
        hl, wl = centre.shape[-2:]
        pos_th = pos_th + focal_loss(centre, level.heatmap, params.alpha, params.gamma).sum()
        pos_st = pos_st + focal_loss(region, level.stuff, params.alpha, params.gamma).mean(dim=(2, 3)).sum()
        flat_k = kernels.flatten(2)  # B × D × P
        # Stuff (spec §3.4): region sum over the whole level area, one kernel per present (image, class).
        regions = (level.stuff > 0).to(flat_k.dtype).flatten(2)  # B × S × P
        present = regions.sum(-1) > 0  # B × S
        pooled = torch.bmm(regions, flat_k.transpose(1, 2)) / (hl * wl)  # B × S × D
        stuff_logits = torch.bmm(stuff_generator(pooled), flat_e)  # B × S × Hf·Wf
        stuff_dice = dice_loss(torch.sigmoid(stuff_logits), targets.stuff4.flatten(2))
        seg_st_sum = seg_st_sum + (stuff_dice * present).sum()
        n_st = n_st + present.sum()  # a tensor: no host synchronisation per level
        if level.image.numel() == 0:
            continue
        # Things (spec §3.3): guidance inside the level-resampled mask, top-K, weighted kernels.
        guide = bilinear(targets.thing_masks[level.thing], (hl, wl)).flatten(1) > GUIDANCE_THRESHOLD
        logits = centre.flatten(2)[level.image, level.cls]  # J × P
        weights, cells = guided_topk(logits, guide, params.pos_num)
        feats = flat_k[level.image]  # J × D × P
        picked = torch.gather(feats, 2, cells[:, None, :].expand(-1, feats.shape[1], -1)).transpose(1, 2)
        thing_kernels.append(thing_generator(picked))  # J × K × E
        thing_weights.append(weights)
        thing_rows.append((level.image, level.slot, level.thing))
    losses = {
        "loss_pos_th": params.position_weight * pos_th / norm_th,
        "loss_pos_st": params.position_weight * pos_st / batch,
        "loss_seg_st": params.segment_weight * seg_st_sum / n_st.clamp(min=1),
    }
    if thing_kernels:
        kernels_all = torch.cat(thing_kernels)  # J × K × E
        weights_all = torch.cat(thing_weights)
        image = torch.cat([r[0] for r in thing_rows])
        slot = torch.cat([r[1] for r in thing_rows])
        thing = torch.cat([r[2] for r in thing_rows])
        k = kernels_all.shape[1]
        # One batched product: each image's kernels in slots, against that image's encoded feature.
        slotted = kernels_all.new_zeros(batch, targets.slots_per_image, k, kernels_all.shape[2])
        slotted = slotted.index_put((image, slot), kernels_all)
        masks = torch.bmm(slotted.flatten(1, 2), flat_e).view(batch, targets.slots_per_image, k, -1)
        probs = torch.sigmoid(masks[image, slot])  # J × K × Hf·Wf
        dice = dice_loss(probs, targets.thing_masks[thing].flatten(1)[:, None, :])
        losses["loss_seg_th"] = params.segment_weight * (weights_all * dice).sum() / norm_th
    else:
        # Keep every parameter in the graph (as the official code does for DDP) with a zero term.
        losses["loss_seg_th"] = sum(p.sum() for p in thing_generator.parameters()) * 0.0  # type: ignore[assignment]
    return losses
