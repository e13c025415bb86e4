"""Training targets and losses against the hand-computed values of training spec §8 (items 1-9)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from panoptic_deploy.training.losses import (
    HeadBatch,
    LossParams,
    dice_loss,
    focal_loss,
    guided_topk,
    panoptic_losses,
)
from panoptic_deploy.training.targets import (
    Sample,
    TargetParams,
    bilinear,
    build_targets,
    gaussian_radius,
    level_sizes,
    quarter,
)

SCALES = ((1.0, 64.0), (32.0, 128.0), (64.0, 256.0), (128.0, 512.0), (256.0, 2048.0))
PARAMS = TargetParams(num_thing_classes=80, num_stuff_classes=54, instance_scales=SCALES)


def spec_scene(cls: int = 7) -> Sample:
    """Spec §8.1: 256×256, one square thing (rows 16–47, columns 8–39), stuff 1 above row 128, 2 below,
    columns 224–255 ignore."""
    masks = torch.zeros(1, 256, 256, dtype=torch.bool)
    masks[0, 16:48, 8:40] = True
    semantic = torch.ones(256, 256, dtype=torch.int64)
    semantic[128:] = 2
    semantic[masks[0]] = 0
    semantic[:, 224:] = 255
    return Sample(
        image=torch.zeros(3, 256, 256),
        semantic=semantic,
        classes=torch.tensor([cls]),
        masks=masks,
        boxes=torch.tensor([[8.0, 16.0, 40.0, 48.0]]),
    )


def test_spec_scene_thing_targets() -> None:
    t = build_targets([spec_scene()], (256, 256), PARAMS)
    expected_mask = torch.zeros(64, 64)
    expected_mask[4:12, 2:10] = 1.0
    assert torch.equal(t.thing_masks[0], expected_mask)
    # Assigned to p3 and p4 only (s = 32).
    assert [lv.image.numel() for lv in t.levels] == [1, 1, 0, 0, 0]
    assert t.num_assignments == 2
    p3 = t.levels[0].heatmap[0]
    expected = torch.zeros(32, 32)
    expected[3, 2] = 1.0
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        expected[3 + dy, 2 + dx] = math.exp(-0.5)
    for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        expected[3 + dy, 2 + dx] = math.exp(-1.0)
    torch.testing.assert_close(p3[7], expected)
    assert float(p3[7, 3, 3]) == pytest.approx(0.60653, abs=1e-5)
    assert float(p3[7, 2, 3]) == pytest.approx(0.36788, abs=1e-5)
    assert float(p3.sum() - p3[7].sum()) == 0.0  # other channels untouched
    p4 = t.levels[1].heatmap[0, 7]
    assert float(p4[1, 1]) == 1.0 and float(p4.sum()) == 1.0


def test_spec_scene_guidance_regions() -> None:
    t = build_targets([spec_scene()], (256, 256), PARAMS)
    g3 = bilinear(t.thing_masks[0], (32, 32))
    region3 = g3 > 0.1
    expected3 = torch.zeros(32, 32, dtype=torch.bool)
    expected3[2:6, 1:5] = True
    assert torch.equal(region3, expected3)
    assert torch.all(g3[region3] == 1.0)
    g4 = bilinear(t.thing_masks[0], (16, 16))
    assert torch.equal((g4 > 0.1).nonzero()[:, 0].unique(), torch.tensor([1, 2]))
    torch.testing.assert_close(g4[1:3, 0:3], torch.tensor([[0.5, 1.0, 0.5], [0.5, 1.0, 0.5]]))
    assert int((g4 > 0.1).sum()) == 6


def test_spec_scene_stuff_targets() -> None:
    t = build_targets([spec_scene()], (256, 256), PARAMS)
    s4 = t.stuff4[0]
    assert float(s4[:, :, 56:].abs().sum()) == 0.0  # ignore band
    assert [float(s4[c].sum()) for c in range(3)] == [64.0, 1728.0, 1792.0]
    counts = [[int((lv.stuff[0, c] > 0).sum()) for c in range(3)] for lv in t.levels]
    assert counts == [[16, 432, 448], [6, 110, 112], [2, 28, 28], [1, 7, 8], [0, 2, 2]]
    present = sum(int(((lv.stuff[0] > 0).flatten(1).any(1)).sum()) for lv in t.levels)
    assert present == 14
    # Soft values >= 0.5 survive: p4 class 0 has 0.5 and 1.0 cells.
    assert sorted({float(v) for v in t.levels[1].stuff[0, 0][t.levels[1].stuff[0, 0] > 0]}) == [0.5, 1.0]


def test_level_boundaries_and_sizes() -> None:
    assert quarter(402, 256) == (101, 64)
    assert level_sizes(416, 256) == [(52, 32), (26, 16), (13, 8), (7, 4), (4, 2)]
    big = spec_scene()
    big.masks = torch.zeros(1, 256, 256, dtype=torch.bool)
    big.masks[0, 64:128, 64:128] = True  # s = 64 exactly: p3, p4 and p5
    big.boxes = torch.tensor([[64.0, 64.0, 128.0, 128.0]])
    t = build_targets([big], (256, 256), PARAMS)
    assert [lv.image.numel() for lv in t.levels] == [1, 1, 1, 0, 0]
    huge = TargetParams(80, 54, ((1.0, 63.9),) * 5)
    assert build_targets([big], (256, 256), huge).num_assignments == 0


def test_vanishing_instance_is_dropped() -> None:
    thin = spec_scene()
    thin.masks = torch.zeros(1, 256, 256, dtype=torch.bool)
    thin.masks[0, 100, 8:200] = True  # one row: the 4x bilinear never reads row 100 (it reads 4i+1, 4i+2)
    thin.boxes = torch.tensor([[8.0, 100.0, 200.0, 101.0]])
    t = build_targets([thin], (256, 256), PARAMS)
    assert t.num_assignments == 0 and float(t.levels[0].heatmap.sum()) == 0.0


@pytest.mark.parametrize(
    ("box", "radius"), [((4, 4), 1), ((2, 2), 0), ((3, 3), 0), ((6, 4), 1), ((10, 20), 3), ((16, 16), 4)]
)
def test_radius(box: tuple[int, int], radius: int) -> None:
    assert gaussian_radius(*box, min_overlap=0.7) == radius


@pytest.mark.parametrize(
    ("x", "t", "value"),
    [
        (0.0, 1.0, 0.0433217),
        (0.0, 0.0, 0.1299651),
        (-2.19, 0.0, 0.00080605),
        (-2.19, 1.0, 0.464284),
        (2.0, 1.0, 0.00045089),
        (0.0, 0.60653, 0.0774132),
        (3.0, 0.0, 2.074710),
    ],
)
def test_focal_values(x: float, t: float, value: float) -> None:
    out = focal_loss(
        torch.tensor([x], dtype=torch.float64), torch.tensor([t], dtype=torch.float64), 0.25, 2.0
    )
    assert float(out) == pytest.approx(value, rel=2e-5)


def test_dice_values() -> None:
    target = torch.zeros(16)
    target[:4] = 1
    assert float(dice_loss(target, target)) == 0.0
    soft = torch.rand(16, generator=torch.Generator().manual_seed(3))
    assert float(dice_loss(soft, soft)) == pytest.approx(0.0, abs=1e-7)
    assert float(dice_loss(torch.zeros(16), torch.zeros(16))) == 1.0
    assert float(dice_loss(torch.full((16,), 0.5), target)) == pytest.approx(0.5)


def test_guided_topk_weights_and_gradient() -> None:
    probs = torch.tensor([[0.3, 0.1, 0.6, 0.2]])
    logits = torch.log(probs / (1 - probs)).requires_grad_(True)
    region = torch.tensor([[True, True, False, False]])  # 0.6 and 0.2 lie outside the mask
    weights, cells = guided_topk(logits, region, 3)
    torch.testing.assert_close(weights, torch.tensor([[0.75, 0.25, 0.0]]))
    assert cells[0, :2].tolist() == [0, 1]
    weights[0, 0].backward()  # the guidance is not detached: the top cell's logit gets a gradient
    assert logits.grad is not None and float(logits.grad[0, 0]) != 0.0 and float(logits.grad[0, 2]) == 0.0
    empty, _ = guided_topk(logits.detach(), torch.zeros(1, 4, dtype=torch.bool), 3)
    assert float(empty.abs().sum()) == 0.0


class _Recorder(nn.Module):
    """An affine 'embed' that records its input (the pooled kernel features)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.linear(x)
        return out


def _fake_heads(batch: int, hw: tuple[int, int], num_things: int, num_stuff: int, dim: int) -> HeadBatch:
    sizes = level_sizes(*hw)
    return HeadBatch(
        encoded=torch.ones(batch, 8, hw[0] // 4, hw[1] // 4),
        centre_logits=[torch.full((batch, num_things, h, w), -2.19) for h, w in sizes],
        region_logits=[torch.full((batch, num_stuff, h, w), -2.19) for h, w in sizes],
        kernels=[torch.ones(batch, dim, h, w) for h, w in sizes],
    )


def test_stuff_focal_normaliser_and_kernel_pooling() -> None:
    # 128x128 input: levels 16, 8, 4, 2, 1; a class-2 block covering exactly 2 of the 16 cells of p5.
    semantic = torch.ones(128, 128, dtype=torch.int64)
    semantic[:32, :64] = 2  # p5 (4×4) cells (0, 0) and (0, 1)
    sample = Sample(torch.zeros(3, 128, 128), semantic, torch.zeros(0, dtype=torch.int64),
                    torch.zeros(0, 128, 128, dtype=torch.bool), torch.zeros(0, 4))  # fmt: skip
    targets = build_targets([sample, sample], (128, 128), PARAMS)
    assert int((targets.levels[2].stuff[0, 2] > 0).sum()) == 2
    heads = _fake_heads(2, (128, 128), 80, 54, 4)
    # Spec §8.5: region logits -2.19 and all-zero targets (every pixel ignore) -> 54 × 5 × FL(-2.19, 0),
    # whatever the sizes and the batch.
    empty = Sample(torch.zeros(3, 128, 128), torch.full((128, 128), 255, dtype=torch.int64),
                   sample.classes, sample.masks, sample.boxes)  # fmt: skip
    empty_targets = build_targets([empty, empty], (128, 128), PARAMS)
    losses = panoptic_losses(heads, empty_targets, _Recorder(4, 8), _Recorder(4, 8), LossParams(pos_num=3))
    assert float(losses["loss_pos_st"]) == pytest.approx(54 * 5 * 0.00080605, rel=1e-4)
    assert float(losses["loss_seg_st"].detach()) == 0.0 and float(losses["loss_seg_th"].detach()) == 0.0
    # Kernel pooling: K ≡ 1, class 2 on 2 of the 16 cells of p5 -> 2/16 per channel.
    stuff_embed = _Recorder(4, 8)
    panoptic_losses(heads, targets, _Recorder(4, 8), stuff_embed, LossParams(pos_num=3))
    pooled_p5 = stuff_embed.seen[2]  # B × S × D at p5
    torch.testing.assert_close(pooled_p5[0, 2], torch.full((4,), 0.125))
    torch.testing.assert_close(pooled_p5[0, 1], torch.full((4,), 14 / 16))
