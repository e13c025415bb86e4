"""The stage subcommands the README lists run the pipeline without Snakemake: fp16, calibrate, int8 (and
int8-debug) and engine on the tiny export (tests/pipeline_artifacts.py), each through ``panoptic-deploy``
into its artefact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline_artifacts as pa
from panoptic_deploy.cli import main
from panoptic_deploy.engines.sidecar import read_sidecar, sidecar_path
from panoptic_deploy.onnx_utils import summarize_onnx
from panoptic_deploy.precision import read_calibration_cache


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> pa.Artifacts:
    return pa.simplified(tmp_path_factory)


def _opts() -> list[str]:
    return ["--opts", *pa.OPTS]


def test_precision_and_engine_stages_from_the_command_line(art: pa.Artifacts, tmp_path: Path) -> None:
    assert art.sim_onnx is not None
    sim, images = str(art.sim_onnx), [str(p) for p in art.images]
    fp16 = tmp_path / "m.fp16.onnx"
    config = ["--config", str(pa.CONFIG)]
    assert main(["fp16", "--input", sim, "--output", str(fp16), *config, "--image", images[0], *_opts()]) == 0
    assert summarize_onnx(fp16).precision == "fp16"

    cache = tmp_path / "m.int8.cache"
    assert main(["calibrate", "--input", sim, "--output", str(cache), *config, *_opts(), "--", *images]) == 0
    assert read_calibration_cache(cache)

    int8 = tmp_path / "m.int8.onnx"
    args = ["int8", "--input", sim, "--cache", str(cache), "--output", str(int8), "--high-precision", "fp32"]
    assert main(args) == 0
    assert summarize_onnx(int8).precision == "int8"

    # int8-debug (no search here: it evaluates the model tens of times): every
    # activation Q/DQ pair compared, worst first, named by the module the export recorded.
    debug = tmp_path / "m.int8-debug.json"
    args = ["int8-debug", "--fp32", sim, "--int8", str(int8), "--cache", str(cache), *config, *_opts(),
            "--output", str(debug), "--count", "2"]  # fmt: skip
    assert main([*args, "--max-evaluations", "0", "--", *images]) == 0
    result = json.loads(debug.read_text(encoding="utf-8"))
    assert result["inputs"] == 2 and result["search"] is None
    tensors = result["tensors"]
    assert len(tensors) > 10
    local = [t["local_sqnr_db"] for t in tensors]
    assert local == sorted(local)
    assert all(t["modules"] for t in tensors[:10]), tensors[:10]
    with pytest.raises(SystemExit, match="--reference"):
        main([*args, "--max-evaluations", "2", "--", *images])  # a search without --reference

    engine = tmp_path / "m.int8.ort.onnx"
    assert main(["engine", "--backend", "onnxruntime", "--input", str(int8), "--output", str(engine)]) == 0
    sidecar = read_sidecar(sidecar_path(engine))
    assert (sidecar.backend, sidecar.precision) == ("onnxruntime", "int8")
