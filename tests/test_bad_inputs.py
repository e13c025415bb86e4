"""The bad-input sweep (issue 15), run in CI: bad or unusual inputs a user can give the command line.

Each case of ``test_command_line_case`` is one command. It asserts the exit code, that every error is ONE line
(``error: ...``) naming the file or config key, which outputs were written (nothing, for a refusal), and that
no input changed: the SHA-256 of every input file (images, config, weights, ...) before and after.

Rows of the issue: (1) an output that is an input, (2) 16-bit and other image modes, (3) one bad image in a
batch, config ranges, (5) a truncated JPEG, (6) YAML syntax errors, (7) an output of the wrong kind,
(8) non-finite weights, (9) large images (bounded memory, same results), and a representative set of inputs
that already behaved (pickle and YAML payloads never run, checkpoint mismatches, unusual but valid images).
The Snakemake start checks (truncated calibration JPEG, YAML error in config/config.yaml) run the workflow's
parse for real. Tests of the same behaviour elsewhere are not repeated (tests/test_checkpoint.py,
tests/test_config.py, tests/test_predict.py, tests/test_workflow.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_deploy import postprocess as pp
from panoptic_deploy.cli import main
from panoptic_deploy.errors import ImageError
from panoptic_deploy.modeling.panoptic_fcn import InferenceParams
from panoptic_deploy.panoptic_format import read_panoptic_png
from panoptic_deploy.preprocess import read_image
from panoptic_deploy.weights import write_synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
DCN_CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST.yaml"
PHOTO = ROOT / "tests" / "fixtures" / "images" / "coffee.png"
# A small test resize keeps every prediction fast (~1 s with the model load); still both kinds of segment.
OPTS = [
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT",
    "16",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, path, opts=OPTS)
    return path


# ------------------------------------------------------------------------------------------------------------
# Input files


def rgb_photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """The coffee test photo resized to ``size`` (W, H), RGB."""
    with Image.open(PHOTO) as image:
        return image.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` × ``height`` 8-bit RGB pixels, with one empty IDAT (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def truncated_jpeg(path: Path) -> Path:
    data = (ROOT / "demo" / "images" / "calibration" / "grace_hopper.jpg").read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 3])
    return path


def mutated_weights(weights: Path, dest: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of ``weights`` with ``change`` applied to its state dict."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = state.get("model", state)
    change(model)
    torch.save(state, dest)
    return dest


class _Payload:
    """Pickles to a call of ``func(*args)``: code that runs while an unrestricted unpickler reads it."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


def sha256_of(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file among ``paths`` (folders: every file under them)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(set(files))}


# ------------------------------------------------------------------------------------------------------------
# Command-line cases


@dataclass
class Case:
    """One command: ``argv``, its exit code, one list of substrings per expected error line (in order),
    the inputs that must not change, and the output folder with the names expected in it afterwards
    (None: the folder must be exactly as before, i.e. nothing written)."""

    argv: list[str]
    rc: int
    errors: list[list[str]]
    inputs: list[Path]
    output: Path | None = None
    written: list[str] | None = None
    absent: list[Path] = field(default_factory=list)  # files that must not exist afterwards (payload markers)


def predict(
    out: Path, images: list[Path], weights: Path, config: Path = CONFIG, opts: list[str] = OPTS
) -> list[str]:
    return [
        "predict",
        "--config",
        str(config),
        "--weights",
        str(weights),
        "--no-progress",
        "--output",
        str(out),
        "--opts",
        *opts,
        "--",
        *map(str, images),
    ]


def outputs_of(*names: str) -> list[str]:
    return sorted(f"{n}{ext}" for n in names for ext in (".json", ".png"))


# Row 1: an output that is an input --------------------------------------------------------------------------


def output_folder_holds_the_input(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "d" / "photo.png")
    return Case(
        predict(tmp / "d", [photo], weights),
        2,
        [[str(photo), "also an input", "nothing was written"]],
        [photo],
        output=tmp / "d",
    )


def output_folder_is_a_link_to_the_input_folder(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "d" / "photo.png")
    (tmp / "link").symlink_to(tmp / "d", target_is_directory=True)
    return Case(
        predict(tmp / "link", [photo], weights),
        2,
        [["link/photo.png", "same file as the input", str(photo)]],
        [photo],
        output=tmp / "d",
    )


def prediction_json_is_an_input_image(tmp: Path, weights: Path) -> Case:
    image = save(rgb_photo(), tmp / "d" / "photo.json", format="PNG")  # an image under a .json name
    return Case(
        predict(tmp / "d", [image], weights), 2, [[str(image), "also an input"]], [image], output=tmp / "d"
    )


def coco_json_is_an_input_image(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    argv = [*predict(tmp / "out", [photo], weights)[:-2], "--coco-json", str(photo), "--", str(photo)]
    return Case(argv, 2, [[str(photo), "also an input"]], [photo], output=tmp / "out")


def coco_json_is_a_prediction_json(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    target = tmp / "out" / "photo.json"
    argv = [*predict(tmp / "out", [photo], weights)[:-2], "--coco-json", str(target), "--", str(photo)]
    return Case(
        argv, 2, [[str(target), "--coco-json", "JSON of a predicted image"]], [photo], output=tmp / "out"
    )


def pq_json_is_the_prediction_json(tmp: Path, weights: Path) -> Case:
    for name in ("gt.json", "pred.json"):
        (tmp / name).write_text('{"annotations": []}\n', encoding="utf-8")
    (tmp / "gt").mkdir()
    (tmp / "pred").mkdir()
    argv = [
        "pq",
        "--gt-json",
        str(tmp / "gt.json"),
        "--gt-dir",
        str(tmp / "gt"),
        "--pred-json",
        str(tmp / "pred.json"),
        "--pred-dir",
        str(tmp / "pred"),
        "--json",
        str(tmp / "pred.json"),
    ]
    return Case(argv, 2, [["pred.json", "also an input"]], [tmp / "gt.json", tmp / "pred.json"], output=tmp)


def make_weights_output_is_the_config(tmp: Path, weights: Path) -> Case:
    config = tmp / "cfg.yaml"
    config.write_text(f"_BASE_: {CONFIG}\n", encoding="utf-8")
    argv = ["make-weights", "--config", str(config), "--seed", "1", "--output", str(config)]
    return Case(argv, 2, [[str(config), "also an input"]], [config], output=tmp)


def simplify_output_is_its_input(tmp: Path, weights: Path) -> Case:
    model = tmp / "m.onnx"
    model.write_bytes(b"not read: refused before")
    photo = save(rgb_photo(), tmp / "photo.png")
    argv = ["simplify", "--input", str(model), "--output", str(model), "--config", str(CONFIG), str(photo)]
    return Case(argv, 2, [[str(model), "also an input"]], [model, photo], output=tmp)


# Row 2: image modes that cannot be converted without guessing -----------------------------------------------


def float_tiff_out_of_range(tmp: Path, weights: Path) -> Case:
    grey = np.asarray(rgb_photo().convert("L"), dtype=np.float32)  # 0..255 stored as float: scale unknown
    image = save(Image.fromarray(grey), tmp / "float.tif")
    good = save(rgb_photo(), tmp / "good.png")
    return Case(
        predict(tmp / "out", [image, good], weights),
        1,
        [[str(image), "mode 'F'", "[0, 1]"]],
        [image, good],
        output=tmp / "out",
        written=outputs_of("good"),
    )


def int32_tiff_out_of_range(tmp: Path, weights: Path) -> Case:
    values = np.asarray(rgb_photo().convert("L"), dtype=np.int32) * 1000  # up to 255000: beyond 16 bits
    image = save(Image.fromarray(values), tmp / "int32.tif")
    return Case(
        predict(tmp / "out", [image], weights),
        1,
        [[str(image), "mode 'I'", "0..65535"]],
        [image],
        output=tmp / "out",
        written=[],
    )


# Row 3: one bad image never stops the batch; config values out of range -------------------------------------


def batch_with_bomb_extreme_aspect_and_empty_file(tmp: Path, weights: Path) -> Case:
    first = save(rgb_photo(), tmp / "first.png")
    bomb = png_header_only(tmp / "bomb.png", 30000, 30000)  # 900 Mpx claimed by a 57-byte file
    wide = save(rgb_photo((1500, 1)), tmp / "wide.png")  # 1500:1, above 2 * 96: a side would be 0
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    last = save(rgb_photo(), tmp / "last.jpg")
    errors = [
        [str(bomb), "exceeds limit"],
        [str(wide), "aspect ratio", "192:1"],
        [str(empty), "cannot decode"],
    ]
    return Case(
        predict(tmp / "out", [first, bomb, wide, empty, last], weights),
        1,
        errors,
        [first, bomb, wide, empty, last],
        output=tmp / "out",
        written=outputs_of("first", "last"),
    )


def _range_case(
    tmp: Path, weights: Path, key: str, value: str, needles: list[str], line: list[str] | None = None
) -> Case:
    """``--opts KEY VALUE`` that is refused: one line naming the override and the key (or ``line``)."""
    photo = save(rgb_photo(), tmp / "photo.png")
    opts = [*OPTS, key, value]
    errors = [line] if line is not None else [["command-line override", key, *needles]]
    return Case(
        predict(tmp / "out", [photo], weights, opts=opts),
        2,
        errors,
        [photo],
        output=tmp / "out",
        written=[],
    )


def min_size_test_zero(tmp: Path, weights: Path) -> Case:
    return _range_case(tmp, weights, "INPUT.MIN_SIZE_TEST", "0", ["[1, 16384]", "got 0"])


def min_size_test_negative_in_a_yaml_file(tmp: Path, weights: Path) -> Case:
    config = tmp / "cfg.yaml"
    config.write_text(
        f"_BASE_: {CONFIG}\nINPUT:\n  MAX_SIZE_TEST: 96\n  MIN_SIZE_TEST: -64\n", encoding="utf-8"
    )
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], weights, config=config, opts=[]),
        2,
        [[str(config), "INPUT.MIN_SIZE_TEST", "[1, 16384]", "-64"]],
        [photo, config],
        output=tmp / "out",
        written=[],
    )


def threshold_above_one(tmp: Path, weights: Path) -> Case:
    return _range_case(tmp, weights, "MODEL.INFERENCE.INST_THRES", "1.5", ["[0.0, 1.0]", "1.5"])


def top_num_zero(tmp: Path, weights: Path) -> Case:
    return _range_case(tmp, weights, "MODEL.POSITION_HEAD.THING.TOP_NUM", "0", ["[2, 1000]"])


def pixel_std_zero(tmp: Path, weights: Path) -> Case:
    return _range_case(tmp, weights, "MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]", [], ["MODEL.PIXEL_STD", "> 0"])


# Row 5: a truncated JPEG ------------------------------------------------------------------------------------


def truncated_jpeg_in_a_batch(tmp: Path, weights: Path) -> Case:
    broken = truncated_jpeg(tmp / "trunc.jpg")
    good = save(rgb_photo(), tmp / "good.png")
    return Case(
        predict(tmp / "out", [broken, good], weights),
        1,
        [[str(broken), "truncated"]],
        [broken, good],
        output=tmp / "out",
        written=outputs_of("good"),
    )


# Row 6: a YAML syntax error in a detectron2 config ----------------------------------------------------------


def yaml_syntax_error_in_the_model_config(tmp: Path, weights: Path) -> Case:
    config = tmp / "bad.yaml"
    config.write_text(
        f"_BASE_: {CONFIG}\nINPUT:\n  MIN_SIZE_TEST: 64\n   MAX_SIZE_TEST: 96\n", encoding="utf-8"
    )
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], weights, config=config, opts=[]),
        2,
        [[str(config), "invalid YAML at line 4"]],
        [config, photo],
        output=tmp / "out",
        written=[],
    )


# Row 7: an output of the wrong kind -------------------------------------------------------------------------


def predict_output_is_an_existing_file(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    out = tmp / "out.txt"
    out.write_text("my notes\n", encoding="utf-8")
    return Case(predict(out, [photo], weights), 2, [[str(out), "not a folder"]], [photo, out], output=tmp)


def predict_output_below_a_file(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    notes = tmp / "notes.txt"
    notes.write_text("my notes\n", encoding="utf-8")
    return Case(
        predict(notes / "out", [photo], weights),
        2,
        [[str(notes), "is a file, not a folder"]],
        [photo, notes],
        output=tmp,
    )


def pq_json_is_a_folder(tmp: Path, weights: Path) -> Case:
    for name in ("gt.json", "pred.json"):
        (tmp / name).write_text('{"annotations": []}\n', encoding="utf-8")
    for name in ("gt", "pred", "results"):
        (tmp / name).mkdir()
    argv = [
        "pq",
        "--gt-json",
        str(tmp / "gt.json"),
        "--gt-dir",
        str(tmp / "gt"),
        "--pred-json",
        str(tmp / "pred.json"),
        "--pred-dir",
        str(tmp / "pred"),
        "--json",
        str(tmp / "results"),
    ]
    return Case(
        argv, 2, [[str(tmp / "results"), "is a folder"]], [tmp / "gt.json", tmp / "pred.json"], output=tmp
    )


# Row 8: non-finite weights ----------------------------------------------------------------------------------

NAN_KEY = "backbone.bottom_up.res3.0.conv1.weight"
INF_KEY = "position_head.out_sem.bias"


def _poisoned(tmp: Path, weights: Path, key: str, value: float) -> Case:
    def poison(state: dict[str, torch.Tensor]) -> None:
        assert key in state, sorted(state)[:5]
        state[key] = state[key].clone()
        state[key].view(-1)[3] = value

    bad = mutated_weights(weights, tmp / "bad.pth", poison)
    photo = save(rgb_photo(), tmp / "photo.png")
    kind = "NaN" if np.isnan(value) else "Inf"
    return Case(
        predict(tmp / "out", [photo], bad),
        2,
        [[str(bad), "non-finite", key, f"1 {kind}"]],
        [bad, photo],
        output=tmp / "out",
        written=[],
    )


def nan_weight(tmp: Path, weights: Path) -> Case:
    return _poisoned(tmp, weights, NAN_KEY, float("nan"))


def inf_weight(tmp: Path, weights: Path) -> Case:
    return _poisoned(tmp, weights, INF_KEY, float("-inf"))


# Row 10: what already behaved -------------------------------------------------------------------------------


def pickle_payload_never_runs(tmp: Path, weights: Path) -> Case:
    marker = tmp / "pwned"
    evil = tmp / "evil.pkl"
    evil.write_bytes(
        pickle.dumps({"model": {"w": np.zeros(2, np.float32), "x": _Payload(os.mkdir, str(marker))}})
    )
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], evil),
        2,
        [[str(evil), "refused to load", "mkdir"]],
        [evil, photo],
        output=tmp / "out",
        written=[],
        absent=[marker],
    )


def pth_payload_never_runs(tmp: Path, weights: Path) -> Case:
    marker = tmp / "pwned"
    evil = tmp / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2), "x": _Payload(os.mkdir, str(marker))}}, evil)
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], evil),
        2,
        [[str(evil), "refused to load", "mkdir"]],
        [evil, photo],
        output=tmp / "out",
        written=[],
        absent=[marker],
    )


def yaml_payload_never_runs(tmp: Path, weights: Path) -> Case:
    marker = tmp / "pwned"
    config = tmp / "evil.yaml"
    config.write_text(f"_BASE_: !!python/object/apply:os.mkdir ['{marker}']\n", encoding="utf-8")
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], weights, config=config),
        2,
        [[str(config), "invalid YAML"]],
        [config, photo],
        output=tmp / "out",
        written=[],
        absent=[marker],
    )


def _checkpoint_case(
    tmp: Path, weights: Path, change: Callable[[dict[str, torch.Tensor]], None], needles: list[str]
) -> Case:
    bad = mutated_weights(weights, tmp / "bad.pth", change)
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], bad),
        2,
        [[str(bad), *needles]],
        [bad, photo],
        output=tmp / "out",
        written=[],
    )


def checkpoint_missing_key(tmp: Path, weights: Path) -> Case:
    return _checkpoint_case(tmp, weights, lambda s: s.pop(NAN_KEY), ["1 missing key", NAN_KEY])


def checkpoint_extra_key(tmp: Path, weights: Path) -> Case:
    def add(state: dict[str, torch.Tensor]) -> None:
        state["roi_heads.box_predictor.bias"] = torch.zeros(3)

    return _checkpoint_case(tmp, weights, add, ["1 unexpected key", "roi_heads.box_predictor.bias"])


def checkpoint_shape_mismatch(tmp: Path, weights: Path) -> Case:
    def reshape(state: dict[str, torch.Tensor]) -> None:
        state[INF_KEY] = torch.zeros(7)

    return _checkpoint_case(tmp, weights, reshape, ["1 shape mismatch", INF_KEY, "[7]"])


def nodeform_checkpoint_with_a_dcn_config(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], weights, config=DCN_CONFIG),
        2,
        [[str(weights), "plain (nodeform", "DEFORM True"]],
        [photo],
        output=tmp / "out",
        written=[],
    )


def missing_weights_file(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], tmp / "nope.pth"),
        2,
        [["nope.pth", "no such file"]],
        [photo],
        output=tmp / "out",
        written=[],
    )


def missing_config_file(tmp: Path, weights: Path) -> Case:
    photo = save(rgb_photo(), tmp / "photo.png")
    return Case(
        predict(tmp / "out", [photo], weights, config=tmp / "nope.yaml"),
        2,
        [["nope.yaml", "cannot read config file"]],
        [photo],
        output=tmp / "out",
        written=[],
    )


def unknown_override_key(tmp: Path, weights: Path) -> Case:
    line = ["command-line override", "unknown config key MODEL.NO_SUCH_KEY"]
    return _range_case(tmp, weights, "MODEL.NO_SUCH_KEY", "1", [], line)


def two_images_with_one_name(tmp: Path, weights: Path) -> Case:
    a = save(rgb_photo(), tmp / "a" / "photo.png")
    b = save(rgb_photo(), tmp / "b" / "photo.jpg")
    return Case(
        predict(tmp / "out", [a, b], weights),
        2,
        [["share the name", "'photo'"]],
        [a, b],
        output=tmp / "out",
        written=[],
    )


def missing_image_and_folder_as_image(tmp: Path, weights: Path) -> Case:
    good = save(rgb_photo(), tmp / "good.png")
    folder = tmp / "folder.png"
    folder.mkdir()
    errors = [[str(tmp / "nope.png"), "no such image file"], [str(folder), "cannot decode"]]
    return Case(
        predict(tmp / "out", [tmp / "nope.png", folder, good], weights),
        1,
        errors,
        [good],
        output=tmp / "out",
        written=outputs_of("good"),
    )


def unusual_but_valid_images(tmp: Path, weights: Path) -> Case:
    photo = rgb_photo()
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    images = [
        save(photo.convert("L"), tmp / "grey.png"),
        save(photo.convert("LA"), tmp / "grey_alpha.png"),
        save(photo.convert("RGBA"), tmp / "rgba.png"),
        save(palette, tmp / "palette.png"),
        save(photo.convert("1"), tmp / "bilevel.png"),
        save(photo.convert("CMYK"), tmp / "cmyk.jpg"),
        save(Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257), tmp / "grey16.png"),
        save(frames[0], tmp / "animated.gif", save_all=True, append_images=frames[1:]),
        save(photo.resize((1, 1)), tmp / "one_pixel.png"),
        save(photo.resize((3, 500)), tmp / "tall.png"),  # 167:1, within the 192:1 limit at this resize
        save(photo, tmp / "webp.webp"),
    ]
    names = [p.stem for p in images]
    return Case(
        predict(tmp / "out", images, weights), 0, [], images, output=tmp / "out", written=outputs_of(*names)
    )


CASES = [
    output_folder_holds_the_input,
    output_folder_is_a_link_to_the_input_folder,
    prediction_json_is_an_input_image,
    coco_json_is_an_input_image,
    coco_json_is_a_prediction_json,
    pq_json_is_the_prediction_json,
    make_weights_output_is_the_config,
    simplify_output_is_its_input,
    float_tiff_out_of_range,
    int32_tiff_out_of_range,
    batch_with_bomb_extreme_aspect_and_empty_file,
    min_size_test_zero,
    min_size_test_negative_in_a_yaml_file,
    threshold_above_one,
    top_num_zero,
    pixel_std_zero,
    truncated_jpeg_in_a_batch,
    yaml_syntax_error_in_the_model_config,
    predict_output_is_an_existing_file,
    predict_output_below_a_file,
    pq_json_is_a_folder,
    nan_weight,
    inf_weight,
    pickle_payload_never_runs,
    pth_payload_never_runs,
    yaml_payload_never_runs,
    checkpoint_missing_key,
    checkpoint_extra_key,
    checkpoint_shape_mismatch,
    nodeform_checkpoint_with_a_dcn_config,
    missing_weights_file,
    missing_config_file,
    unknown_override_key,
    two_images_with_one_name,
    missing_image_and_folder_as_image,
    unusual_but_valid_images,
]


def _listing(folder: Path | None) -> dict[str, str] | None:
    return None if folder is None else sha256_of([folder])


@pytest.mark.parametrize("build", CASES, ids=lambda f: f.__name__)
def test_command_line_case(
    build: Callable[[Path, Path], Case], tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = build(tmp_path, weights)
    inputs = [*case.inputs, CONFIG, weights]
    before = sha256_of(inputs)
    assert before, "a case without input files checks nothing"
    output_before = _listing(case.output)
    capsys.readouterr()

    rc = main(case.argv)

    err = capsys.readouterr().err.splitlines()
    assert rc == case.rc, err
    assert len(err) == len(case.errors), err
    for line, needles in zip(err, case.errors, strict=True):
        assert line.startswith("error: "), line
        for needle in needles:
            assert needle in line, f"{needle!r} not in {line!r}"
    assert sha256_of(inputs) == before, "an input changed"
    if case.output is not None:
        if case.written is None:
            assert _listing(case.output) == output_before, "something was written"
        else:
            written = sorted(p.name for p in case.output.iterdir()) if case.output.exists() else []
            assert written == case.written
    for path in case.absent:
        assert not path.exists(), f"{path} exists: the payload ran"


# ------------------------------------------------------------------------------------------------------------
# Row 2: image modes, converted by scaling (never clipping) or refused, in the one image reader


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


GREY8 = np.array([[0, 1, 127, 128], [200, 254, 255, 7]], dtype=np.uint8)


def _modes() -> list[tuple[str, Image.Image, np.ndarray]]:
    """(name, image, expected RGB) with the expected values written out independently of the reader."""
    grey16 = GREY8.astype(np.uint16) * 257  # an 8-bit image stored in 16 bits
    ramp16 = np.array([[0, 255, 256, 511], [32767, 32768, 65280, 65535]], dtype=np.uint16)
    ramp_hi = np.array([[0, 0, 1, 1], [127, 128, 255, 255]], dtype=np.uint8)  # ramp16 >> 8, by hand
    unit = np.array([[0.0, 0.4 / 255, 0.5, 1.0], [0.25, 0.75, 1 / 255, 254.4 / 255]], dtype=np.float32)
    unit8 = np.array(
        [[0, 0, 128, 255], [64, 191, 1, 254]], dtype=np.uint8
    )  # round(255 v); 127.5 rounds to even
    rgba = np.zeros((2, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 255, 0]]], dtype=np.uint8)
    cmyk_rgb = np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    bilevel = Image.fromarray(np.array([[True, False]]))
    return [
        ("I;16 8-bit-in-16", Image.fromarray(grey16), _grey(GREY8)),
        ("I;16 ramp", Image.fromarray(ramp16), _grey(ramp_hi)),
        ("I;16B", Image.fromarray(ramp16.astype(">u2")), _grey(ramp_hi)),
        ("I", Image.fromarray(ramp16.astype(np.int32)), _grey(ramp_hi)),
        ("F", Image.fromarray(unit), _grey(unit8)),
        ("L", Image.fromarray(GREY8), _grey(GREY8)),
        ("LA", Image.fromarray(np.stack([GREY8, GREY8 // 2], axis=2)), _grey(GREY8)),
        ("RGBA transparent", Image.fromarray(rgba), rgba[..., :3]),
        ("P with transparency", palette, np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)),
        ("CMYK", Image.frombytes("CMYK", (4, 1), cmyk.tobytes()), cmyk_rgb),
        ("1", bilevel, _grey(np.array([[255, 0]], np.uint8))),
    ]


@pytest.mark.parametrize(
    ("name", "image", "expected"), _modes(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_image_modes_are_scaled_not_clipped(
    name: str, image: Image.Image, expected: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "image.tif"  # TIFF keeps every one of these modes as it is
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == image.mode
    np.testing.assert_array_equal(read_image(path, "RGB"), expected)
    np.testing.assert_array_equal(read_image(path, "BGR"), expected[:, :, ::-1])


def test_16bit_png_is_opened_as_i16_and_read_by_its_high_byte(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(GREY8.astype(np.uint16) * 257).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"  # what a 16-bit greyscale PNG opens as (the all-white case of the issue)
    np.testing.assert_array_equal(read_image(path, "RGB"), _grey(GREY8))


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (np.array([[0.0, 2.0]], np.float32), "mode 'F' (32-bit float) with values 0..2"),
        (np.array([[0.0, np.nan]], np.float32), "NaN"),
        (np.array([[-1, 5]], np.int32), "mode 'I' (32-bit integer) with values -1...5"),
    ],
)
def test_modes_of_unknown_scale_are_refused_naming_the_mode(
    values: np.ndarray, needle: str, tmp_path: Path
) -> None:
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and needle in message


def test_16bit_grey_predicts_as_its_8bit_version(tmp_path: Path, weights: Path) -> None:
    grey = np.asarray(rgb_photo().convert("L"))
    eight = save(Image.fromarray(grey), tmp_path / "eight.png")
    sixteen = save(Image.fromarray(grey.astype(np.uint16) * 257), tmp_path / "sixteen.png")
    assert main(predict(tmp_path / "out", [eight, sixteen], weights)) == 0
    ids8 = read_panoptic_png(tmp_path / "out" / "eight.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "out" / "sixteen.png"), ids8)
    assert len(np.unique(ids8)) > 1


def test_one_image_reader_for_prediction_evaluation_and_calibration() -> None:
    """Every decode of a photo goes through preprocess.read_image: no other module converts to RGB itself."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "src").rglob("*.py"))
        if path.name != "preprocess.py" and '.convert("RGB")' in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
    # evaluation, calibration, prediction
    for module in ("bench/run.py", "precision/calibration.py", "predict.py"):
        assert "read_image(" in (ROOT / "src" / "panoptic_deploy" / module).read_text(encoding="utf-8")
    # The workflow's start reads image headers only (panoptic_deploy.plan via geometry.image_header_size: it
    # must not decode every image on a login node); the jobs decode through read_image.
    assert "image_header_size" in (ROOT / "src" / "panoptic_deploy" / "plan.py").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------
# Row 3: anything one image raises is caught, reported on one line, and the batch goes on


def test_an_unexpected_exception_in_one_image_does_not_stop_the_batch(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import panoptic_deploy.predict as predict_module

    real = predict_module.postprocess

    def flaky(outputs, image_size, orig_size, params):  # type: ignore[no-untyped-def]
        if orig_size == (50, 70):
            raise RuntimeError("boom\nsecond line")
        return real(outputs, image_size, orig_size, params)

    monkeypatch.setattr(predict_module, "postprocess", flaky)
    images = [
        save(rgb_photo(), tmp_path / "a.png"),
        save(rgb_photo((70, 50)), tmp_path / "b.png"),
        save(rgb_photo(), tmp_path / "c.png"),
    ]
    capsys.readouterr()
    assert main(predict(tmp_path / "out", images, weights)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {images[1]}: RuntimeError: boom second line"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == outputs_of("a", "c")


# ------------------------------------------------------------------------------------------------------------
# Row 9: large images: chunked post-processing gives the same result, with bounded memory

PARAMS = InferenceParams(
    thing_thres=0.2,
    stuff_thres=0.1,
    top_num=100,
    inst_thres=0.4,
    similar_thres=0.9,
    class_specific=True,
    combine_enable=True,
    overlap_thresh=0.5,
    stuff_area_limit=50,
    combine_inst_thresh=0.2,
)


def synthetic_outputs(seed: int, hf: int, wf: int, levels: int = 0) -> dict[str, torch.Tensor]:
    """Network outputs of the export boundary, random; ``levels`` > 0 quantises the maps (many exact ties)."""
    gen = torch.Generator().manual_seed(seed)

    def maps(n: int) -> torch.Tensor:
        x = torch.rand(n, hf, wf, generator=gen)
        # Smooth blobs rather than noise: the upsampled masks overlap like real ones.
        x = torch.nn.functional.avg_pool2d(x[None], 5, stride=1, padding=2, count_include_pad=False)[0]
        x = (x - x.amin()) / (x.amax() - x.amin())
        return torch.round(x * levels) / levels if levels else x

    n = 40
    present = torch.rand(54, generator=gen) < 0.7
    present[0] = True
    return {
        "inst_scores": torch.sort(torch.rand(n, generator=gen), descending=True).values,
        "inst_classes": torch.randint(0, 80, (n,), generator=gen),
        "inst_valid": torch.rand(n, generator=gen) < 0.9,
        "inst_probs": maps(n),
        "stuff_probs": maps(54) * present[:, None, None],
        "stuff_present": present,
    }


@pytest.mark.parametrize(
    ("seed", "levels", "nan"), [(0, 0, False), (1, 4, False), (2, 3, True), (3, 0, True)]
)
def test_chunked_postprocess_equals_all_maps_at_once(
    seed: int, levels: int, nan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = synthetic_outputs(seed, 26, 38, levels)
    if nan:  # a broken backend: NaN in one stuff channel at a few pixels (NaN is the maximum, as in argmax)
        present = torch.nonzero(outputs["stuff_probs"].flatten(1).amax(dim=1) > 0).flatten()
        outputs["stuff_probs"][present[len(present) // 2], 3:6, 4:9] = float("nan")
    image_size, orig_size = (100, 150), (123, 181)
    whole = pp.postprocess(outputs, image_size, orig_size, PARAMS, with_instance_masks=True)
    assert pp.maps_per_chunk(outputs["stuff_probs"], orig_size) >= 54  # the default: one chunk at this size
    default = pp.postprocess(outputs, image_size, orig_size, PARAMS)
    for chunk_bytes in (1, 3 * 4 * (123 * 181 + 16 * 26 * 38)):  # one map, then three maps per chunk
        monkeypatch.setattr(pp, "RESIZE_CHUNK_BYTES", chunk_bytes)
        chunked = pp.postprocess(outputs, image_size, orig_size, PARAMS)
        for result in (default, chunked):
            np.testing.assert_array_equal(result.panoptic_seg, whole.panoptic_seg)
            np.testing.assert_array_equal(result.sem_seg_argmax, whole.sem_seg_argmax)
            assert result.segments == whole.segments
    assert len(whole.segments) > 3 and any(s.isthing for s in whole.segments)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    sys.path.insert(0, sys.argv[1])
    from test_bad_inputs import PARAMS, synthetic_outputs
    from panoptic_deploy.postprocess import postprocess
    torch.set_num_threads(2)
    outputs = synthetic_outputs(5, 104, 136)  # a 416×544 network input
    postprocess(outputs, (400, 533), (300, 400), PARAMS)  # warm up at a small size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = postprocess(outputs, (400, 533), (3000, 4000), PARAMS)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "segments": len(result.segments)}))
    """
)


def test_postprocess_memory_is_bounded_for_a_large_image() -> None:
    """A 4000×3000 output, 40 instances and ~38 stuff channels. Measured on the 2-core VM: the peak grew by
    2.35 GB (196 bytes/pixel) when every map was resized at once; chunked, by 0.48 GB (40 bytes/pixel)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = (data["after_kb"] - data["before_kb"]) * 1024
    pixels = 3000 * 4000
    assert grown < 64 * pixels, f"peak grew by {grown / 2**20:.0f} MiB ({grown / pixels:.1f} bytes/pixel)"
    assert data["segments"] > 0


# ------------------------------------------------------------------------------------------------------------
# Rows 5 and 6 in the workflow: the start-time checks of the Snakemake parse


def _workflow_start(tmp_path: Path, edit: Callable[[Path], None]) -> str:
    pytest.importorskip("snakemake")
    from test_workflow import TINY_CONFIG, _combined, _write_config, make_workdir, snakemake

    workdir = make_workdir(tmp_path / "wf")
    _write_config(workdir, json.loads(json.dumps(TINY_CONFIG)))
    edit(workdir)
    before = sha256_of([workdir / "images", workdir / "config"])
    proc = snakemake(workdir, "--dry-run", "--cores", "1", "results/report.md")
    assert proc.returncode != 0
    assert sha256_of([workdir / "images", workdir / "config"]) == before
    assert not (workdir / "results").exists()
    return _combined(proc)


def test_truncated_calibration_jpeg_stops_the_workflow_at_start(tmp_path: Path) -> None:
    output = _workflow_start(tmp_path, lambda w: truncated_jpeg(w / "images" / "calibration" / "cut.jpg"))
    lines = [line for line in output.splitlines() if "images/calibration/cut.jpg" in line]
    assert lines and "config key 'calibration.images'" in lines[0] and "truncated" in lines[0], output[-2000:]


def test_yaml_syntax_error_in_the_workflow_config_names_file_and_line(tmp_path: Path) -> None:
    def break_yaml(workdir: Path) -> None:
        path = workdir / "config" / "config.yaml"
        lines = path.read_text(encoding="utf-8").splitlines()
        lines.insert(2, "   oops: [unclosed")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    output = _workflow_start(tmp_path, break_yaml)
    assert "config/config.yaml: invalid YAML at line 3" in output, output[-2000:]
    assert "not valid JSON or YAML" not in output  # Snakemake's own message, which names neither
