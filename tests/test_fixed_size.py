"""The fixed-size export path (decode + postprocess) equals the straightforward reference algorithm."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panoptic_deploy.config import load_config
from panoptic_deploy.modeling import HeadOutputs, PanopticFCN, build_model
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.preprocess import padded_shape, resized_shape
from panoptic_deploy.weights import synthetic_state_dict
from reference_impl import reference_inference
from ties import match_within_groups, relabel, segment_id_map, tie_groups

CONFIG = Path(__file__).parents[1] / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"


@pytest.fixture(scope="module")
def model() -> PanopticFCN:
    model = build_model(load_config(CONFIG)).double()
    generators = {k: v.shape for k, v in model.state_dict().items() if "_generator." in k}
    weights = synthetic_state_dict(generators, seed=7)
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in weights.items()}, strict=False)
    return model


def _smooth(generator: torch.Generator, channels: int, h: int, w: int, scale: float) -> torch.Tensor:
    """Spatially smooth noise (neighbouring kernels are similar, so fusion actually happens)."""
    coarse = torch.randn(
        1, channels, max(1, h // 3), max(1, w // 3), generator=generator, dtype=torch.float64
    )
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0] * scale


def random_heads(seed: int, padded: tuple[int, int]) -> HeadOutputs:
    """Head outputs of the shapes a ``padded`` input gives, with non-degenerate statistics."""
    g = torch.Generator().manual_seed(seed)
    h, w = padded[0] // 8, padded[1] // 8
    sizes = []
    for level in range(5):
        sizes.append((h, w))
        if level < 2:
            h, w = h // 2, w // 2
        else:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    centre = [torch.randn(80, a, b, generator=g, dtype=torch.float64) * 1.5 - 3.0 for a, b in sizes]
    region = [_smooth(g, 54, a, b, 4.0) - 1.0 for a, b in sizes]
    kernels = [_smooth(g, 256, a, b, 1.0) + 0.2 * torch.randn(256, a, b, generator=g) for a, b in sizes]
    encoded = torch.relu(torch.randn(64, padded[0] // 4, padded[1] // 4, generator=g, dtype=torch.float64))
    return HeadOutputs(encoded, centre, region, kernels)


# Both paths run in float64 on the same CPU; their scores agree to SCORE_ATOL. Two instances whose scores are
# closer than 2 * SCORE_ATOL may therefore come out in either order (tests/ties.py): they are compared up to
# reordering within such groups. The random heads give none today (the pairing is then the identity and
# these are plain position-by-position comparisons), so this only keeps a future case from depending on the
# CPU's kernels.
SCORE_ATOL = 1e-9


def assert_same_panoptic(fixed: PanopticResult, reference: PanopticResult) -> None:
    f_scores, r_scores = fixed.instance_scores, reference.instance_scores
    assert len(f_scores) == len(r_scores)
    np.testing.assert_allclose(f_scores, r_scores, atol=SCORE_ATOL)
    instance_perm = match_within_groups(
        tie_groups(r_scores, 2 * SCORE_ATOL),
        lambda k, j: bool(fixed.instance_classes[j] == reference.instance_classes[k]),
        "instance",
    )
    np.testing.assert_array_equal(fixed.instance_classes[instance_perm], reference.instance_classes)
    # Our instance j stands for the reference's instance k: thing segments carry those indices.
    reference_index = {j: k for k, j in enumerate(instance_perm)}
    things = [s for s in fixed.segments if s.isthing]
    mapping = segment_id_map(
        fixed.segments,
        reference.segments,
        2 * SCORE_ATOL,
        lambda k, j: reference_index[things[j].instance_id] == reference.segments[k].instance_id,  # type: ignore[index]
    )
    fixed_segments = [
        (
            mapping[s.id],
            s.category_id,
            s.isthing,
            None if s.instance_id is None else reference_index[s.instance_id],
        )
        for s in fixed.segments
    ]
    reference_segments = [(s.id, s.category_id, s.isthing, s.instance_id) for s in reference.segments]
    assert sorted(fixed_segments, key=lambda s: s[0]) == reference_segments
    by_id = {s.id: s for s in reference.segments}
    np.testing.assert_allclose(
        [s.score or 0.0 for s in fixed.segments],
        [by_id[mapping[s.id]].score or 0.0 for s in fixed.segments],
        atol=SCORE_ATOL,
    )
    assert np.mean(relabel(fixed.panoptic_seg, mapping) == reference.panoptic_seg) >= 0.999


# (original h, w, MIN_SIZE_TEST, MAX_SIZE_TEST): landscape, portrait, square, tiny, extreme aspect ratio
# (max-size cap), and one whose resized size is exactly divisible by 32 (no padding); then the resized and the
# padded size, worked out by hand with detectron2's ResizeShortestEdge rule (short side to MIN_SIZE_TEST,
# the long side capped at MAX_SIZE_TEST, sides rounded as int(x + 0.5)) and padding up to a multiple of 32:
#   300x451: scale 400/300, 451 * 4/3 = 601.3 -> 400x601 -> 416x608
#   640x427: scale 400/427, 640 * 400/427 = 599.53 -> 600x400 -> 608x416
#   512x512: 400x400 -> 416x416
#   20x30: scale 20, 30 * 20 = 600 <= 666 -> 400x600 -> 416x608
#   100x1000: 400x4000 is capped: scale 666/4000, 400 * 0.1665 = 66.6 -> 67x666 -> 96x672
#   384x512 (384/640): scale 1 -> 384x512, already multiples of 32
#   48x40 (64/96): scale 64/40, 48 * 1.6 = 76.8 -> 77x64 -> 96x64
SIZES = [
    (300, 451, 400, 666, (400, 601), (416, 608)),
    (640, 427, 400, 666, (600, 400), (608, 416)),
    (512, 512, 400, 666, (400, 400), (416, 416)),
    (20, 30, 400, 666, (400, 600), (416, 608)),
    (100, 1000, 400, 666, (67, 666), (96, 672)),
    (384, 512, 384, 640, (384, 512), (384, 512)),
    (48, 40, 64, 96, (77, 64), (96, 64)),
]


@pytest.mark.parametrize(("orig_h", "orig_w", "min_size", "max_size", "image_size", "padded"), SIZES)
def test_size_helpers_give_the_hand_computed_sizes(
    orig_h: int,
    orig_w: int,
    min_size: int,
    max_size: int,
    image_size: tuple[int, int],
    padded: tuple[int, int],
) -> None:
    assert resized_shape(orig_h, orig_w, min_size, max_size) == image_size
    assert padded_shape(*image_size) == padded


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("orig_h", "orig_w", "min_size", "max_size", "image_size", "padded"), SIZES)
def test_fixed_size_path_equals_reference(
    model: PanopticFCN,
    orig_h: int,
    orig_w: int,
    min_size: int,
    max_size: int,
    image_size: tuple[int, int],
    padded: tuple[int, int],
    seed: int,
) -> None:
    heads = random_heads(seed * 1000 + orig_h, padded)
    for area_limit in (4096, 64):
        model.inference = dataclasses.replace(model.inference, stuff_area_limit=area_limit)
        with torch.no_grad():
            fixed = postprocess(model.decode(heads), image_size, (orig_h, orig_w), model.inference)
            reference = reference_inference(model, heads, image_size, (orig_h, orig_w))
        assert_same_panoptic(fixed, reference)


def test_random_cases_are_not_degenerate(model: PanopticFCN) -> None:
    """The equivalence above is only meaningful if things, fusion and stuff segments actually occur."""
    model.inference = dataclasses.replace(model.inference, stuff_area_limit=64)
    heads = random_heads(5, (416, 608))
    with torch.no_grad():
        outputs = model.decode(heads)
        result = postprocess(outputs, (400, 601), (300, 451), model.inference)
    num_valid = int(outputs.inst_valid.sum())
    assert num_valid >= 5
    assert sum(s.isthing for s in result.segments) >= 3
    assert sum(not s.isthing for s in result.segments) >= 3
    candidates = sum(int((torch.sigmoid(c) > 0.2).sum()) for c in heads.centre_logits)
    assert candidates > num_valid  # some candidates were fused away or filtered


def test_network_output_shapes_depend_only_on_input_size(model: PanopticFCN) -> None:
    a = model.decode(random_heads(1, (416, 544)))
    b = model.decode(random_heads(2, (416, 544)))
    assert [tuple(t.shape) for t in a] == [tuple(t.shape) for t in b]
    assert a.inst_probs.shape == (100, 104, 136)
    assert a.stuff_probs.shape == (54, 104, 136)
    assert a.inst_classes.dtype == torch.int64 and a.inst_valid.dtype == torch.bool
