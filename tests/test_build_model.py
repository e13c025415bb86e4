"""build_model: checkpoint key names and shapes per variant, and clear errors for unsupported configs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from panoptic_deploy.config import load_config
from panoptic_deploy.errors import ConfigError
from panoptic_deploy.modeling import build_model

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
FIXTURES = ROOT / "tests" / "fixtures" / "reference"


def _tsv_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with path.open() as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {r["key"]: tuple(int(v) for v in r["shape"].split("x")) for r in rows}


@pytest.mark.parametrize(
    ("config", "tsv"),
    [
        ("PanopticFCN-R50-400-3x-FAST-nodeform.yaml", FIXTURES / "nodeform" / "state_dict_keys.tsv"),
        ("PanopticFCN-R50-400-3x-FAST.yaml", FIXTURES / "dcn" / "state_dict_keys.tsv"),
    ],
)
def test_state_dict_keys_and_shapes_equal_the_official_model(config: str, tsv: Path) -> None:
    model = build_model(load_config(CONFIGS / config))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _tsv_shapes(tsv)


def test_star_config_has_the_deformable_encoder_keys() -> None:
    """Spec §8.4: 352 entries; the encoder convs are DCNv2 with bias, both embeds 256 -> 256."""
    sd = build_model(load_config(CONFIGS / "PanopticFCN-Star-R50-3x.yaml")).state_dict()
    assert len(sd) == 352
    head = "feature_encoder.encode_head.encode_head_head_1"
    assert tuple(sd[f"{head}.offset_mask_conv.weight"].shape) == (27, 258, 3, 3)
    assert tuple(sd[f"{head}.dcnv2.weight"].shape) == (256, 258, 3, 3)
    assert tuple(sd[f"{head}.dcnv2.bias"].shape) == (256,)
    assert tuple(sd["thing_generator.embed_extractor.weight"].shape) == (256, 256, 1, 1)


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        (["MODEL.META_ARCHITECTURE", "PanopticFPN"], "MODEL.META_ARCHITECTURE"),
        (["MODEL.RESNETS.DEPTH", "34"], "MODEL.RESNETS.DEPTH"),
        (["MODEL.INFERENCE.SIMILAR_TYPE", "L2"], "MODEL.INFERENCE.SIMILAR_TYPE"),
        (["MODEL.SEMANTIC_FPN.NORM", "BN"], "MODEL.SEMANTIC_FPN.NORM"),
        (["MODEL.KERNEL_HEAD.NORM", "SyncBN"], "MODEL.KERNEL_HEAD.NORM"),
        (["MODEL.POSITION_HEAD.STUFF.WITH_THING", "False"], "MODEL.POSITION_HEAD.STUFF.WITH_THING"),
        (["INPUT.FORMAT", "YUV"], "INPUT.FORMAT"),
        (["MODEL.FEATURE_ENCODER.IN_FEATURES", "['p3', 'p4']"], "MODEL.FEATURE_ENCODER.IN_FEATURES"),
    ],
)
def test_unsupported_options_are_one_line_errors_naming_the_key(opts: list[str], key: str) -> None:
    cfg = load_config(CONFIGS / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml", opts)
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    message = str(info.value)
    assert key in message and "\n" not in message
