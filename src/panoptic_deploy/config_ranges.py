"""Value ranges of the config keys this package reads, beyond yacs (which checks types only).

A number out of range would crash deep inside the model (a side resized to 0, a division by a zero std) or
silently give nothing (a threshold above 1); :func:`check_value_ranges` (called by
:func:`panoptic_deploy.config.load_config`) names the file or override that set it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from panoptic_deploy.errors import ConfigError

_MAX_SIZE = 16384
# key -> (lowest, highest) allowed, for the values this package reads; both ends included. A number out of
# range would crash deep inside the model (a side resized to 0, a division by a zero std) or silently give
# nothing (a threshold above 1).
VALUE_RANGES: dict[str, tuple[float, float]] = {
    "INPUT.MIN_SIZE_TEST": (1, _MAX_SIZE),
    "INPUT.MAX_SIZE_TEST": (1, _MAX_SIZE),
    "MODEL.POSITION_HEAD.THING.THRES": (0.0, 1.0),
    "MODEL.POSITION_HEAD.STUFF.THRES": (0.0, 1.0),
    # Each of the 5 levels keeps TOP_NUM // 2 candidates; the kernel fusion is quadratic in their number.
    "MODEL.POSITION_HEAD.THING.TOP_NUM": (2, 1000),
    "MODEL.INFERENCE.INST_THRES": (0.0, 1.0),
    "MODEL.INFERENCE.SIMILAR_THRES": (-1.0, 1.0),  # a cosine
    "MODEL.INFERENCE.COMBINE.OVERLAP_THRESH": (0.0, 1.0),
    "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT": (0, 2**31 - 1),
    "MODEL.INFERENCE.COMBINE.INST_THRESH": (0.0, 1.0),
    "MODEL.POSITION_HEAD.THING.NUM_CLASSES": (1, 10000),
    # Label 0 of the stuff map is "things": at least one real stuff class besides it.
    "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES": (2, 10000),
    "MODEL.POSITION_HEAD.NUM_CONVS": (1, 64),
    "MODEL.KERNEL_HEAD.NUM_CONVS": (1, 64),
    "MODEL.FEATURE_ENCODER.NUM_CONVS": (1, 64),
    "MODEL.POSITION_HEAD.CONVS_DIM": (1, 65536),
    "MODEL.KERNEL_HEAD.CONVS_DIM": (1, 65536),
    "MODEL.FEATURE_ENCODER.CONVS_DIM": (1, 65536),
    "MODEL.SEMANTIC_FPN.CONVS_DIM": (1, 65536),
    "MODEL.SEMANTIC_FPN.COMMON_STRIDE": (4, 4),  # the post-processing upsamples stride 4
    "MODEL.FPN.OUT_CHANNELS": (1, 65536),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": (1, 65536),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": (1, 65536),
    "MODEL.RESNETS.WIDTH_PER_GROUP": (1, 65536),
}
# Heads whose convs are followed by GroupNorm(32) when their NORM is "GN": CONVS_DIM must divide by 32.
_GN_HEADS = ("MODEL.POSITION_HEAD", "MODEL.KERNEL_HEAD", "MODEL.FEATURE_ENCODER", "MODEL.SEMANTIC_FPN")
_GN_GROUPS = 32


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value_ranges(cfg: Mapping[str, Any], origins: Mapping[tuple[str, ...], str] | None = None) -> None:
    """ConfigError (one line: where the value was set, the key, the allowed range, the value) for the first
    value of :data:`VALUE_RANGES` or GroupNorm width out of range. (``MODEL.PIXEL_MEAN``/``PIXEL_STD`` are
    checked where they are used, :func:`panoptic_deploy.modeling.input_params_from_config`.)"""

    def fail(key: str, message: str) -> None:
        source = (origins or {}).get(tuple(key.split(".")), "default config")
        raise ConfigError(f"{source}: {key} {message}")

    for key, (low, high) in VALUE_RANGES.items():
        value = _lookup(cfg, key)
        if not _is_number(value) or math.isnan(value) or not low <= value <= high:
            note = ""
            if key == "INPUT.MIN_SIZE_TEST" and value == 0:
                note = " (0, detectron2's 'no test resize', is not supported: the network needs a resize)"
            bounds = f"{low}" if low == high else f"in [{low}, {high}]"
            fail(key, f"must be {'' if low == high else 'a number '}{bounds}, got {value!r}{note}")
    for head in _GN_HEADS:
        if _lookup(cfg, f"{head}.NORM") == "GN" and _lookup(cfg, f"{head}.CONVS_DIM") % _GN_GROUPS:
            dim = _lookup(cfg, f"{head}.CONVS_DIM")
            fail(f"{head}.CONVS_DIM", f"must be a multiple of {_GN_GROUPS} with {head}.NORM 'GN', got {dim}")
