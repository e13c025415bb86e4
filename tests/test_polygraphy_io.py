"""Polygraphy JSON: our files decode with Polygraphy's own loaders, and ``polygraphy run --onnxrt`` checks a
model against them (PASSED on the model's own outputs, FAILED once one output is perturbed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from panoptic_deploy.polygraphy_io import (
    REFERENCE_RUNNER,
    PolygraphyFormatError,
    decode_array,
    encode_array,
    read_polygraphy_outputs,
    write_polygraphy_inputs,
    write_polygraphy_outputs,
)
from tiny_net import export_tiny


def test_arrays_round_trip_bit_exact() -> None:
    rng = np.random.default_rng()
    for array in (
        rng.normal(size=(1, 3, 5, 7)).astype(np.float32),
        rng.integers(-(2**40), 2**40, size=(4,), dtype=np.int64),
        rng.random((2, 3)) > 0.5,
        np.float16(rng.normal(size=(3,))),
    ):
        encoded = encode_array(array)
        assert set(encoded) == {"array", "polygraphy_class"} and encoded["polygraphy_class"] == "ndarray"
        back = decode_array(json.loads(json.dumps(encoded)))
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes()
    with pytest.raises(PolygraphyFormatError, match="object arrays"):
        encode_array(np.array([{"a": 1}], dtype=object))


def test_polygraphy_loads_our_files(tmp_path: Path) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    rng = np.random.default_rng()
    feeds = [{"image": rng.normal(size=(1, 3, 4, 6)).astype(np.float32)} for _ in range(2)]
    outputs = [
        {"sem": rng.normal(size=(1, 2, 4, 6)).astype(np.float32), "keep": rng.random((1, 5)) > 0.5}
        for _ in range(2)
    ]
    write_polygraphy_inputs(tmp_path / "inputs.json", feeds)
    write_polygraphy_outputs(tmp_path / "outputs.json", outputs, runtimes=[0.25, None])

    loaded_inputs = load_json(str(tmp_path / "inputs.json"))
    assert len(loaded_inputs) == 2
    for got, want in zip(loaded_inputs, feeds, strict=True):
        assert list(got) == ["image"] and np.array_equal(got["image"], want["image"])

    results = RunResults.load(str(tmp_path / "outputs.json"))
    assert list(results.keys()) == [REFERENCE_RUNNER]
    iterations = results[REFERENCE_RUNNER]
    assert [it.runtime for it in iterations] == [0.25, None]
    for it, want in zip(iterations, outputs, strict=True):
        assert it.runner_name == REFERENCE_RUNNER and list(it.keys()) == ["sem", "keep"]
        assert np.array_equal(it["sem"], want["sem"]) and np.array_equal(it["keep"], want["keep"])

    # And back through ours, also for a file Polygraphy itself wrote.
    ours = read_polygraphy_outputs(tmp_path / "outputs.json")
    assert np.array_equal(ours[REFERENCE_RUNNER][1]["sem"], outputs[1]["sem"])
    results.save(str(tmp_path / "resaved.json"))
    theirs = read_polygraphy_outputs(tmp_path / "resaved.json")
    assert np.array_equal(theirs[REFERENCE_RUNNER][0]["keep"], outputs[0]["keep"])
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(PolygraphyFormatError, match=r"bad\.json: not a readable Polygraphy RunResults"):
        read_polygraphy_outputs(tmp_path / "bad.json")


def test_polygraphy_run_checks_a_model_against_our_reference(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = tmp_path / "tiny.onnx"
    export_tiny(model, (1, 3, 8, 12))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng()
    feeds = [{"image": rng.normal(size=(1, 3, 8, 12)).astype(np.float32)} for _ in range(2)]
    names = [o.name for o in session.get_outputs()]
    outputs = [dict(zip(names, session.run(None, feed), strict=True)) for feed in feeds]
    write_polygraphy_inputs(tmp_path / "inputs.json", feeds)
    write_polygraphy_outputs(tmp_path / "good.json", outputs)
    bad = [dict(o) for o in outputs]
    bad[1]["sem"] = bad[1]["sem"] + np.float32(0.5)
    write_polygraphy_outputs(tmp_path / "bad.json", bad)

    polygraphy = Path(sys.executable).parent / "polygraphy"
    env = {**os.environ, "POLYGRAPHY_AUTOINSTALL_DEPS": "0"}

    def check(reference: str) -> subprocess.CompletedProcess[str]:
        command = [
            str(polygraphy), "run", str(model), "--onnxrt",
            "--load-inputs", str(tmp_path / "inputs.json"), "--load-outputs", str(tmp_path / reference),
            "--atol", "1e-5", "--rtol", "1e-5",
        ]  # fmt: skip
        return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)

    good = check("good.json")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    assert "PASSED" in good.stdout + good.stderr
    failed = check("bad.json")
    assert failed.returncode != 0
    text = failed.stdout + failed.stderr
    assert "FAILED" in text and "sem" in text
