"""The synthetic-weight recipe reproduces the reference hashes (every key, both seeds) exactly."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_deploy.checkpoint import read_checkpoint
from panoptic_deploy.weights import (
    key_recipe,
    state_dict_digest,
    synthetic_state_dict,
    synthetic_tensor,
    tensor_sha256,
    write_synthetic_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference"

# (fixture set, seed, number of keys, whole-model digest from the reference READMEs)
SETS = {
    "nodeform": (1, 340, "772964880facda356e5efd3d12d8be17461972fd217b8a31a21c1e63590889f3"),
    "dcn": (3, 346, "90de05ba844a9b1e5cca7a4a4b5a203df2bbbe4a885fea58cfb935e203a0ae9a"),
}
CONFIGS = {
    "nodeform": ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml",
    "dcn": ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST.yaml",
}


def _tsv_rows(name: str) -> list[dict[str, str]]:
    with (FIXTURES / name / "state_dict_keys.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tsv_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {r["key"]: tuple(int(s) for s in r["shape"].split("x")) for r in _tsv_rows(name)}


@functools.cache
def _generated(name: str) -> dict[str, np.ndarray]:
    seed = SETS[name][0]
    return synthetic_state_dict(_tsv_shapes(name), seed)


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_key_hash_matches_reference(name: str) -> None:
    seed, n_keys, _ = SETS[name]
    rows = _tsv_rows(name)
    assert len(rows) == n_keys
    sd = _generated(name)
    assert list(sd) == [r["key"] for r in rows]
    wrong = []
    for r in rows:
        value = sd[r["key"]]
        assert value.dtype == np.float32 and value.flags.c_contiguous
        assert value.shape == tuple(int(s) for s in r["shape"].split("x"))
        if f"seed{seed}:{tensor_sha256(value)}" != r["sha256_float32_le"]:
            wrong.append(r["key"])
        # The tsv's first value is printed from the same float32 tensor.
        assert float(value.reshape(-1)[0]) == float(r["first_value"]), r["key"]
    assert wrong == [], f"{len(wrong)} of {n_keys} hashes differ, e.g. {wrong[:5]}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_whole_model_digest_matches_reference(name: str) -> None:
    digest = SETS[name][2]
    sd = _generated(name)
    assert state_dict_digest(sd) == digest
    # Same digest from torch tensors (what a checkpoint holds) and independent of dict order.
    as_tensors = {k: torch.from_numpy(v) for k, v in reversed(list(sd.items()))}
    assert state_dict_digest(as_tensors) == digest


@pytest.mark.parametrize("name", sorted(SETS))
def test_recipe_classification_matches_tsv_columns(name: str) -> None:
    """kind, gain/constant and centring axes per key agree with the reference's own description."""
    axes_text = {(1, 2, 3): "fan_in_axes(1,2,3)", (2, 3): "spatial_axes(2,3)", (0,): "output_axis(0)"}
    for r in _tsv_rows(name):
        shape = tuple(int(s) for s in r["shape"].split("x"))
        recipe = key_recipe(r["key"], shape)
        assert recipe.kind == r["kind"], r["key"]
        if r["gain_or_value"]:
            assert recipe.value == float(r["gain_or_value"]), r["key"]
        else:
            assert recipe.value is None, r["key"]
        assert (axes_text[recipe.axes] if recipe.axes else "") == r["centering"], r["key"]


def test_nodeform_and_dcn_share_tensors_for_common_keys() -> None:
    """Per-key generators: a key's tensor depends only on (seed, key, shape), not on the other keys."""
    nodeform = _tsv_shapes("nodeform")
    dcn = _tsv_shapes("dcn")
    common = sorted(set(nodeform) & set(dcn))
    assert len(common) == 340 - 9
    small = {k: nodeform[k] for k in common if np.prod(nodeform[k]) < 10_000}
    subset = synthetic_state_dict(small, seed=1)
    full = _generated("nodeform")
    for k, v in subset.items():
        assert np.array_equal(v, full[k]), k


@pytest.mark.parametrize("draw", [0, 1])
def test_deterministic_and_seed_dependent(draw: int) -> None:
    rng = np.random.default_rng(draw)  # draws the shape and the recipe seed; both show in the failure
    shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)), 3, 3)
    shapes = {"kernel_head.out_conv.weight": shape, "kernel_head.out_conv.bias": (shape[0],)}
    seed = int(rng.integers(0, 2**31))
    a = synthetic_state_dict(shapes, seed)
    b = synthetic_state_dict(shapes, seed)
    assert state_dict_digest(a) == state_dict_digest(b), f"shape {shape}, recipe seed {seed}"
    for k in shapes:
        assert a[k].tobytes() == b[k].tobytes()
    c = synthetic_state_dict(shapes, seed + 1)
    assert not np.array_equal(a["kernel_head.out_conv.weight"], c["kernel_head.out_conv.weight"])
    # Renaming a key changes the digest (the key bytes are hashed too).
    renamed = {"x" + k: v for k, v in a.items()}
    assert state_dict_digest(renamed) != state_dict_digest(a)


def test_conv_weight_is_centred_and_scaled() -> None:
    """Fan-in centring and the gain: each output filter sums to ~0 and the std is gain/sqrt(fan_in)."""
    w = synthetic_tensor("backbone.fpn_output2.weight", (64, 256, 3, 3), seed=7).astype(np.float64)
    assert np.abs(w.sum(axis=(1, 2, 3))).max() < 1e-5
    assert w.std() == pytest.approx(1.0 / np.sqrt(256 * 9), rel=0.02)
    embed = synthetic_tensor("thing_generator.embed_extractor.weight", (64, 256, 1, 1), seed=7)
    assert np.abs(embed.astype(np.float64).sum(axis=0)).max() < 1e-4  # output-axis centring


def test_offset_mask_bias_and_constants() -> None:
    b = synthetic_tensor("position_head.position_head.position_head_head_2.offset_mask_conv.bias", (27,), 5)
    plain = synthetic_tensor("x.offset_mask_conv_like.bias", (27,), 5)  # a plain bias: no +0.25
    assert np.abs(b[:18]).max() < 0.06 and np.abs(b[18:] - 0.25).max() < 0.06
    assert np.abs(plain).max() < 0.06
    assert np.all(synthetic_tensor("position_head.out_inst.bias", (80,), 5) == np.float32(-4.0))
    assert np.all(synthetic_tensor("position_head.out_sem.bias", (54,), 5) == np.float32(-1.0))
    assert np.all(synthetic_tensor("thing_generator.embed_extractor.bias", (64,), 5) == np.float32(-2.0))
    var = synthetic_tensor("backbone.bottom_up.res2.0.conv1.norm.running_var", (64,), 5)
    assert var.min() >= 0.5 and var.max() <= 1.5


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("kernel_head.fc.weight", (10, 4)),  # a 2-D (linear) weight
        ("semantic_fpn.p2.0.weight", (256,)),  # 1-D weight that is not a norm parameter
        ("backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked", ()),
        ("kernel_head.conv3d.weight", (2, 2, 2, 2, 2)),
        ("position_head.position_head.position_head_head_1.offset_mask_conv.bias", (18,)),
    ],
)
def test_unknown_key_kind_is_a_clear_error(key: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"no recipe rule|expected \[27\]") as info:
        synthetic_state_dict({"backbone.fpn_output2.bias": (4,), key: shape}, seed=1)
    assert key in str(info.value)


@pytest.mark.parametrize("name", sorted(SETS))
def test_write_synthetic_checkpoint_reproduces_reference(name: str, tmp_path: Path) -> None:
    seed, n_keys, digest = SETS[name]
    out = tmp_path / "sub" / "synthetic.pth"
    write_synthetic_checkpoint(CONFIGS[name], seed, out, opts=["MODEL.DEVICE", "cpu"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["synthetic.pth"]  # no temp file left
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    state = read_checkpoint(out)
    assert len(state) == n_keys
    assert all(v.dtype == torch.float32 for v in state.values())
    assert state_dict_digest(state) == digest
