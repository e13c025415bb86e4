"""Config system: detectron2/fvcore/yacs merge semantics (spec §1.1) and the shipped configs (§1.2-§1.6)."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from panoptic_deploy.config import OPTS_SOURCE, CfgNode, get_default_config, load_config
from panoptic_deploy.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NODEFORM = CONFIGS / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: str | Path, opts: list[str] | None = None) -> str:
    """Load, expect a ConfigError, check it is one line, return its message."""
    with pytest.raises(ConfigError) as info:
        load_config(path, opts or [])
    message = str(info.value)
    assert "\n" not in message
    return message


def typed(cfg: CfgNode) -> str:
    """A comparison key that tells 1 from 1.0 from True and tuples from lists."""
    return repr(cfg.to_dict())


# --- defaults ----------------------------------------------------------------------------------

# Spec §1.4, transcribed independently of the code: every PanopticFCN key with its default.
PANOPTICFCN_DEFAULTS: dict[str, Any] = {
    "MODEL.TENSOR_DIM": 100,
    "MODEL.IGNORE_VALUE": 255,
    "SOLVER.POLY_LR_POWER": 0.9,
    "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,
    "MODEL.SEMANTIC_FPN.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.SEMANTIC_FPN.CONVS_DIM": 256,
    "MODEL.SEMANTIC_FPN.COMMON_STRIDE": 4,
    "MODEL.SEMANTIC_FPN.NORM": "GN",
    "MODEL.POSITION_HEAD.NUM_CONVS": 3,
    "MODEL.POSITION_HEAD.COORD": False,
    "MODEL.POSITION_HEAD.CONVS_DIM": 256,
    "MODEL.POSITION_HEAD.NORM": "GN",
    "MODEL.POSITION_HEAD.DEFORM": True,
    "MODEL.POSITION_HEAD.THING.CENTER_TYPE": "mass",
    "MODEL.POSITION_HEAD.THING.POS_NUM": 7,
    "MODEL.POSITION_HEAD.THING.NUM_CLASSES": 80,
    "MODEL.POSITION_HEAD.THING.BIAS_VALUE": -2.19,
    "MODEL.POSITION_HEAD.THING.MIN_OVERLAP": 0.7,
    "MODEL.POSITION_HEAD.THING.GAUSSIAN_SIGMA": 3,
    "MODEL.POSITION_HEAD.THING.THRES": 0.05,
    "MODEL.POSITION_HEAD.THING.TOP_NUM": 100,
    "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES": 54,
    "MODEL.POSITION_HEAD.STUFF.WITH_THING": True,
    "MODEL.POSITION_HEAD.STUFF.THRES": 0.05,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
    "MODEL.KERNEL_HEAD.INSTANCE_SCALES": ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
    "MODEL.KERNEL_HEAD.TEST_SCALES": ((1, 64), (64, 128), (128, 256), (256, 512), (512, 2048)),
    "MODEL.KERNEL_HEAD.NUM_CONVS": 3,
    "MODEL.KERNEL_HEAD.DEFORM": False,
    "MODEL.KERNEL_HEAD.COORD": True,
    "MODEL.KERNEL_HEAD.CONVS_DIM": 256,
    "MODEL.KERNEL_HEAD.NORM": "GN",
    "MODEL.FEATURE_ENCODER.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
    "MODEL.FEATURE_ENCODER.NUM_CONVS": 3,
    "MODEL.FEATURE_ENCODER.CONVS_DIM": 64,
    "MODEL.FEATURE_ENCODER.DEFORM": False,
    "MODEL.FEATURE_ENCODER.COORD": True,
    "MODEL.FEATURE_ENCODER.NORM": "",
    "MODEL.LOSS_WEIGHT.POSITION": 1.0,
    "MODEL.LOSS_WEIGHT.SEGMENT": 3.0,
    "MODEL.LOSS_WEIGHT.FOCAL_LOSS_ALPHA": 0.25,
    "MODEL.LOSS_WEIGHT.FOCAL_LOSS_GAMMA": 2.0,
    "MODEL.INFERENCE.INST_THRES": 0.4,
    "MODEL.INFERENCE.SIMILAR_THRES": 0.9,
    "MODEL.INFERENCE.SIMILAR_TYPE": "cosine",
    "MODEL.INFERENCE.CLASS_SPECIFIC": True,
    "MODEL.INFERENCE.COMBINE.ENABLE": True,
    "MODEL.INFERENCE.COMBINE.NO_OVERLAP": False,
    "MODEL.INFERENCE.COMBINE.OVERLAP_THRESH": 0.5,
    "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT": 4096,
    "MODEL.INFERENCE.COMBINE.INST_THRESH": 0.2,
}

# Spec §1.5: detectron2 defaults the model reads (values before any YAML).
DETECTRON2_DEFAULTS: dict[str, Any] = {
    "VERSION": 2,
    "MODEL.DEVICE": "cuda",
    "MODEL.WEIGHTS": "",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.MIN_SIZE_TRAIN": (800,),
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.RESNETS.DEFORM_MODULATED": False,
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": 1,
    "MODEL.FPN.IN_FEATURES": [],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.FUSE_TYPE": "sum",
    "TEST.AUG.ENABLED": False,
    "DATASETS.TRAIN": (),
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.STEPS": (30000,),
}


def get(cfg: CfgNode, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("key", sorted(PANOPTICFCN_DEFAULTS) + sorted(DETECTRON2_DEFAULTS))
def test_default_values_and_types(key: str) -> None:
    expected = {**PANOPTICFCN_DEFAULTS, **DETECTRON2_DEFAULTS}[key]
    value = get(get_default_config(), key)
    assert repr(value) == repr(expected)  # repr: 3 != 3.0, tuple != list


def test_panopticfcn_replaces_sem_seg_head() -> None:
    cfg = get_default_config()
    assert cfg.MODEL.SEM_SEG_HEAD.to_dict() == {"NUM_CLASSES": 54, "IGNORE_VALUE": 255}
    # detectron2's other SEM_SEG_HEAD keys are gone, so a YAML using them is rejected.
    assert "NAME" not in cfg.MODEL.SEM_SEG_HEAD


def test_default_config_is_fresh_and_mutable() -> None:
    first = get_default_config()
    first.MODEL.PIXEL_MEAN.append(0.0)
    first.MODEL.DEVICE = "cpu"
    second = get_default_config()
    assert second.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert second.MODEL.DEVICE == "cuda"


# --- CfgNode ---------------------------------------------------------------------------------------


def test_cfgnode_attribute_and_item_access() -> None:
    node = CfgNode({"A": {"B": {"C": 1}}, "D": (1, 2)})
    assert node.A.B.C == 1
    assert node["A"]["B"]["C"] == 1
    assert isinstance(node.A, CfgNode)
    assert isinstance(node.A.B, CfgNode)
    node.E = {"F": 2}  # plain mappings become nodes
    assert isinstance(node.E, CfgNode)
    assert node.E.F == 2
    with pytest.raises(AttributeError):
        _ = node.MISSING
    with pytest.raises(KeyError):
        _ = node["MISSING"]
    assert not hasattr(node, "MISSING")
    assert node.to_dict() == {"A": {"B": {"C": 1}}, "D": (1, 2), "E": {"F": 2}}
    assert type(node.to_dict()["A"]) is dict


def test_frozen_config_rejects_changes_and_clone_is_independent() -> None:
    cfg = load_config(NODEFORM)
    assert cfg.is_frozen()
    assert cfg.MODEL.POSITION_HEAD.is_frozen()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(AttributeError, match="frozen"):
        cfg.MODEL.POSITION_HEAD["DEFORM"] = True
    with pytest.raises(AttributeError, match="frozen"):
        del cfg.MODEL.WEIGHTS
    with pytest.raises(AttributeError, match="frozen"):
        cfg.INPUT.update({"FORMAT": "RGB"})
    with pytest.raises(AttributeError, match="frozen"):
        cfg.INPUT.pop("FORMAT")
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.INPUT.FORMAT == "BGR"

    clone = cfg.clone()
    assert not clone.is_frozen()
    clone.MODEL.DEVICE = "cpu"
    clone.MODEL.PIXEL_MEAN[0] = 0.0
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    clone.freeze()
    with pytest.raises(AttributeError):
        clone.SEED = 1
    clone.defrost()
    clone.SEED = 1
    assert clone.SEED == 1


def test_pickle_and_deepcopy_keep_values_types_and_frozen_state() -> None:
    cfg = load_config(NODEFORM)
    for copied in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert typed(copied) == typed(cfg)
        assert copied.is_frozen()
        assert isinstance(copied.MODEL.KERNEL_HEAD, CfgNode)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_dump_round_trips_exactly(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    text = cfg.dump()
    assert "MIN_SIZE_TRAIN: (" in text  # tuples in the official literal style
    dumped = write(tmp_path / "dumped.yaml", text)
    assert typed(load_config(dumped)) == typed(cfg)


def test_dump_quotes_strings_that_literal_eval_would_change(tmp_path: Path) -> None:
    cfg = get_default_config()
    cfg.MODEL.WEIGHTS = "1e-4"
    cfg.MODEL.DEVICE = "True"
    cfg.OUTPUT_DIR = "(1, 2)"
    cfg.MODEL.META_ARCHITECTURE = "'quoted'"
    cfg.MODEL.RPN.CONV_DIMS = [(1, 2)]  # a tuple inside a list survives too
    back = load_config(write(tmp_path / "d.yaml", cfg.dump()))
    assert back.MODEL.WEIGHTS == "1e-4"
    assert back.MODEL.DEVICE == "True"
    assert back.OUTPUT_DIR == "(1, 2)"
    assert back.MODEL.META_ARCHITECTURE == "'quoted'"
    assert back.MODEL.RPN.CONV_DIMS == [(1, 2)]
    assert typed(back) == typed(cfg)


# --- _BASE_ resolution -----------------------------------------------------------------------------


def test_base_is_relative_to_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "sub" / "base.yaml", "MODEL:\n  DEVICE: from_sub_base\n")
    child = write(tmp_path / "sub" / "child.yaml", "_BASE_: base.yaml\nSEED: 7\n")
    # A decoy with the same name next to the working directory must not be used.
    other = tmp_path / "other"
    write(other / "base.yaml", "MODEL:\n  DEVICE: from_cwd_decoy\n")
    monkeypatch.chdir(other)
    for path in (child, Path("../sub/child.yaml"), "../sub/child.yaml"):
        cfg = load_config(path)
        assert cfg.MODEL.DEVICE == "from_sub_base"
        assert cfg.SEED == 7


def test_base_of_a_base_is_relative_to_that_base(tmp_path: Path) -> None:
    write(tmp_path / "a" / "b" / "grand.yaml", "MODEL:\n  DEVICE: grand\n  WEIGHTS: grand.pth\nSEED: 1\n")
    write(tmp_path / "a" / "parent.yaml", "_BASE_: b/grand.yaml\nMODEL:\n  WEIGHTS: parent.pth\nSEED: 2\n")
    child = write(tmp_path / "child.yaml", "_BASE_: a/parent.yaml\nSEED: 3\n")
    cfg = load_config(child)
    assert (cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.SEED) == ("grand", "parent.pth", 3)


def test_list_of_bases_merges_in_order_later_wins(tmp_path: Path) -> None:
    write(tmp_path / "one.yaml", "MODEL:\n  DEVICE: one\n  WEIGHTS: one.pth\nSEED: 1\nVIS_PERIOD: 1\n")
    write(tmp_path / "two.yaml", "MODEL:\n  DEVICE: two\nSEED: 2\n")
    child = write(tmp_path / "child.yaml", "_BASE_: [one.yaml, two.yaml]\nSEED: 3\n")
    cfg = load_config(child)
    assert (cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.SEED, cfg.VIS_PERIOD) == ("two", "one.pth", 3, 1)
    reversed_child = write(tmp_path / "rev.yaml", "_BASE_: [two.yaml, one.yaml]\n")
    cfg = load_config(reversed_child)
    assert (cfg.MODEL.DEVICE, cfg.SEED) == ("one", 1)


def test_diamond_bases_are_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "SEED: 1\nVIS_PERIOD: 5\n")
    write(tmp_path / "left.yaml", "_BASE_: root.yaml\nSEED: 2\n")
    write(tmp_path / "right.yaml", "_BASE_: root.yaml\n")
    child = write(tmp_path / "child.yaml", "_BASE_: [left.yaml, right.yaml]\n")
    cfg = load_config(child)
    # right.yaml re-applies root's SEED after left's, as fvcore does.
    assert (cfg.SEED, cfg.VIS_PERIOD) == (1, 5)


def test_nested_mappings_merge_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        "MODEL:\n  POSITION_HEAD:\n    THING:\n      THRES: 0.3\n      TOP_NUM: 10\n"
        "    STUFF:\n      THRES: 0.4\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "_BASE_: base.yaml\nMODEL:\n  POSITION_HEAD:\n    THING:\n      TOP_NUM: 20\n",
    )
    head = load_config(child).MODEL.POSITION_HEAD
    assert (head.THING.THRES, head.THING.TOP_NUM, head.STUFF.THRES) == (0.3, 20, 0.4)
    assert head.THING.NUM_CLASSES == 80  # untouched defaults stay
    assert head.DEFORM is True


def test_lists_replace_wholesale_never_concatenate(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", 'MODEL:\n  RESNETS:\n    OUT_FEATURES: ["res2", "res3", "res4", "res5"]\n')
    child = write(
        tmp_path / "child.yaml", "_BASE_: base.yaml\nMODEL:\n  RESNETS:\n    OUT_FEATURES: [res5]\n"
    )
    assert load_config(child).MODEL.RESNETS.OUT_FEATURES == ["res5"]
    # The same against a default list and against a default tuple.
    direct = write(tmp_path / "direct.yaml", "MODEL:\n  PIXEL_MEAN: [1.0]\nINPUT:\n  MIN_SIZE_TRAIN: [10]\n")
    cfg = load_config(direct)
    assert cfg.MODEL.PIXEL_MEAN == [1.0]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (10,)
    # And through overrides.
    cfg = load_config(direct, ["MODEL.PIXEL_MEAN", "[5.0, 6.0]"])
    assert cfg.MODEL.PIXEL_MEAN == [5.0, 6.0]


def test_base_with_tilde_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write(home / "cfgs" / "base.yaml", "SEED: 11\n")
    monkeypatch.setenv("HOME", str(home))
    child = write(tmp_path / "x" / "child.yaml", "_BASE_: ~/cfgs/base.yaml\n")
    assert load_config(child).SEED == 11
    absolute = write(tmp_path / "y" / "child.yaml", f"_BASE_: {home / 'cfgs' / 'base.yaml'}\n")
    assert load_config(absolute).SEED == 11


# --- value decoding and type checks ----------------------------------------------------------------


def test_yaml_reads_these_values_as_strings_so_decoding_matters() -> None:
    raw = yaml.safe_load('a: 1e-4\nb: (1, 2)\nc: "False"\n')
    assert raw == {"a": "1e-4", "b": "(1, 2)", "c": "False"}


def test_literal_decoding_of_yaml_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yaml",
        "INPUT:\n  MIN_SIZE_TRAIN: (1, 2)\n"
        "SOLVER:\n  WEIGHT_DECAY: 1e-4\n  STEPS: (5,)\n"
        'MODEL:\n  POSITION_HEAD:\n    DEFORM: "False"\n  WEIGHTS: some/path.pth\n  DEVICE: cpu\n'
        '  KERNEL_HEAD:\n    INSTANCE_SCALES: "((1, 2), (3, 4))"\n'
        "  META_ARCHITECTURE: \"'1'\"\n",
    )
    cfg = load_config(path)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (1, 2)
    assert type(cfg.INPUT.MIN_SIZE_TRAIN) is tuple
    assert cfg.SOLVER.WEIGHT_DECAY == 0.0001
    assert type(cfg.SOLVER.WEIGHT_DECAY) is float
    assert cfg.SOLVER.STEPS == (5,)
    assert cfg.MODEL.POSITION_HEAD.DEFORM is False
    assert cfg.MODEL.WEIGHTS == "some/path.pth"  # not a literal: stays a string
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES == ((1, 2), (3, 4))
    assert cfg.MODEL.META_ARCHITECTURE == "1"  # a quoted literal decodes to the inner string


def test_literal_decoding_of_overrides() -> None:
    cfg = load_config(
        NODEFORM,
        [
            "INPUT.MIN_SIZE_TRAIN",
            "(1, 2)",
            "SOLVER.BASE_LR",
            "1e-4",
            "MODEL.POSITION_HEAD.DEFORM",
            "True",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "INPUT.MAX_SIZE_TEST",
            "700",
        ],
    )
    assert cfg.INPUT.MIN_SIZE_TRAIN == (1, 2)
    assert repr(cfg.SOLVER.BASE_LR) == "0.0001"
    assert cfg.MODEL.POSITION_HEAD.DEFORM is True
    assert (cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.INPUT.MAX_SIZE_TEST) == ("cpu", "", 700)


def test_overrides_apply_after_the_file_in_order() -> None:
    cfg = load_config(
        NODEFORM, ["MODEL.POSITION_HEAD.THING.THRES", "0.5", "MODEL.POSITION_HEAD.THING.THRES", "0.6"]
    )
    assert cfg.MODEL.POSITION_HEAD.THING.THRES == 0.6


def test_int_is_not_accepted_for_a_float(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  POSITION_HEAD:\n    THING:\n      THRES: 1\n")
    assert config_error(path) == f"{path}: MODEL.POSITION_HEAD.THING.THRES must be float, got int (1)"
    assert (
        config_error(NODEFORM, ["MODEL.POSITION_HEAD.THING.THRES", "1"])
        == f"{OPTS_SOURCE}: MODEL.POSITION_HEAD.THING.THRES must be float, got int (1)"
    )
    assert (
        load_config(NODEFORM, ["MODEL.POSITION_HEAD.THING.THRES", "1.0"]).MODEL.POSITION_HEAD.THING.THRES
        == 1.0
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "MODEL:\n  POSITION_HEAD:\n    THING:\n      TOP_NUM: 100.0\n",
            "MODEL.POSITION_HEAD.THING.TOP_NUM must be int, got float (100.0)",
        ),
        ("MODEL:\n  POSITION_HEAD:\n    DEFORM: 1\n", "MODEL.POSITION_HEAD.DEFORM must be bool, got int (1)"),
        (
            "MODEL:\n  POSITION_HEAD:\n    DEFORM: no_bool\n",
            "MODEL.POSITION_HEAD.DEFORM must be bool, got str ('no_bool')",
        ),
        (
            "MODEL:\n  POSITION_HEAD:\n    THING:\n      TOP_NUM: true\n",
            "MODEL.POSITION_HEAD.THING.TOP_NUM must be int, got bool (True)",
        ),
        ("MODEL:\n  DEVICE: 0\n", "MODEL.DEVICE must be str, got int (0)"),
        ("INPUT:\n  MIN_SIZE_TRAIN: 800\n", "INPUT.MIN_SIZE_TRAIN must be tuple, got int (800)"),
        ("MODEL:\n  PIXEL_MEAN: 1.0\n", "MODEL.PIXEL_MEAN must be list, got float (1.0)"),
    ],
)
def test_type_mismatches_are_rejected(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = write(tmp_path / "x.yaml", yaml_text)
    assert config_error(path) == f"{path}: {message}"


def test_list_and_tuple_convert_to_the_default_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.yaml",
        "INPUT:\n  MIN_SIZE_TRAIN: [1, 2]\n"
        'MODEL:\n  PIXEL_MEAN: "(1.0, 2.0, 3.0)"\n  KERNEL_HEAD:\n    TEST_SCALES: [[1, 2], [3, 4]]\n',
    )
    cfg = load_config(path)
    assert repr(cfg.INPUT.MIN_SIZE_TRAIN) == "(1, 2)"
    assert repr(cfg.MODEL.PIXEL_MEAN) == "[1.0, 2.0, 3.0]"
    # yacs converts the outer container only.
    assert repr(cfg.MODEL.KERNEL_HEAD.TEST_SCALES) == "([1, 2], [3, 4])"
    assert (
        repr(load_config(NODEFORM, ["MODEL.PIXEL_STD", "(2.0, 2.0, 2.0)"]).MODEL.PIXEL_STD)
        == "[2.0, 2.0, 2.0]"
    )


def test_none_replaces_and_is_replaced_by_basic_values(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  WEIGHTS: null\n  DEVICE: None\nSEED: ~\n")
    cfg = load_config(path)
    assert (cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE, cfg.SEED) == (None, None, None)
    # Once None, any basic value may replace it (the type check has nothing left to check).
    cfg = load_config(path, ["MODEL.WEIGHTS", "w.pth", "SEED", "1.5", "MODEL.DEVICE", "[1]"])
    assert (cfg.MODEL.WEIGHTS, cfg.SEED, cfg.MODEL.DEVICE) == ("w.pth", 1.5, [1])
    # ...but not a mapping, and None never replaces a whole node.
    assert (
        config_error(path, ["SEED", "{'a': 1}"])
        == f"{OPTS_SOURCE}: SEED must be None, got a mapping ({{'a': 1}})"
    )
    null_node = write(tmp_path / "n.yaml", "MODEL:\n  POSITION_HEAD: null\n")
    assert config_error(null_node) == f"{null_node}: MODEL.POSITION_HEAD must be a mapping, got None (None)"


# --- unknown keys and malformed input --------------------------------------------------------------


def test_unknown_keys_in_yaml_are_errors(tmp_path: Path) -> None:
    leaf = write(tmp_path / "leaf.yaml", "MODEL:\n  POSITION_HEAD:\n    THING:\n      FOO: 1\n")
    assert config_error(leaf) == f"{leaf}: unknown config key MODEL.POSITION_HEAD.THING.FOO"
    subtree = write(tmp_path / "sub.yaml", "MODEL:\n  FOO:\n    BAR: 1\n")
    assert config_error(subtree) == f"{subtree}: unknown config key MODEL.FOO"
    removed = write(tmp_path / "removed.yaml", "MODEL:\n  SEM_SEG_HEAD:\n    NAME: SemSegFPNHead\n")
    assert config_error(removed) == f"{removed}: unknown config key MODEL.SEM_SEG_HEAD.NAME"
    top = write(tmp_path / "top.yaml", "model:\n  DEVICE: cpu\n")  # keys are case-sensitive
    assert config_error(top) == f"{top}: unknown config key model"


def test_unknown_key_in_a_base_names_the_base(tmp_path: Path) -> None:
    base = write(tmp_path / "bases" / "base.yaml", "SOLVER:\n  NOT_A_KEY: 1\n")
    child = write(tmp_path / "child.yaml", "_BASE_: bases/base.yaml\nSEED: 1\n")
    assert config_error(child) == f"{base}: unknown config key SOLVER.NOT_A_KEY"
    # A type error in the child names the child, even inside a mapping the base also set.
    write(tmp_path / "good_base.yaml", "SOLVER:\n  BASE_LR: 0.5\n")
    child2 = write(tmp_path / "child2.yaml", "_BASE_: good_base.yaml\nSOLVER:\n  MAX_ITER: 1.5\n")
    assert config_error(child2) == f"{child2}: SOLVER.MAX_ITER must be int, got float (1.5)"


def test_unknown_keys_in_overrides_are_errors() -> None:
    assert (
        config_error(NODEFORM, ["MODEL.FOO.BAR", "1"]) == f"{OPTS_SOURCE}: unknown config key MODEL.FOO.BAR"
    )
    assert config_error(NODEFORM, ["MODEL.POSITION_HEAD.FOO", "1"]) == (
        f"{OPTS_SOURCE}: unknown config key MODEL.POSITION_HEAD.FOO"
    )
    assert config_error(NODEFORM, ["MODEL.DEVICE.X", "1"]) == (
        f"{OPTS_SOURCE}: unknown config key MODEL.DEVICE.X (MODEL.DEVICE is not a mapping)"
    )
    message = config_error(NODEFORM, ["MODEL.POSITION_HEAD", "{'DEFORM': True}"])
    assert message.startswith(f"{OPTS_SOURCE}: MODEL.POSITION_HEAD is a mapping")


def test_odd_length_overrides_are_an_error() -> None:
    assert config_error(NODEFORM, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS"]) == (
        f"{OPTS_SOURCE}: expected KEY VALUE pairs, got 3 items (key 'MODEL.WEIGHTS' has no value)"
    )


def test_base_cycles_are_detected(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: sub/../a.yaml\n")
    (tmp_path / "sub").mkdir()
    assert config_error(a) == f"{tmp_path / 'sub/../a.yaml'}: _BASE_ cycle: a.yaml -> b.yaml -> a.yaml"
    selfref = write(tmp_path / "self.yaml", "_BASE_: [self.yaml]\n")
    assert config_error(selfref) == f"{tmp_path / 'self.yaml'}: _BASE_ cycle: self.yaml -> self.yaml"


def test_missing_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert config_error(missing) == f"{missing}: cannot read config file: No such file or directory"
    child = write(tmp_path / "child.yaml", "_BASE_: gone/base.yaml\n")
    assert (
        config_error(child)
        == f"{tmp_path / 'gone' / 'base.yaml'}: cannot read config file: No such file or directory"
    )
    assert "cannot read config file" in config_error(tmp_path)  # a directory


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "MODEL:\n  DEVICE: cpu\n  WEIGHTS: [unclosed\n")
    message = config_error(bad)
    assert message.startswith(f"{bad}: invalid YAML at line ")
    tabbed = write(tmp_path / "tab.yaml", "MODEL:\n\tDEVICE: cpu\n")
    assert config_error(tabbed).startswith(f"{tabbed}: invalid YAML at line 2")
    # Python tags need the unsafe loader; we never use it.
    tagged = write(tmp_path / "tag.yaml", "INPUT:\n  MIN_SIZE_TRAIN: !!python/tuple [1, 2]\n")
    assert config_error(tagged).startswith(f"{tagged}: invalid YAML at line 2")
    base_is_bad = write(tmp_path / "child.yaml", "_BASE_: bad.yaml\n")
    assert config_error(base_is_bad).startswith(f"{bad}: invalid YAML")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a config file must be a mapping of keys, got None"),
        ("- MODEL\n- INPUT\n", "a config file must be a mapping of keys, got list"),
        ("just a string\n", "a config file must be a mapping of keys, got str"),
        ("MODEL:\n  1: x\n", "config keys must be strings, got 1 under MODEL"),
        ("_BASE_: 3\n", "_BASE_ must be a path or a list of paths, got 3"),
        (
            "_BASE_: https://example.com/x.yaml\n",
            "_BASE_ 'https://example.com/x.yaml': remote base configs are not supported",
        ),
        ("VERSION: 1\n", "VERSION 1 is not supported (only detectron2 config version 2)"),
        ("MODEL: 3\n", "MODEL must be a mapping, got int (3)"),
        ("MODEL:\n  DEVICE:\n    X: 1\n", "MODEL.DEVICE must be str, got a mapping"),
    ],
)
def test_structural_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "x.yaml", text)
    assert config_error(path) == f"{path}: {message}"


def test_mapping_cannot_merge_into_a_non_mapping_base_value(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "MODEL:\n  DEVICE: cpu\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nMODEL:\n  DEVICE:\n    X: 1\n")
    assert (
        config_error(child) == f"{child}: cannot merge mapping MODEL.DEVICE into the str value set by {base}"
    )
    # A scalar may replace a base mapping while merging files; the defaults then reject it.
    scalar = write(tmp_path / "scalar.yaml", "_BASE_: base.yaml\nMODEL: 5\n")
    assert config_error(scalar) == f"{scalar}: MODEL must be a mapping, got int (5)"


# --- the shipped configs ---------------------------------------------------------------------------

OFFICIAL = {
    # name: (MAX_ITER, MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TEST, MAX_SIZE_TEST,
    #        THING.POS_NUM, THING.THRES, STUFF.THRES, Star feature encoder)
    "PanopticFCN-R50-1x": (90000, (640, 672, 704, 736, 768, 800), 1333, 800, 1333, 7, 0.05, 0.05, False),
    "PanopticFCN-R50-1x-FAST": (90000, (640, 672, 704, 736, 768, 800), 1333, 800, 1333, 7, 0.2, 0.1, False),
    "PanopticFCN-R50-3x": (270000, (640, 672, 704, 736, 768, 800), 1333, 800, 1333, 7, 0.05, 0.05, False),
    "PanopticFCN-R50-3x-FAST": (270000, (640, 672, 704, 736, 768, 800), 1333, 800, 1333, 7, 0.2, 0.1, False),
    "PanopticFCN-R50-400-3x": (270000, (352, 384, 416, 448, 480, 512), 854, 400, 666, 3, 0.05, 0.05, False),
    "PanopticFCN-R50-400-3x-FAST": (
        270000,
        (352, 384, 416, 448, 480, 512),
        854,
        400,
        666,
        3,
        0.2,
        0.1,
        False,
    ),
    "PanopticFCN-R50-512-3x": (270000, (352, 384, 416, 448, 480, 512), 854, 512, 854, 3, 0.05, 0.05, False),
    "PanopticFCN-R50-512-3x-FAST": (
        270000,
        (352, 384, 416, 448, 480, 512),
        854,
        512,
        854,
        3,
        0.2,
        0.1,
        False,
    ),
    "PanopticFCN-R50-600-3x": (270000, (440, 472, 504, 536, 568, 600), 1000, 600, 1000, 5, 0.05, 0.05, False),
    "PanopticFCN-R50-600-3x-FAST": (
        270000,
        (440, 472, 504, 536, 568, 600),
        1000,
        600,
        1000,
        5,
        0.2,
        0.1,
        False,
    ),
    "PanopticFCN-Star-R50-3x": (270000, (640, 672, 704, 736, 768, 800), 1333, 800, 1333, 7, 0.05, 0.05, True),
    "PanopticFCN-Star-R50-3x-FAST": (
        270000,
        (640, 672, 704, 736, 768, 800),
        1333,
        800,
        1333,
        7,
        0.2,
        0.1,
        True,
    ),
}


def test_exactly_the_expected_config_files_ship() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert names == {*OFFICIAL, "PanopticFCN-R50-400-3x-FAST-nodeform", "PanopticFCN-R50-demo-scenes"}
    for name in OFFICIAL:
        assert "_BASE_" not in (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_values(name: str) -> None:
    max_iter, train_sizes, max_train, test_size, max_test, pos_num, thing, stuff, star = OFFICIAL[name]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    m = cfg.MODEL
    # Common to all 12 files (spec §1.2).
    assert m.META_ARCHITECTURE == "PanopticFCN"
    assert m.WEIGHTS == "/data/detectron2_modelzoo/basemodel/R-50-MSRA.pkl"
    assert m.MASK_ON is True
    assert repr(m.PIXEL_MEAN) == "[123.675, 116.28, 103.53]"
    assert repr(m.PIXEL_STD) == "[1.0, 1.0, 1.0]"
    assert m.RESNETS.DEPTH == 50
    assert m.RESNETS.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    assert m.FPN.IN_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic_separated",)
    assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic_separated",)
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is True
    s = cfg.SOLVER
    assert (s.BASE_LR, s.WEIGHT_DECAY, s.LR_SCHEDULER_NAME, s.POLY_LR_POWER) == (
        0.01,
        0.0001,
        "WarmupPolyLR",
        0.9,
    )
    assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD) == (1000, 0.001, "linear")
    assert (s.CLIP_GRADIENTS.ENABLED, s.CLIP_GRADIENTS.CLIP_VALUE) == (True, 35.0)
    assert (s.IMS_PER_BATCH, s.CHECKPOINT_PERIOD) == (16, 10000)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.VERSION == 2
    # Per file.
    assert max_iter == s.MAX_ITER
    assert repr(cfg.INPUT.MIN_SIZE_TRAIN) == repr(train_sizes)
    sizes = (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert sizes == (max_train, test_size, max_test)
    assert pos_num == m.POSITION_HEAD.THING.POS_NUM
    assert (thing, stuff) == (m.POSITION_HEAD.THING.THRES, m.POSITION_HEAD.STUFF.THRES)
    assert ((True, 256) if star else (False, 64)) == (m.FEATURE_ENCODER.DEFORM, m.FEATURE_ENCODER.CONVS_DIM)
    assert m.POSITION_HEAD.DEFORM is True  # no official file overrides it (spec §0)


def test_fast_variants_differ_only_in_the_two_thresholds() -> None:
    for name in OFFICIAL:
        if not name.endswith("-FAST"):
            continue
        fast = load_config(CONFIGS / f"{name}.yaml")
        normal = load_config(CONFIGS / f"{name.removesuffix('-FAST')}.yaml").clone()
        normal.MODEL.POSITION_HEAD.THING.THRES = 0.2
        normal.MODEL.POSITION_HEAD.STUFF.THRES = 0.1
        assert typed(fast) == typed(normal), name


def test_nodeform_effective_values() -> None:
    cfg = load_config(NODEFORM)
    m = cfg.MODEL
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (400, 666)
    assert cfg.INPUT.FORMAT == "BGR"
    assert repr(m.PIXEL_MEAN) == "[123.675, 116.28, 103.53]"
    assert repr(m.PIXEL_STD) == "[1.0, 1.0, 1.0]"
    assert m.POSITION_HEAD.DEFORM is False
    assert m.KERNEL_HEAD.DEFORM is False
    assert m.FEATURE_ENCODER.DEFORM is False
    assert (m.KERNEL_HEAD.COORD, m.FEATURE_ENCODER.COORD, m.POSITION_HEAD.COORD) == (True, True, False)
    thing, stuff = m.POSITION_HEAD.THING, m.POSITION_HEAD.STUFF
    assert (thing.THRES, thing.TOP_NUM, thing.NUM_CLASSES, thing.POS_NUM) == (0.2, 100, 80, 3)
    assert (stuff.THRES, stuff.NUM_CLASSES, stuff.WITH_THING) == (0.1, 54, True)
    inf = m.INFERENCE
    assert (inf.INST_THRES, inf.SIMILAR_THRES, inf.SIMILAR_TYPE, inf.CLASS_SPECIFIC) == (
        0.4,
        0.9,
        "cosine",
        True,
    )
    assert (
        inf.COMBINE.ENABLE,
        inf.COMBINE.OVERLAP_THRESH,
        inf.COMBINE.STUFF_AREA_LIMIT,
        inf.COMBINE.INST_THRESH,
    ) == (
        True,
        0.5,
        4096,
        0.2,
    )
    assert repr(m.KERNEL_HEAD.INSTANCE_SCALES) == "((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))"
    assert m.FEATURE_ENCODER.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    assert m.SEMANTIC_FPN.IN_FEATURES == ["p2", "p3", "p4", "p5"]
    assert (m.SEMANTIC_FPN.COMMON_STRIDE, m.FEATURE_ENCODER.CONVS_DIM, m.KERNEL_HEAD.CONVS_DIM) == (
        4,
        64,
        256,
    )
    assert (m.FPN.OUT_CHANNELS, m.FPN.NORM, m.RESNETS.NORM, m.RESNETS.STRIDE_IN_1X1) == (
        256,
        "",
        "FrozenBN",
        True,
    )


def test_nodeform_equals_400_fast_with_the_deform_override() -> None:
    # The reference README builds "nodeform" as the official file + merge_from_list overrides.
    opts = ["MODEL.POSITION_HEAD.DEFORM", "False", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    via_opts = load_config(CONFIGS / "PanopticFCN-R50-400-3x-FAST.yaml", opts)
    via_base = load_config(NODEFORM, opts[2:])
    assert typed(via_opts) == typed(via_base)
    assert (via_base.MODEL.DEVICE, via_base.MODEL.WEIGHTS) == ("cpu", "")


def test_shipped_config_loads_from_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(NODEFORM, tmp_path)
    assert load_config(relative).MODEL.POSITION_HEAD.DEFORM is False
    assert load_config(relative).INPUT.MIN_SIZE_TEST == 400
