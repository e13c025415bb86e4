"""Safe checkpoint reading (untrusted pickles) and strict, readable state-dict checks."""

from __future__ import annotations

import codecs
import csv
import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from panoptic_deploy.checkpoint import check_state_dict, load_weights, read_checkpoint
from panoptic_deploy.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"


def _random_state(n: int = 4) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(21)
    return {
        f"block{i}.conv.weight": torch.from_numpy(rng.standard_normal((2, i + 1, 3, 3)).astype(np.float32))
        for i in range(n)
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def _one_line_error(exc: pytest.ExceptionInfo[CheckpointError], path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- reading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_pth_with_model_key_ignores_other_top_level_keys(tmp_path: Path, suffix: str) -> None:
    state = _random_state()
    path = tmp_path / f"model_final{suffix}"
    torch.save({"model": state, "optimizer": {"state": {}}, "iteration": 269999}, path)
    _assert_same(read_checkpoint(path), state)


def test_bare_state_dict_and_metadata_entry(tmp_path: Path) -> None:
    state = _random_state()
    path = tmp_path / "bare.pth"
    torch.save({**state, "_metadata": {"": {"version": 3}}}, path)
    _assert_same(read_checkpoint(path), state)


def test_real_module_state_dict_with_parameters(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    path = tmp_path / "module.pth"
    torch.save({"model": module.state_dict()}, path)  # OrderedDict with a _metadata attribute
    got = read_checkpoint(path)
    _assert_same(got, {k: v.detach() for k, v in module.state_dict().items()})


def test_module_prefix_stripped_only_when_every_key_has_it(tmp_path: Path) -> None:
    state = _random_state()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_same(read_checkpoint(path), state)

    keys = sorted(state)
    partial = {(f"module.{k}" if k != keys[0] else k): v for k, v in state.items()}
    torch.save({"model": partial}, path)
    assert sorted(read_checkpoint(path)) == sorted(partial)


def test_numpy_arrays_inside_pth(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    arrays: dict[str, np.ndarray] = {
        "a.weight": rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
        "a.bias": rng.standard_normal(3),  # float64
        "b.big_endian": rng.standard_normal(5).astype(">f4"),
        "c.ints": rng.integers(0, 9, size=4),
    }
    path = tmp_path / "numpy.pth"
    torch.save({"model": arrays, "iteration": 3}, path)
    got = read_checkpoint(path)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert isinstance(got[k], torch.Tensor)
        assert np.array_equal(got[k].numpy(), v), k
    assert got["a.bias"].dtype == torch.float64
    assert got["b.big_endian"].dtype == torch.float32


def test_numpy1_array_names_inside_legacy_pth(tmp_path: Path) -> None:
    """Files written under numpy 1.x name ``numpy.core.multiarray._reconstruct``; the legacy
    (non-zip) torch format keeps the pickle text, so the numpy-2 name can be rewritten to it."""
    value = np.random.default_rng(23).standard_normal((2, 3)).astype(np.float32)
    buf = io.BytesIO()
    torch.save({"model": {"w": value}}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "legacy.pth"
    path.write_bytes(data)
    assert np.array_equal(read_checkpoint(path)["w"].numpy(), value)


@pytest.mark.parametrize("protocol", [2, 4])
def test_model_zoo_pkl(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(24)
    arrays: OrderedDict[str, np.ndarray] = OrderedDict(
        [
            ("backbone.bottom_up.stem.conv1.weight", rng.standard_normal((4, 3, 7, 7)).astype(np.float32)),
            ("backbone.bottom_up.stem.conv1.norm.running_var", rng.random(4).astype(np.float32)),
            ("semantic_fpn.p2.0.norm.bias", rng.standard_normal(4)),
        ]
    )
    path = tmp_path / "model_final_abc.pkl"
    blob = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(blob, protocol=protocol))
    if protocol == 2:  # array bytes go through _codecs.encode(..., "latin1") at protocol 2
        assert b"_codecs\nencode" in path.read_bytes()
    got = read_checkpoint(path)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert np.array_equal(got[k].numpy(), v), k
        got[k].add_(1)  # writable, own memory


def test_bare_pkl_state_dict(tmp_path: Path) -> None:
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps({"w": value}))
    assert np.array_equal(read_checkpoint(path)["w"].numpy(), value)


# --- malicious pickles -------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, (f"touch '{marker}'",)),
        "os.mkdir": _Payload(os.mkdir, (str(marker),)),
        "numpy.save": _Payload(np.save, (str(marker), np.zeros(1))),  # numpy, but not array rebuilding
    }


@pytest.mark.parametrize("payload", ["os.system", "os.mkdir", "numpy.save"])
def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    blob = {"model": {"w": np.zeros(2, np.float32), "x": _payloads(marker)[payload]}}
    path.write_bytes(pickle.dumps(blob, protocol=2))
    with pytest.raises(CheckpointError, match="refused to load") as info:
        read_checkpoint(path)
    _one_line_error(info, path)
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_malicious_payload_is_real(tmp_path: Path) -> None:
    """Control: the same payload does run under an unrestricted unpickler (so the test above can fail)."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps({"model": {"x": _payloads(marker)["os.mkdir"]}}))
    assert marker.is_dir()


@pytest.mark.parametrize("payload", ["os.system", "os.mkdir"])
@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pth_is_refused_and_nothing_runs(tmp_path: Path, payload: str, zipfile: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    blob = {"model": {"w": torch.zeros(2), "x": _payloads(marker)[payload]}}
    torch.save(blob, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        read_checkpoint(path)
    message = _one_line_error(info, path)
    assert "system" in message or "mkdir" in message
    assert not marker.exists()


def test_codecs_encode_other_than_latin1_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps({"w": _Payload(codecs.encode, ("abc", "rot13"))}, protocol=2))
    with pytest.raises(CheckpointError, match="encoding 'rot13'") as info:
        read_checkpoint(path)
    _one_line_error(info, path)


# --- bad contents and bad files ----------------------------------------------------------------------


def test_non_tensor_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save({"model": {"good.weight": torch.zeros(2), "bad.weight": [1.0, 2.0]}}, path)
    with pytest.raises(CheckpointError, match=r"'bad\.weight' holds a list") as info:
        read_checkpoint(path)
    _one_line_error(info, path)


def test_string_array_in_pkl_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "strings.pkl"
    path.write_bytes(pickle.dumps({"model": {"names": np.array(["a", "bc"])}}))
    with pytest.raises(CheckpointError, match=r"'names' is a numpy array of unsupported dtype") as info:
        read_checkpoint(path)
    _one_line_error(info, path)


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        ([torch.zeros(1)], "expected a dict"),
        ({"model": [torch.zeros(1)]}, "'model' holds a list"),
        ({"model": {}}, "holds no tensors"),
        ({1: torch.zeros(1)}, "key 1 is not a string"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, obj: object, pattern: str) -> None:
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        read_checkpoint(path)
    _one_line_error(info, path)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_or_truncated_file(tmp_path: Path, suffix: str, damage: str) -> None:
    path = tmp_path / f"broken{suffix}"
    state = {"model": _random_state()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in state["model"].items()}}))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(25).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable") as info:
        read_checkpoint(path)
    _one_line_error(info, path)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"{}")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint extension '\.safetensors'") as info:
        read_checkpoint(path)
    _one_line_error(info, path)
    missing = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match="no such file") as info:
        read_checkpoint(missing)
    _one_line_error(info, missing)


# --- checking against the model ----------------------------------------------------------------------


def _tsv_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with (FIXTURES / name / "state_dict_keys.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["key"]: tuple(int(s) for s in r["shape"].split("x")) for r in rows}


def _zeros_like_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    # Expanded scalars: the right shapes without allocating 37 M floats.
    return {k: torch.zeros(()).expand(s) for k, s in shapes.items()}


def test_matching_state_passes() -> None:
    shapes = _tsv_shapes("nodeform")
    check_state_dict(shapes, _zeros_like_shapes(shapes), "ok.pth")


def test_missing_unexpected_and_shape_mismatch_in_one_message() -> None:
    expected = {f"layer{i}.weight": (4, 2, 3, 3) for i in range(6)}
    state = _zeros_like_shapes(expected)
    for i in range(5):
        del state[f"layer{i}.weight"]
    state["extra.bias"] = torch.zeros(4)
    expected["layer5.weight"] = (4, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state, "/tmp/ckpt.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith("/tmp/ckpt.pth does not fit the model")
    assert "5 missing key(s): layer0.weight, layer1.weight, layer2.weight, ... (+2 more)" in message
    assert "1 unexpected key(s): extra.bias" in message
    assert "1 shape mismatch(es): layer5.weight (checkpoint [4, 2, 3, 3] vs model [4, 3, 3, 3])" in message
    assert "layer3.weight" not in message  # compact: only the first few names


def test_integer_tensor_where_float_expected() -> None:
    expected = {"a.weight": (2, 2, 1, 1), "a.norm.running_var": (2,)}
    state = {"a.weight": torch.zeros(2, 2, 1, 1), "a.norm.running_var": torch.ones(2, dtype=torch.int64)}
    with pytest.raises(
        CheckpointError, match=r"1 non-floating tensor\(s\).*a\.norm\.running_var \(torch\.int64\)"
    ):
        check_state_dict(expected, state, "x.pth")


def test_dcn_checkpoint_into_nodeform_model_is_explained() -> None:
    with pytest.raises(CheckpointError) as info:
        check_state_dict(_tsv_shapes("nodeform"), _zeros_like_shapes(_tsv_shapes("dcn")), "official.pth")
    assert str(info.value) == (
        "official.pth holds a deformable (DCNv2) position head but the config has "
        "MODEL.POSITION_HEAD.DEFORM False; use the official config (DEFORM True) or a nodeform checkpoint"
    )


def test_nodeform_checkpoint_into_dcn_model_is_explained() -> None:
    with pytest.raises(CheckpointError) as info:
        check_state_dict(_tsv_shapes("dcn"), _zeros_like_shapes(_tsv_shapes("nodeform")), "nodeform.pth")
    message = str(info.value)
    assert message.startswith("nodeform.pth holds a plain (nodeform, non-deformable) position head")
    assert "MODEL.POSITION_HEAD.DEFORM True" in message
    assert "missing" not in message


def test_dcn_mismatch_plus_other_problems_lists_both() -> None:
    state = _zeros_like_shapes(_tsv_shapes("dcn"))
    del state["kernel_head.out_conv.bias"]
    with pytest.raises(CheckpointError) as info:
        check_state_dict(_tsv_shapes("nodeform"), state, "official.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "10 missing key(s)" in message  # 9 plain tower entries + the deleted bias
    assert "15 unexpected key(s)" in message
    assert "Note: official.pth holds a deformable (DCNv2) position head" in message


# --- loading into a module ---------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.norm = torch.nn.GroupNorm(2, 4)


def test_load_weights_casts_to_model_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(26)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)),  # float64 in the file
        "norm.weight": rng.random(4),
        "norm.bias": rng.standard_normal(4),
    }
    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps({"model": {f"module.{k}": v for k, v in arrays.items()}}))
    model = _Tiny()
    load_weights(model, path)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, torch.from_numpy(arrays[k]).float()), k


def test_load_weights_refuses_mismatch_and_leaves_model_untouched(tmp_path: Path) -> None:
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "wrong.pth"
    torch.save({"model": {"conv.weight": torch.ones(4, 3, 3, 3), "norm.weight": torch.ones(5)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    message = _one_line_error(info, path)
    assert "1 missing key(s): norm.bias" in message
    assert "norm.weight (checkpoint [5] vs model [4])" in message
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
