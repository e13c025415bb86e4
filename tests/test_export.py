"""ONNX export and simplification: a real dynamo export checked by ONNX Runtime, its failure modes, and the
output comparison rules of panoptic_deploy.compare."""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

import pipeline_artifacts as pa
from panoptic_deploy import compare
from panoptic_deploy.compare import ErrorAccumulator, Tolerance, match_instances, tolerance_failures
from panoptic_deploy.engines.onnxruntime import make_ort_session
from panoptic_deploy.errors import ExportError, ImageError
from panoptic_deploy.export import (
    SIMPLIFIER_METADATA_KEY,
    export_onnx,
    input_hw_for,
    model_name,
    onnx_input_hw,
    prepare_verify_inputs,
    read_simplifier,
    simplify_onnx,
)
from panoptic_deploy.export import onnx_export as export
from panoptic_deploy.modeling import OUTPUT_NAMES
from panoptic_deploy.onnx_scopes import module_scopes

# ---------------------------------------------------------------------------------------------------------
# The real export (shared with test_bench / test_report through tests/pipeline_artifacts.py)


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> pa.Artifacts:
    return pa.simplified(tmp_path_factory)


def _torch_outputs(art: pa.Artifacts, image: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from panoptic_deploy.predict import load_model

    model = load_model(pa.CONFIG, art.weights, pa.OPTS)
    (x,) = prepare_verify_inputs(pa.CONFIG, [image], pa.INPUT_HW, pa.OPTS)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return compare.as_numpy_outputs(out), x


def test_export_is_static_named_and_matches_torch(art: pa.Artifacts) -> None:
    report = art.export_report
    assert art.onnx is not None and art.onnx.is_file()
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert report.opset == report.opset_requested == 18
    assert report.input_shape == (1, 3, 64, 96)
    assert report.file_bytes == art.onnx.stat().st_size
    model = onnx.load(str(art.onnx), load_external_data=False)
    assert not list(art.root.glob("*.data"))  # weights are inside the file (no external data next to it)
    assert report.nodes == len(model.graph.node)
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input] == [
        ("image", [1, 3, 64, 96])
    ]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    # The check ran on the first image: every float error within the stated tolerance, no flip.
    for err in report.errors.values():
        if err.kind == "float":
            assert err.compared > 0 and err.max_abs <= 1e-3
        else:
            assert err.mismatches == 0
    assert report.instances_ref == report.instances_onnx == report.instances_matched > 0
    # Independent check on an image the export never saw: ORT == torch within the export tolerance.
    ref, x = _torch_outputs(art, art.images[2])
    session = make_ort_session(art.onnx, threads=2)
    got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"image": x}), strict=True))
    np.testing.assert_array_equal(got["stuff_present"], ref["stuff_present"])
    np.testing.assert_array_equal(got["inst_valid"], ref["inst_valid"])
    valid = ref["inst_valid"]
    np.testing.assert_array_equal(got["inst_classes"][valid], ref["inst_classes"][valid])
    np.testing.assert_allclose(got["inst_probs"][valid], ref["inst_probs"][valid], atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got["stuff_probs"], ref["stuff_probs"], atol=1e-3, rtol=1e-3)


def _copying_exporter(source: Path) -> Any:
    """A stand-in for the torch exporter that writes ``source`` (so a failing check costs no new export)."""

    def run(model: Any, image: Any, path: Path, opset: int, exporter: str, deform: str) -> tuple[str, None]:
        shutil.copyfile(source, path)
        return "dynamo", None

    return run


def test_corrupted_initializer_fails_the_check_and_leaves_no_file(
    art: pa.Artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert art.onnx is not None
    model = onnx.load(str(art.onnx))
    (init,) = [i for i in model.graph.initializer if i.name == "position_head.out_sem.weight"]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))  # stuff logits +5%
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(model, str(corrupted))
    out_dir = tmp_path / "out"
    monkeypatch.setattr(export, "_run_exporter", _copying_exporter(corrupted))
    expected = (
        r"tiny\.onnx: ONNX Runtime differs from PyTorch on .*coffee\.png \(dynamo exporter\): .*stuff_scores"
    )
    with pytest.raises(ExportError, match=expected):
        export_onnx(pa.CONFIG, art.weights, out_dir / "tiny.onnx", pa.INPUT_HW, art.images[0], pa.OPTS)
    assert list(out_dir.iterdir()) == []  # neither the model nor a temporary file


def test_unmodified_copy_passes_the_same_check(
    art: pa.Artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: the same path with the real export passes and writes the file."""
    assert art.onnx is not None
    monkeypatch.setattr(export, "_run_exporter", _copying_exporter(art.onnx))
    report = export_onnx(pa.CONFIG, art.weights, tmp_path / "ok.onnx", pa.INPUT_HW, art.images[0], pa.OPTS)
    assert (tmp_path / "ok.onnx").read_bytes() == art.onnx.read_bytes()
    assert report.sha256 == art.export_report.sha256


def test_image_of_another_padded_size_is_refused(art: pa.Artifacts, tmp_path: Path) -> None:
    square = tmp_path / "square.png"
    Image.new("RGB", (90, 90), (120, 30, 200)).save(square)  # resizes to 64×64
    with pytest.raises(ImageError, match=r"square\.png: pads to network input 64x64 .* exported for 64x96"):
        export_onnx(pa.CONFIG, art.weights, tmp_path / "m.onnx", pa.INPUT_HW, square, pa.OPTS)
    assert not (tmp_path / "m.onnx").exists()


def test_deformconv_node_needs_opset_19(art: pa.Artifacts, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset >= 19"):
        export_onnx(
            pa.CONFIG, art.weights, tmp_path / "m.onnx", pa.INPUT_HW, art.images[0], pa.OPTS,
            opset=18, deform_conv="onnx_deformconv",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Simplification


def test_simplify_reduces_nodes_and_keeps_every_output(art: pa.Artifacts) -> None:
    report = art.simplify_report
    assert art.sim_onnx is not None and art.onnx is not None
    sim = onnx.load(str(art.sim_onnx), load_external_data=False)
    assert report.nodes_after == len(sim.graph.node) < report.nodes_before == art.export_report.nodes
    assert report.inputs_checked == 3 and report.discrete_mismatches == 0
    assert set(report.max_abs_diff) == {"inst_probs", "inst_scores", "stuff_probs", "stuff_scores"}
    assert max(report.max_abs_diff.values()) <= 1e-5
    # The default simplifier is onnxsim (the issue card's), recorded in the model and the report.
    assert (report.simplifier, report.simplifier_version) == ("onnxsim", version("onnxsim"))
    assert read_simplifier(art.sim_onnx) == f"onnxsim {version('onnxsim')}"
    assert f"onnxsim {version('onnxsim')}" in report.summary()
    # onnxsim drops node metadata; the module scopes of the dynamo export are carried over by node name.
    scopes = module_scopes(sim)
    convs = [n.name for n in sim.graph.node if n.op_type == "Conv"]
    assert convs and all(name in scopes for name in convs)
    assert "backbone.bottom_up.res2.0.conv1 (Conv2d)" in {scopes[name] for name in convs}
    # On a fresh input (noise shaped like a normalised image) both models agree.
    x = np.random.default_rng(7).normal(0.0, 60.0, (1, 3, 64, 96)).astype(np.float32)
    a = make_ort_session(art.onnx, threads=2).run(list(OUTPUT_NAMES), {"image": x})
    b = make_ort_session(art.sim_onnx, threads=2).run(list(OUTPUT_NAMES), {"image": x})
    for name, u, v in zip(OUTPUT_NAMES, a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=1e-5, rtol=0, err_msg=name)


def test_onnxsim_and_onnxslim_give_equal_outputs(art: pa.Artifacts, tmp_path: Path) -> None:
    """Both simplifiers pass the check, and their models agree with each other on the three evaluation images
    and a noise input (measured: every output bit-identical; the check allows 1e-5)."""
    assert art.onnx is not None and art.sim_onnx is not None
    inputs = prepare_verify_inputs(pa.CONFIG, art.images, pa.INPUT_HW, pa.OPTS)
    slim_path = tmp_path / "tiny.slim.onnx"
    report = simplify_onnx(art.onnx, slim_path, inputs, simplifier="onnxslim")
    assert (report.simplifier, report.inputs_checked, report.discrete_mismatches) == ("onnxslim", 3, 0)
    assert read_simplifier(slim_path) == f"onnxslim {version('onnxslim')}"
    assert report.nodes_after < report.nodes_before
    by_sim = make_ort_session(art.sim_onnx, threads=2)
    by_slim = make_ort_session(slim_path, threads=2)
    noise = np.random.default_rng(11).normal(0.0, 60.0, (1, 3, 64, 96)).astype(np.float32)
    for x in [*inputs, noise]:
        a = by_sim.run(list(OUTPUT_NAMES), {"image": x})
        b = by_slim.run(list(OUTPUT_NAMES), {"image": x})
        for name, u, v in zip(OUTPUT_NAMES, a, b, strict=True):
            if u.dtype.kind == "f":
                np.testing.assert_allclose(u, v, atol=1e-5, rtol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(u, v, err_msg=name)


@pytest.mark.parametrize("simplifier", ["onnxsim", "onnxslim"])
def test_simplify_that_changes_the_numbers_is_refused(
    art: pa.Artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simplifier: str
) -> None:
    def negate_a_weight(model: onnx.ModelProto) -> onnx.ModelProto:
        (init,) = [i for i in model.graph.initializer if i.name == "position_head.out_inst.weight"]
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        return model

    if simplifier == "onnxsim":
        import onnxsim

        real_simplify = onnxsim.simplify
        monkeypatch.setattr(
            onnxsim, "simplify", lambda m, **kw: (negate_a_weight(real_simplify(m, **kw)[0]), True)
        )
    else:
        import onnxslim

        real_slim = onnxslim.slim
        monkeypatch.setattr(onnxslim, "slim", lambda m: negate_a_weight(real_slim(m)))
    inputs = prepare_verify_inputs(pa.CONFIG, art.images[:1], pa.INPUT_HW, pa.OPTS)
    assert art.onnx is not None
    with pytest.raises(
        ExportError, match=rf"bad\.sim\.onnx: simplified model \({simplifier}\) differs from .* on input #0"
    ):
        simplify_onnx(art.onnx, tmp_path / "bad.sim.onnx", inputs, simplifier=simplifier)
    assert list(tmp_path.iterdir()) == []


def test_missing_simplifier_is_one_line_and_writes_nothing(
    art: pa.Artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from panoptic_deploy.cli import main

    assert art.onnx is not None
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim now raises ImportError
    out = tmp_path / "out.sim.onnx"
    rc = main(["simplify", "--input", str(art.onnx), "--output", str(out), "--config", str(pa.CONFIG),
               "--opts", *pa.OPTS, "--", str(art.images[0])])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "simplifier 'onnxsim' is not installed" in err and "choose 'onnxslim'" in err
    assert list(tmp_path.iterdir()) == []
    # The other one still works from the CLI, and says which it used.
    rc = main(["simplify", "--simplifier", "onnxslim", "--input", str(art.onnx), "--output", str(out),
               "--config", str(pa.CONFIG), "--opts", *pa.OPTS, "--", str(art.images[0])])  # fmt: skip
    assert rc == 0 and f"onnxslim {version('onnxslim')}" in capsys.readouterr().out
    model = onnx.load(str(out), load_external_data=False)
    assert {p.key: p.value for p in model.metadata_props}[SIMPLIFIER_METADATA_KEY].startswith("onnxslim ")


def test_simplify_needs_inputs_and_a_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="at least one input"):
        simplify_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", [])
    (tmp_path / "a.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"a\.onnx: not a readable ONNX model"):
        simplify_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", [np.zeros((1, 3, 64, 96), np.float32)])


# ---------------------------------------------------------------------------------------------------------
# Sizes and names


def test_input_sizes_follow_the_test_resize(tmp_path: Path) -> None:
    photos = pa.PHOTOS
    # coffee 400×600: short side 400 -> 400×600 -> padded 416×608; rocket 427×640 -> 400×599.6 -> 400×600.
    assert input_hw_for(pa.CONFIG, photos / "coffee.png") == (416, 608)
    assert input_hw_for(pa.CONFIG, photos / "rocket.png") == (416, 608)
    # astronaut 512×512 -> 400×400 -> 416×416; chelsea 300×451 -> 400×601.3 -> 416×608.
    assert input_hw_for(pa.CONFIG, photos / "astronaut.png") == (416, 416)
    assert input_hw_for(pa.CONFIG, photos / "chelsea.png") == (416, 608)
    assert input_hw_for(pa.CONFIG, photos / "coffee.png", pa.OPTS) == (64, 96)
    # EXIF orientation 6 (rotate 90°) swaps height and width, as read_image decodes it.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (600, 400)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert input_hw_for(pa.CONFIG, tmp_path / "rotated.jpg") == (608, 416)
    with pytest.raises(ImageError, match=r"missing\.png: no such image file"):
        input_hw_for(pa.CONFIG, tmp_path / "missing.png")


def test_model_name_and_onnx_input_hw(art: pa.Artifacts) -> None:
    assert model_name("demo", (416, 544)) == "demo_416x544"
    assert art.onnx is not None
    assert onnx_input_hw(art.onnx) == (64, 96)


# ---------------------------------------------------------------------------------------------------------
# Output comparison rules (small hand-made outputs)


def _outputs(
    rng: np.random.Generator, t: int = 6, s: int = 4, hw: tuple[int, int] = (5, 7)
) -> dict[str, Any]:
    probs = rng.random((t, *hw)).astype(np.float32)
    for k in range(t):  # distinct, non-overlapping binary masks (> 0.4): row k owns column k
        probs[k] = 0.1
        probs[k, :, k] = 0.9
    return {
        "inst_probs": probs,
        "inst_scores": np.array([0.9, 0.8, 0.7, 0.6, -1, -1], np.float32)[:t],
        "inst_classes": np.array([3, 3, 5, 7, 0, 0], np.int64)[:t],
        "inst_valid": np.array([1, 1, 1, 1, 0, 0], bool)[:t],
        "stuff_probs": rng.random((s, *hw)).astype(np.float32),
        "stuff_scores": rng.random(s).astype(np.float32),
        "stuff_present": np.array([1, 0, 1, 1], bool)[:s],
    }


def test_swapped_instances_and_invalid_rows_are_not_errors() -> None:
    ref = _outputs(np.random.default_rng(0))
    test = {k: v.copy() for k, v in ref.items()}
    order = [1, 0, 2, 3, 5, 4]  # two valid instances swap places; invalid rows too
    for k in ("inst_probs", "inst_scores", "inst_classes", "inst_valid"):
        test[k] = test[k][order]
    test["inst_probs"][4:] = 0.5  # invalid rows carry anything
    match = match_instances(test, ref)
    assert match.ref_rows.tolist() == [0, 1, 2, 3] and match.test_rows.tolist() == [1, 0, 2, 3]
    acc = ErrorAccumulator()
    acc.add(test, ref)
    errors = acc.result()
    assert all(e.max_abs == 0.0 for e in errors.values() if e.kind == "float")
    assert all(e.mismatches == 0 for e in errors.values() if e.kind == "discrete")
    assert errors["inst_probs"].compared == 4 * 35 and errors["inst_valid"].compared == 4


def test_flips_and_errors_are_counted_exactly() -> None:
    ref = _outputs(np.random.default_rng(1))
    test = {k: v.copy() for k, v in ref.items()}
    test["inst_valid"][3] = False  # one instance lost
    test["inst_classes"][2] = 6  # one class changed (mask still matches by IoU)
    test["stuff_present"][1] = True
    test["stuff_scores"][0] += 0.004  # abs error 0.004
    errors, match = compare.compare_outputs(test, ref, inst_thres=0.4)
    assert match.matched == 3 and match.unmatched == 1
    assert errors["inst_valid"].mismatches == 1 and errors["inst_valid"].compared == 4
    assert errors["inst_classes"].mismatches == 1 and errors["inst_classes"].compared == 3
    assert errors["stuff_present"].mismatches == 1 and errors["stuff_present"].mismatch_fraction == 0.25
    assert errors["stuff_scores"].max_abs == pytest.approx(0.004, abs=1e-7)
    expected_rel = 0.004 / max(float(ref["stuff_scores"][0]), compare.REL_ERROR_FLOOR)
    assert errors["stuff_scores"].max_rel == pytest.approx(expected_rel, rel=1e-4)
    problems = tolerance_failures(errors, test, ref, match, Tolerance(atol=1e-3, rtol=0.0, max_flips=2))
    assert len(problems) == 2
    assert problems[0].startswith("stuff_scores: 1 of 4 values outside atol 0.001")
    assert problems[1].startswith("3 bool/int mismatches (allowed 2): inst_classes 1/3, inst_valid 1/4")
    assert tolerance_failures(errors, test, ref, match, Tolerance(atol=5e-3, rtol=0.0, max_flips=3)) == []
