"""The greedy thing merge: the sequential (CPU) and batched (GPU) strategies agree with each other and
with the spec's pseudo-code, on fresh random scenes built to hit the overlap threshold exactly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from panoptic_deploy.modeling.panoptic_fcn import InferenceParams
from panoptic_deploy.postprocess import (
    channel_argmax,
    greedy_things_batched,
    greedy_things_sequential,
    merge_panoptic,
)
from reference_impl import reference_merge

PARAMS = InferenceParams(
    thing_thres=0.2, stuff_thres=0.1, top_num=100, inst_thres=0.4, similar_thres=0.9, class_specific=True,
    combine_enable=True, overlap_thresh=0.5, stuff_area_limit=20, combine_inst_thresh=0.2,
)  # fmt: skip


def random_scene(rng: np.random.Generator, n: int, h: int = 40, w: int = 56) -> torch.Tensor:
    """N×H×W bool masks: rectangles and blobs, near-duplicates of earlier masks, empty masks, and masks whose
    overlap with one earlier mask is exactly half their area (the threshold, which accepts)."""
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        kind = rng.integers(5)
        if kind == 0 or i == 0:  # rectangle
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            masks[i, y : y + rng.integers(2, h - y), x : x + rng.integers(2, w - x)] = True
        elif kind == 1:  # blob
            masks[i] = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        elif kind == 2:  # near-duplicate of an earlier mask
            masks[i] = masks[rng.integers(i)] ^ (rng.random((h, w)) < 0.05)
        elif kind == 3:  # empty
            pass
        else:  # exactly half inside an earlier non-empty mask, half outside it
            earlier = [j for j in range(i) if masks[j].any() and not masks[j].all()]
            if earlier:
                j = earlier[rng.integers(len(earlier))]
                inside, outside = np.flatnonzero(masks[j]), np.flatnonzero(~masks[j])
                k = int(rng.integers(1, min(len(inside), len(outside)) + 1))
                flat = masks[i].reshape(-1)
                flat[rng.choice(inside, k, replace=False)] = True
                flat[rng.choice(outside, k, replace=False)] = True
    return torch.from_numpy(masks)


@pytest.mark.parametrize("seed", range(12))
def test_sequential_and_batched_greedy_agree(seed: int) -> None:
    rng = np.random.default_rng([seed, 20261125])
    masks = random_scene(rng, int(rng.integers(1, 60)))
    for thresh in (0.5, 0.0, 0.9):
        accepted, owner = greedy_things_sequential(masks, thresh)
        accepted_b, owner_b = greedy_things_batched(masks, thresh)
        assert accepted == accepted_b
        assert torch.equal(owner, owner_b)
        assert accepted  # the first non-empty mask is always accepted
        assert torch.equal(owner > 0, masks[accepted].any(dim=0))


@pytest.mark.parametrize("seed", range(8))
def test_merge_equals_the_spec_pseudo_code(seed: int) -> None:
    rng = np.random.default_rng([seed, 5])
    masks = random_scene(rng, int(rng.integers(1, 40)))
    n, h, w = masks.shape
    classes = torch.from_numpy(rng.integers(0, 80, n))
    scores = torch.from_numpy(np.sort(rng.uniform(0.2, 1.0, n))[::-1].copy()).float()
    stuff = torch.from_numpy(rng.integers(0, 5, (h, w)) * (rng.random((h, w)) < 0.9))
    panoptic, segments = merge_panoptic(masks, classes, scores, stuff, PARAMS)
    expected, expected_segments = reference_merge(
        masks.numpy(), classes.tolist(), scores.tolist(), stuff.numpy(), SimpleNamespace(inference=PARAMS)
    )
    assert np.array_equal(panoptic.numpy(), expected)
    assert segments == expected_segments


@pytest.mark.parametrize("seed", range(6))
def test_channel_argmax_equals_torch_argmax_ties_included(seed: int) -> None:
    rng = np.random.default_rng([seed, 54])
    c, h, w = int(rng.integers(1, 60)), int(rng.integers(1, 50)), int(rng.integers(1, 50))
    # Few distinct values, so that many pixels tie between channels; zeros and negatives too.
    maps = torch.from_numpy(rng.integers(-2, 4, (c, h, w)).astype(np.float32) / 4)
    index, best = channel_argmax(maps)
    assert torch.equal(index, maps.argmax(dim=0))
    assert torch.equal(best, maps.amax(dim=0))
    maps[rng.integers(c), 0, 0] = float("nan")  # a NaN takes torch's own argmax (NaN is the maximum)
    index, best = channel_argmax(maps)
    assert torch.equal(index, maps.argmax(dim=0))
    assert torch.isnan(best[0, 0])
