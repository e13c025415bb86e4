"""Parity with the OFFICIAL PanopticFCN: outputs of the official code for the documented synthetic weights.

tests/fixtures/reference/{nodeform,dcn} hold the official intermediate and final tensors for 4 photos
(see tests/fixtures/README.md). Tolerances follow the reference READMEs (official 1-vs-2-thread spread:
backbone 4e-7, heads 7e-5, fused kernels 1.3e-4, instance scores 2.7e-4; panoptic maps within 13 px).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from panoptic_deploy.config import load_config
from panoptic_deploy.modeling import PanopticFCN, build_model
from panoptic_deploy.modeling.panoptic_fcn import (
    CENTER_POOL_SIZES,
    fuse_thing_kernels,
    stuff_candidates,
    thing_candidates,
)
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.preprocess import prepare_image, read_image, resize_image
from panoptic_deploy.weights import synthetic_state_dict

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
VARIANTS = {
    "nodeform": ("PanopticFCN-R50-400-3x-FAST-nodeform.yaml", 1),
    "dcn": ("PanopticFCN-R50-400-3x-FAST.yaml", 3),
}
TOL = 1e-4


@dataclass
class Run:
    """One image through our model, with the intermediates the official reference recorded."""

    ref: Any
    segments: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    heads: Any
    model: PanopticFCN
    result: PanopticResult
    offset_mask: dict[int, list[torch.Tensor]]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Iterator[tuple[str, PanopticFCN]]:
    config, seed = VARIANTS[request.param]
    model = build_model(load_config(ROOT / "configs" / config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = synthetic_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    torch.set_num_threads(2)
    yield request.param, model


@pytest.fixture(scope="module")
def runs(variant: tuple[str, PanopticFCN]) -> dict[str, Run]:
    name, model = variant
    captured: dict[str, Any] = {}
    offset_mask: dict[int, list[torch.Tensor]] = {1: [], 2: [], 3: []}
    hooks = [
        model.backbone.bottom_up.register_forward_hook(lambda m, i, o: captured.__setitem__("res", o)),
        model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("p", o)),
        model.semantic_fpn.register_forward_hook(lambda m, i, o: captured.__setitem__("semantic_fpn", o)),
    ]
    if name == "dcn":
        for k in (1, 2, 3):
            conv = getattr(model.position_head.position_head, f"position_head_head_{k}").offset_mask_conv
            hooks.append(conv.register_forward_hook(lambda m, i, o, k=k: offset_mask[k].append(o)))
    out: dict[str, Run] = {}
    for image in IMAGES:
        for k in offset_mask:
            offset_mask[k] = []
        ref = np.load(FIXTURES / "reference" / name / f"{image}.npz")
        segments = json.loads((FIXTURES / "reference" / name / f"{image}.segments.json").read_text())
        prepared = prepare_image(read_image(FIXTURES / "images" / f"{image}.png"), model.input_params)
        with torch.no_grad():
            heads = model.forward_heads(prepared.tensor)
            outputs = model.decode(heads)
        result = postprocess(outputs, prepared.image_size, prepared.orig_size, model.inference)
        tensors = {"input_tensor": prepared.tensor, **captured["res"], **captured["p"]}
        tensors["semantic_fpn"] = captured["semantic_fpn"]
        tensors["encode_feat"] = heads.encoded[None]
        for level, kernel in enumerate(heads.kernels):
            tensors[f"kernel_l{level}"] = kernel[None]
        out[image] = Run(
            ref, segments, tensors, heads, model, result, {k: list(v) for k, v in offset_mask.items()}
        )
    for hook in hooks:
        hook.remove()
    return out


def _stats(t: torch.Tensor) -> np.ndarray:
    x = t.double()
    return np.array([x.mean(), x.std(), x.min(), x.max(), x.abs().mean()])


def _window(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    h, w = t.shape[-2:]
    return t[0, :8, :8, :8].numpy(), t[0, :8, h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4].numpy()


@pytest.mark.parametrize("image", IMAGES)
def test_preprocessing_is_bit_exact(
    runs: dict[str, Run], image: str, variant: tuple[str, PanopticFCN]
) -> None:
    run = runs[image]
    resized = resize_image(read_image(FIXTURES / "images" / f"{image}.png"), run.model.input_params)
    if "input_resized_bgr_uint8" in run.ref.files:
        np.testing.assert_array_equal(resized, run.ref["input_resized_bgr_uint8"])
    else:
        omitted = run.segments["input_resized_bgr_uint8_omitted"]  # type: ignore[call-overload]
        assert hashlib.sha256(resized.tobytes()).hexdigest() == omitted["sha256_C_order_bytes"]
    tl, ctr = _window(run.tensors["input_tensor"])
    np.testing.assert_array_equal(tl, run.ref["input_tensor_slice_tl"])
    np.testing.assert_array_equal(ctr, run.ref["input_tensor_slice_ctr"])


FEATURES = ["res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6", "p7", "semantic_fpn", "encode_feat"]
FEATURES += [f"kernel_l{level}" for level in range(5)]


@pytest.mark.parametrize("image", IMAGES)
def test_features_match_official(runs: dict[str, Run], image: str) -> None:
    run = runs[image]
    for name in FEATURES:
        t = run.tensors[name]
        assert list(t.shape) == run.ref[f"{name}_shape"].tolist(), name
        tl, ctr = _window(t)
        np.testing.assert_allclose(tl, run.ref[f"{name}_slice_tl"], rtol=TOL, atol=TOL, err_msg=name)
        np.testing.assert_allclose(ctr, run.ref[f"{name}_slice_ctr"], rtol=TOL, atol=TOL, err_msg=name)
        np.testing.assert_allclose(
            t[0].mean((1, 2)).numpy(), run.ref[f"{name}_chanmean"], atol=TOL, err_msg=name
        )
        np.testing.assert_allclose(_stats(t), run.ref[f"{name}_stats"], rtol=TOL, atol=TOL, err_msg=name)
    crop = run.tensors["encode_feat"][0]
    h, w = crop.shape[-2:]
    np.testing.assert_allclose(
        crop[:, h // 2 - 16 : h // 2 + 16, w // 2 - 16 : w // 2 + 16].numpy(),
        run.ref["encode_feat_crop_ctr32"],
        atol=TOL,
    )


@pytest.mark.parametrize("image", IMAGES)
def test_position_head_logits_match_official(runs: dict[str, Run], image: str) -> None:
    run = runs[image]
    for level in range(5):
        np.testing.assert_allclose(
            run.heads.centre_logits[level].numpy(), run.ref[f"pos_thing_logits_l{level}"], atol=TOL
        )
        region = run.heads.region_logits[level]
        if f"pos_stuff_logits_l{level}" in run.ref.files:
            np.testing.assert_allclose(region.numpy(), run.ref[f"pos_stuff_logits_l{level}"], atol=TOL)
        else:  # the DCN set stores level 0 as summaries
            np.testing.assert_allclose(
                region[:8, :8, :8].numpy(), run.ref["pos_stuff_logits_l0_slice_tl"], atol=TOL
            )
            np.testing.assert_allclose(
                region.mean((1, 2)).numpy(), run.ref["pos_stuff_logits_l0_chanmean"], atol=TOL
            )
            np.testing.assert_allclose(
                region.double().sum(2).numpy(), run.ref["pos_stuff_logits_l0_rowsum"], atol=2e-3
            )
            mismatch = (region.argmax(0).numpy() != run.ref["pos_stuff_logits_l0_argmax"]).mean()
            assert mismatch <= 1e-3


@pytest.mark.parametrize("image", IMAGES)
def test_deformable_offsets_match_official(
    runs: dict[str, Run], image: str, variant: tuple[str, PanopticFCN]
) -> None:
    if variant[0] != "dcn":
        pytest.skip("the nodeform position head has no offsets")
    run = runs[image]
    for k in (1, 2, 3):
        assert len(run.offset_mask[k]) == 5
        for level, raw in enumerate(run.offset_mask[k]):
            h, w = raw.shape[-2:]
            # Python slicing as the reference used it (a negative start on maps smaller than 8 px).
            window = raw[0, :, h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4]
            ref = run.ref[f"dcn_head{k}_l{level}_offset_mask_raw_slice_ctr"]
            np.testing.assert_allclose(window.numpy(), ref, atol=TOL, err_msg=f"head {k} level {level}")
            np.testing.assert_allclose(
                _stats(raw[:, :18]), run.ref[f"dcn_head{k}_l{level}_offset_stats"], rtol=TOL, atol=TOL
            )
            np.testing.assert_allclose(
                _stats(torch.sigmoid(raw[:, 18:])),
                run.ref[f"dcn_head{k}_l{level}_mask_sigmoid_stats"],
                rtol=TOL,
                atol=TOL,
            )


@pytest.mark.parametrize("image", IMAGES)
def test_candidates_and_fusion_match_official(runs: dict[str, Run], image: str) -> None:
    run, p = runs[image], runs[image].model.inference
    scores, classes, features = [], [], []
    for level, pool in enumerate(CENTER_POOL_SIZES):
        s, c, f = thing_candidates(
            run.heads.centre_logits[level], run.heads.kernels[level], pool, p.top_num // 2
        )
        ok = s > p.thing_thres
        assert int(ok.sum()) == int(run.ref[f"lvl{level}_thing_num"])
        np.testing.assert_allclose(s[ok].numpy(), run.ref[f"lvl{level}_thing_scores"], atol=TOL)
        assert sorted(c[ok].tolist()) == sorted(run.ref[f"lvl{level}_thing_classes"].tolist())
        scores.append(s[ok])
        classes.append(c[ok])
        features.append(f[ok])

        st_score, _, st_valid = stuff_candidates(
            run.heads.region_logits[level], run.heads.kernels[level], p.stuff_thres
        )
        kept = torch.nonzero(st_valid).flatten()
        np.testing.assert_array_equal(kept.numpy(), run.ref[f"lvl{level}_stuff_classes"])
        np.testing.assert_allclose(st_score[kept].numpy(), run.ref[f"lvl{level}_stuff_scores"], atol=TOL)

    score = torch.cat(scores)
    order = torch.argsort(score, descending=True)
    np.testing.assert_allclose(score[order].numpy(), run.ref["thing_candidates_scores"], atol=TOL)
    np.testing.assert_allclose(
        torch.cat(features)[order].numpy(), run.ref["thing_kernels_gathered"], atol=TOL
    )
    with torch.no_grad():
        weights = run.model.thing_generator(torch.cat(features)[order])
        cls = torch.cat(classes)[order]
        all_valid = torch.ones_like(cls, dtype=torch.bool)
        fused, keep = fuse_thing_kernels(weights, cls, all_valid, p.similar_thres, p.class_specific)
    np.testing.assert_array_equal(cls[keep].numpy(), run.ref["thing_fused_classes"])
    np.testing.assert_allclose(fused[keep].numpy(), run.ref["thing_meta_weights_fused"], atol=5e-4, rtol=TOL)
    mask_logits = fused[keep] @ run.heads.encoded.flatten(1)
    np.testing.assert_allclose(
        mask_logits.mean(1).numpy(), run.ref["thing_mask_logits_permask_mean"], atol=2e-3, rtol=TOL
    )
    # The official fused scores are recorded after the mask-quality rescoring, still in fused order.
    probs = torch.sigmoid(mask_logits)
    binary = (probs > p.inst_thres).float()
    rescored = score[order][keep] * (probs * binary).sum(1) / (binary.sum(1) + 1e-6)
    np.testing.assert_allclose(rescored.numpy(), run.ref["thing_fused_scores"], atol=5e-4)


@pytest.mark.parametrize("image", IMAGES)
def test_stuff_fusion_matches_official(runs: dict[str, Run], image: str) -> None:
    run = runs[image]
    with torch.no_grad():
        outputs = run.model.decode(run.heads)
    present = torch.nonzero(outputs.stuff_present).flatten()
    np.testing.assert_array_equal(present.numpy(), run.ref["stuff_fused_classes"])
    np.testing.assert_allclose(outputs.stuff_scores[present].numpy(), run.ref["stuff_fused_scores"], atol=TOL)
    logits = torch.logit(outputs.stuff_probs[present].double().flatten(1)).mean(1)
    np.testing.assert_allclose(
        logits.numpy(), run.ref["stuff_mask_logits_permask_mean"], atol=2e-3, rtol=1e-3
    )


@pytest.mark.parametrize("image", IMAGES)
def test_instances_match_official(runs: dict[str, Run], image: str) -> None:
    run = runs[image]
    ref_scores, ref_classes = run.ref["inst_scores"], run.ref["inst_classes"]
    scores, classes = run.result.instance_scores, run.result.instance_classes
    assert len(scores) == len(ref_scores)
    np.testing.assert_allclose(scores, ref_scores, atol=5e-4)
    for i in np.nonzero(classes != ref_classes)[0]:
        # Only instances with near-equal scores may swap places (the official runs swap them too).
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(scores)]
        assert min(abs(ref_scores[i] - ref_scores[j]) for j in neighbours) < 1e-4, (
            i,
            classes[i],
            ref_classes[i],
        )


@pytest.mark.parametrize("image", IMAGES)
def test_panoptic_output_matches_official(runs: dict[str, Run], image: str) -> None:
    run = runs[image]
    assert np.mean(run.result.panoptic_seg == run.ref["panoptic_seg"]) >= 0.999
    assert np.mean(run.result.sem_seg_argmax == run.ref["sem_seg_argmax"]) >= 0.999
    ref_segments = run.segments["segments_info"]  # type: ignore[call-overload]
    ours = [(s.id, s.category_id, s.isthing, s.instance_id) for s in run.result.segments]
    theirs = [(s["id"], s["category_id"], s["isthing"], s.get("instance_id")) for s in ref_segments]
    assert ours == theirs
    for mine, ref in zip(run.result.segments, ref_segments, strict=True):
        assert abs(mine.area - ref["area"]) <= 20
        if mine.isthing:
            # 1.5e-4, not 1e-4: one stride-4 mask pixel flipping at INST_THRES moves a rescored score by
            # about 1e-4, and the official code's own 1-vs-2-thread spread is 1.0e-4 (reference README §7).
            # Measured worst case: 1.03e-4 (DCN, coffee); every other segment is within 1e-4.
            assert mine.score is not None and abs(mine.score - ref["score"]) <= 1.5e-4
