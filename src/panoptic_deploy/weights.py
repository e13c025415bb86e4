"""Deterministic synthetic weights (the parity references' recipe) and their digests.

No trained PanopticFCN checkpoint is available offline, so the reference outputs in
``tests/fixtures/reference/`` were produced by the official code with weights from this recipe
(SEED=1 for the nodeform model, SEED=3 for the deformable one). Reproducing it bit for bit lets the
re-implementation be compared with those outputs. The recipe:

* every key ``k`` gets its own generator ``numpy.random.default_rng([seed, zlib.crc32(k)])`` and at
  most one draw of the tensor's full shape; arithmetic is float64 in the stated order, cast to
  float32 at the end;
* conv weights (4-D, O×I×kh×kw): standard normal, centred with ``ndarray.mean`` over the fan-in axes
  (or the exceptions below), scaled by ``gain / sqrt(I*kh*kw)`` with the first matching gain;
* norm parameters (FrozenBN buffers, GroupNorm affine): uniform / normal draws;
* three constant biases (no draw); ``offset_mask_conv`` biases get +0.25 on the 9 modulation
  channels; every other bias is ``0.01 * standard_normal``.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from panoptic_deploy.errors import ConfigError
from panoptic_deploy.fileio import atomic_path

# Centring axes that differ from the fan-in axes (1, 2, 3).
_SPATIAL_CENTRED = {"feature_encoder.encode_head.encode_head_head_1.weight"}  # axes (2, 3)
_OUTPUT_CENTRED = {  # axis 0
    "thing_generator.embed_extractor.weight",
    "stuff_generator.embed_extractor.weight",
}
_CONSTANT_BIASES = {
    "position_head.out_inst.bias": -4.0,
    "position_head.out_sem.bias": -1.0,
    "thing_generator.embed_extractor.bias": -2.0,
}
# The 27 offset/mask channels of a DCNv2 offset conv: 18 offsets (y, x per tap), then 9 modulation logits.
_N_OFFSET_CHANNELS = 18
_MODULATION_BIAS = 0.25


@dataclass(frozen=True)
class KeyRecipe:
    """How one state-dict entry is generated.

    ``kind`` uses the names of the reference ``state_dict_keys.tsv``: conv_weight, conv_bias, const_bias,
    offset_mask_bias, norm_weight, norm_bias, bn_running_mean, bn_running_var. ``value`` is the gain
    (conv_weight), the constant (const_bias) or the modulation offset (offset_mask_bias), else None;
    ``axes`` the centring axes of a conv weight, else None.
    """

    kind: str
    value: float | None = None
    axes: tuple[int, ...] | None = None


def _conv_gain(key: str) -> float:
    """The first matching gain of the recipe's list (offset_mask_conv must precede ``_head_head_``)."""
    if key.endswith(".offset_mask_conv.weight"):
        return 3.0
    if key == "backbone.bottom_up.stem.conv1.weight":
        return 1.0 / 64.0
    if key.endswith(".conv3.weight"):
        return 0.5
    if key in ("position_head.out_inst.weight", "position_head.out_sem.weight"):
        return 3.0
    if key in _OUTPUT_CENTRED:
        return 16.0
    if (
        ".conv1.weight" in key
        or ".conv2.weight" in key
        or key.startswith("semantic_fpn.")
        or "_head_head_" in key
        or key == "backbone.top_block.p6.weight"
    ):
        return math.sqrt(2.0)
    return 1.0


def key_recipe(key: str, shape: Sequence[int]) -> KeyRecipe:
    """Classify ``key`` (with its ``shape``) into a recipe rule; ValueError for a key no rule covers."""
    if key.endswith(".weight") and len(shape) == 4:
        if key in _SPATIAL_CENTRED:
            axes: tuple[int, ...] = (2, 3)
        elif key in _OUTPUT_CENTRED:
            axes = (0,)
        else:
            axes = (1, 2, 3)
        return KeyRecipe("conv_weight", _conv_gain(key), axes)
    if len(shape) == 1:
        # Norm rules first: "norm.bias" also ends with ".bias".
        if key.endswith("norm.weight"):
            return KeyRecipe("norm_weight")
        if key.endswith("norm.bias"):
            return KeyRecipe("norm_bias")
        if key.endswith("norm.running_mean"):
            return KeyRecipe("bn_running_mean")
        if key.endswith("norm.running_var"):
            return KeyRecipe("bn_running_var")
        if key in _CONSTANT_BIASES:
            return KeyRecipe("const_bias", _CONSTANT_BIASES[key])
        if key.endswith(".offset_mask_conv.bias"):
            if shape[0] != _N_OFFSET_CHANNELS + 9:
                raise ValueError(f"synthetic weights: {key} has shape {list(shape)}, expected [27]")
            return KeyRecipe("offset_mask_bias", _MODULATION_BIAS)
        if key.endswith(".bias"):
            return KeyRecipe("conv_bias")
    raise ValueError(
        f"synthetic weights: no recipe rule for key {key!r} with shape {list(shape)} "
        "(only 4-D conv weights, 1-D norm parameters/buffers and 1-D biases are covered)"
    )


def synthetic_tensor(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The recipe's float32 tensor of ``shape`` for ``key`` and ``seed`` (C-order)."""
    recipe = key_recipe(key, shape)
    size = tuple(int(s) for s in shape)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    out: np.ndarray
    if recipe.kind == "conv_weight":
        assert recipe.value is not None and recipe.axes is not None
        n = rng.standard_normal(size)
        n = n - n.mean(axis=recipe.axes, keepdims=True)
        fan_in = size[1] * size[2] * size[3]
        out = n * (recipe.value / math.sqrt(fan_in))
    elif recipe.kind == "norm_weight":
        out = 0.5 + 0.5 * rng.random(size)
    elif recipe.kind in ("norm_bias", "bn_running_mean"):
        out = 0.1 * rng.standard_normal(size)
    elif recipe.kind == "bn_running_var":
        out = 0.5 + rng.random(size)
    elif recipe.kind == "const_bias":
        assert recipe.value is not None
        out = np.full(size, recipe.value, dtype=np.float64)
    elif recipe.kind == "offset_mask_bias":
        assert recipe.value is not None
        out = 0.01 * rng.standard_normal(size)
        out[_N_OFFSET_CHANNELS:] = out[_N_OFFSET_CHANNELS:] + recipe.value
    else:  # conv_bias
        out = 0.01 * rng.standard_normal(size)
    return np.ascontiguousarray(out.astype(np.float32))


def synthetic_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Recipe weights for every key of ``shapes`` (key -> shape); float32 arrays, same key order."""
    return {key: synthetic_tensor(key, shape, seed) for key, shape in shapes.items()}


def _le_bytes(value: np.ndarray | torch.Tensor) -> bytes:
    """Little-endian C-order bytes of an array or CPU tensor (dtype kept)."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def tensor_sha256(value: np.ndarray | torch.Tensor) -> str:
    """SHA-256 (hex) of one tensor's little-endian C-order bytes (the tsv's per-key hash for float32)."""
    return hashlib.sha256(_le_bytes(value)).hexdigest()


def state_dict_digest(sd: Mapping[str, np.ndarray | torch.Tensor]) -> str:
    """Whole-model digest: SHA-256 over ``key.encode("utf-8") + tensor bytes``, keys in sorted order."""
    h = hashlib.sha256()
    for key in sorted(sd):
        h.update(key.encode("utf-8"))
        h.update(_le_bytes(sd[key]))
    return h.hexdigest()


def write_synthetic_checkpoint(
    config: str | Path, seed: int, output: str | Path, opts: Sequence[str] = ()
) -> None:
    """Build the model of ``config`` (+ ``opts`` overrides) and save recipe weights for its state dict.

    The file is a detectron2-style ``{"model": {key: float32 tensor}}`` written atomically.
    """
    # Lazy: the config and model modules are heavy and not needed for the recipe itself.
    from panoptic_deploy.config import load_config
    from panoptic_deploy.modeling import build_model

    cfg = load_config(config, opts)
    model = build_model(cfg)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    try:
        weights = synthetic_state_dict(shapes, seed)
    except ValueError as exc:
        # The config chose an architecture whose keys the recipe does not define.
        raise ConfigError(f"{config}: {exc}") from exc
    checkpoint = {"model": {key: torch.from_numpy(value) for key, value in weights.items()}}
    with atomic_path(output) as tmp:
        torch.save(checkpoint, tmp)
