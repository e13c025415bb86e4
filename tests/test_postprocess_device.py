"""Device post-processing with fixed shapes equals the host algorithm: the greedy merge on random scenes built
to hit the overlap threshold exactly, and the whole post-processing on random network outputs (ties, invalid
and sub-threshold slots, absent stuff, underflow, up- and down-sizing)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from panoptic_deploy.modeling.panoptic_fcn import InferenceParams, NetworkOutputs
from panoptic_deploy.postprocess import PanopticResult, greedy_things_sequential, postprocess
from panoptic_deploy.postprocess_device import (
    PackedLayout,
    greedy_fixed,
    postprocess_on_device,
    unpack_result,
)
from test_postprocess import PARAMS, random_scene


@pytest.mark.parametrize("seed", range(10))
def test_fixed_greedy_equals_sequential(seed: int) -> None:
    rng = np.random.default_rng([seed, 20261208])
    masks = random_scene(rng, int(rng.integers(1, 60)))
    n = masks.shape[0]
    # The host merges the slots that pass COMBINE.INST_THRESH, a prefix in score order.
    num_combined = int(rng.integers(0, n + 1))
    eligible = torch.arange(n) < num_combined
    for thresh in (0.5, 0.0, 0.9):
        accepted, owner = greedy_things_sequential(masks[:num_combined], thresh)
        owner_fixed, accepted_fixed = greedy_fixed(masks, eligible, thresh)
        assert torch.nonzero(accepted_fixed).flatten().tolist() == accepted
        assert torch.equal(owner_fixed, owner)


def random_outputs(rng: np.random.Generator, slots: int, hf: int, wf: int) -> NetworkOutputs:
    """Network outputs as a backend returns them: scores sorted with ties, some invalid slots (score -1),
    instance maps that repeat earlier ones (duplicates the merge rejects), stuff channels absent or zero."""
    scores = np.sort(rng.choice([0.15, 0.2, 0.35, 0.5, 0.5, 0.8, 0.9], slots))[::-1].astype(np.float32)
    valid = rng.random(slots) < 0.8
    scores[~valid] = -1.0
    probs = rng.random((slots, hf, wf)).astype(np.float32) ** 3
    for i in range(1, slots):
        if rng.random() < 0.3:
            probs[i] = probs[rng.integers(i)]
    stuff = rng.random((54, hf, wf)).astype(np.float32)
    stuff[:, : hf // 3] = 0.0  # zero everywhere on the top rows: the lowest-channel fallback
    present = rng.random(54) < 0.3
    present[0] = rng.random() < 0.5
    return NetworkOutputs(
        inst_probs=torch.from_numpy(probs),
        inst_scores=torch.from_numpy(scores),
        inst_classes=torch.from_numpy(rng.integers(0, 80, slots)),
        inst_valid=torch.from_numpy(valid),
        stuff_probs=torch.from_numpy(stuff),
        stuff_scores=torch.from_numpy(rng.random(54).astype(np.float32)),
        stuff_present=torch.from_numpy(present),
    )


def device_result(outputs: NetworkOutputs, image_size: tuple[int, int], orig_size: tuple[int, int],
                  params: InferenceParams = PARAMS) -> PanopticResult:  # fmt: skip
    packed = postprocess_on_device(outputs, image_size, orig_size, params)
    layout = PackedLayout(orig_size, outputs.inst_scores.shape[0], outputs.stuff_probs.shape[0])
    return unpack_result(packed.cpu(), layout)


def assert_same_result(got: PanopticResult, want: PanopticResult) -> None:
    assert got.segments == want.segments
    assert np.array_equal(got.panoptic_seg, want.panoptic_seg)
    assert got.panoptic_seg.dtype == want.panoptic_seg.dtype
    assert np.array_equal(got.sem_seg_argmax, want.sem_seg_argmax)
    assert np.array_equal(got.instance_classes, want.instance_classes)
    assert np.array_equal(got.instance_scores, want.instance_scores)


@pytest.mark.parametrize("seed", range(8))
def test_device_postprocess_equals_host(seed: int) -> None:
    rng = np.random.default_rng([seed, 12])
    hf, wf = int(rng.integers(6, 16)), int(rng.integers(6, 16))
    outputs = random_outputs(rng, int(rng.integers(1, 30)), hf, wf)
    image_size = (4 * hf - int(rng.integers(0, 8)), 4 * wf - int(rng.integers(0, 8)))
    kinds = set()
    for orig_size in (image_size, (int(rng.integers(20, 90)), int(rng.integers(20, 90)))):
        for params in (
            PARAMS,
            dataclasses.replace(PARAMS, overlap_thresh=float(rng.uniform(0.1, 0.9)), stuff_area_limit=0),
            dataclasses.replace(PARAMS, combine_enable=False),
        ):
            want = postprocess(outputs, image_size, orig_size, params)
            assert_same_result(device_result(outputs, image_size, orig_size, params), want)
            kinds |= {s.isthing for s in want.segments}
    assert kinds == {True, False}  # things and stuff were merged, not only empty maps compared
