"""The workflow plan (panoptic_deploy.plan) without Snakemake: branches, rows, skipped rows, engine targets,
the model sheet, and the config errors it stops on; plus the GPU check of the jobs (panoptic_deploy.gpu)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from panoptic_deploy.errors import ConfigError
from panoptic_deploy.gpu import GpuIdentity, GpuMismatchError, _cuda_visible, check_gpu, gpu_matches
from panoptic_deploy.model_sheet import read_model_sheet
from panoptic_deploy.plan import BenchRow, plan
from panoptic_deploy.vocab import CPU

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
NODEFORM = str(REPO / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml")


def _defaults(schema: dict[str, Any]) -> Any:
    if schema.get("type") == "object" and "properties" in schema:
        return {k: _defaults(v) for k, v in schema["properties"].items()}
    return schema.get("default")


def _merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


def config_for(tmp_path: Path, **over: Any) -> dict[str, Any]:
    """The schema's defaults (as snakemake.utils.validate fills them) under ``over``, with image folders of
    generated images: eval 2 landscape 300×200 + 1 portrait 200×300, calibration 2."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    for folder, sizes in (("eval", [(300, 200), (330, 220), (200, 300)]), ("calib", [(64, 64), (80, 60)])):
        (tmp_path / folder).mkdir(exist_ok=True)
        for k, size in enumerate(sizes):
            Image.new("RGB", size, (k * 40, 90, 160)).save(tmp_path / folder / f"{folder}{k}.png")
    base = {
        "model": {
            "name": "m",
            "config": NODEFORM,
            "opts": ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96],
        },
        "evaluation": {"images": str(tmp_path / "eval")},
        "calibration": {"images": str(tmp_path / "calib")},
    }
    cfg: dict[str, Any] = _merged(_merged(_defaults(schema), base), over)
    return cfg


def test_cpu_only_plan(tmp_path: Path) -> None:
    p = plan(config_for(tmp_path))
    # 300×200 and 330×220 resize to 64×96; 200×300 to 96×64 (padded to 96): two branches.
    assert {b: (br.height, br.width, len(br.images)) for b, br in p.branches.items()} == {
        "m_64x96": (64, 96, 2),
        "m_96x64": (96, 64, 1),
    }
    assert p.devices == (CPU,) and p.engine_backends == ("onnxruntime",)
    assert p.rows == (
        BenchRow(CPU, "torch", "fp32"),
        *(BenchRow(CPU, "onnxruntime", q) for q in ("fp32", "fp16", "int8")),
    )
    skipped = {(s.backend, s.precision) for s in p.skipped}
    assert skipped == {("tensorrt", "all"), ("torch", "fp16"), ("torch", "int8")}
    assert p.int8_high_precision == "fp32"
    assert [e.path for e in p.engines][:3] == [
        f"results/engines/onnxruntime/cpu/m_64x96.{q}.onnx" for q in ("fp32", "fp16", "int8")
    ]
    assert len(p.bench_files()) == 2 * 4 and "results/bench/cpu/torch/m_96x64.fp32.json" in p.bench_files()
    # The verdict names every planned row, with the log its benchmark rule writes (workflow/rules/bench.smk).
    assert [e["bench"] for e in p.expected_rows()] == p.bench_files()
    assert {e["log"] for e in p.expected_rows() if e["bench"].endswith("m_96x64.int8.json")} == {
        "results/logs/bench_engine/cpu/onnxruntime/m_96x64.int8.log"
    }
    assert {e["log"] for e in p.expected_rows() if e["backend"] == "torch" and "m_64x96" in e["bench"]} == {
        "results/logs/bench_torch/cpu/torch/m_64x96.fp32.log"
    }
    assert len(p.calibration_images) == 2 and p.example_image == "eval0.png"


def test_gpu_types_plan_tensorrt_and_torch_rows_per_type(tmp_path: Path) -> None:
    p = plan(config_for(tmp_path, gpus=["h100", "l40s"], precisions=["fp16", "int8"]))
    assert p.devices == ("h100", "l40s") and p.engine_backends == ("tensorrt",)
    for gpu in ("h100", "l40s"):
        assert [r for r in p.rows if r.device == gpu] == [
            BenchRow(gpu, "torch", "fp32"),  # always: each GPU type's speedup baseline
            BenchRow(gpu, "torch", "fp16"),
            BenchRow(gpu, "tensorrt", "fp16"),
            BenchRow(gpu, "tensorrt", "int8"),
        ]
    assert p.int8_high_precision == "fp16"
    assert "results/engines/tensorrt/l40s/m_96x64.int8.engine" in {e.path for e in p.engines}
    assert len(p.engines) == 2 * 2 * 2
    assert not p.trtexec and ("trtexec", "all") in {(s.backend, s.precision) for s in p.skipped}
    both = plan(config_for(tmp_path, gpus=["h100"], backends=["onnxruntime", "tensorrt"]))
    assert both.devices == (CPU, "h100")
    trtexec = plan(config_for(tmp_path, gpus=["h100"], tensorrt={"trtexec": True}))
    assert len(trtexec.trtexec_files()) == 2 * 3
    compiled = plan(config_for(tmp_path, gpus=["h100"], bench={"torch_compile": True}))
    assert BenchRow("h100", "torch_compile", "fp16") in compiled.rows


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"backends": ["tensorrt"]}, "tensorrt needs the GPU types"),
        ({"tensorrt": {"trtexec": True}}, "tensorrt.trtexec': true, but the tensorrt backend is not planned"),
        ({"model": {"input_sizes": [[64, 96]]}}, "needs input size [96, 64]"),
        ({"model": {"checkpoint": "nowhere.pth"}}, "checkpoint 'nowhere.pth' does not exist"),
        ({"report": {"example_image": "other.png"}}, "'other.png' is not an evaluation image"),
        ({"model": {"categories": "missing.json"}}, "model.categories"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, over: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan(config_for(tmp_path, **over))
    assert expected in str(info.value)


def test_non_image_and_truncated_image_stop_the_plan(tmp_path: Path) -> None:
    cfg = config_for(tmp_path)
    (tmp_path / "calib" / "notes.txt").write_text("not an image\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"calibration.images.*notes.txt' is not a readable image"):
        plan(cfg)
    (tmp_path / "calib" / "notes.txt").unlink()
    data = (tmp_path / "eval" / "eval0.png").read_bytes()
    (tmp_path / "eval" / "eval0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"evaluation.images.*eval0.png.*truncated"):
        plan(cfg)


def test_model_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "models.tsv"
    sheet.write_text(
        "# two models, one config\n"
        "name\tconfig\tcheckpoint\topts\tcategories\n"
        f"small\t{NODEFORM}\t\tINPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 96\t\n"
        f"large\t{NODEFORM}\t\tINPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 192\tcoco\n",
        encoding="utf-8",
    )
    p = plan(config_for(tmp_path, models=str(sheet), gpus=["h100"]))
    assert list(p.models) == ["small", "large"]
    assert set(p.branches) == {"small_64x96", "small_96x64", "large_128x192", "large_192x128"}
    assert p.model_of("large_128x192").opts == ("INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192")
    assert p.model_of("small_64x96").weights == "results/weights/small.pth"
    sheet.write_text(f"name\tconfig\nsmall\t{NODEFORM}\nsmall\t{NODEFORM}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="two models are named 'small'"):
        plan(config_for(tmp_path, models=str(sheet)))
    sheet.write_text(f"name\tconfig\tseed\nsmall\t{NODEFORM}\t1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown column\(s\) \['seed'\]"):
        read_model_sheet(sheet, {"categories": "coco", "synthetic_seed": 1, "input_sizes": "auto"})


def test_the_vocabulary_and_geometry_agree_with_the_package() -> None:
    from panoptic_deploy import plan as plan_module
    from panoptic_deploy.geometry import SIZE_DIVISIBILITY, padded_input_size
    from panoptic_deploy.modeling.panoptic_fcn import LEVEL_STRIDES, InputParams
    from panoptic_deploy.preprocess import network_input_shape
    from panoptic_deploy.vocab import BENCH_BACKENDS, ENGINE_BACKENDS, PRECISIONS, TORCH_BACKENDS

    # The plan uses the package's one vocabulary (vocab.py), not copies of it.
    assert (plan_module.TORCH_BACKENDS, plan_module.ENGINE_BACKENDS) == (TORCH_BACKENDS, ENGINE_BACKENDS)
    assert (*TORCH_BACKENDS, *ENGINE_BACKENDS) == BENCH_BACKENDS
    assert plan_module.PRECISIONS is PRECISIONS
    assert LEVEL_STRIDES["p5"] == SIZE_DIVISIBILITY
    params = InputParams(min_size=400, max_size=666)
    for hw in ((480, 640), (640, 427), (1, 1000), (333, 333)):
        assert padded_input_size(*hw, 400, 666) == network_input_shape(*hw, params)


def test_planning_imports_no_ml_stack(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, gpus=["h100"], backends=["onnxruntime", "tensorrt"])
    code = (
        "import sys, yaml\n"
        "from panoptic_deploy.plan import plan\n"
        f"p = plan(yaml.safe_load(open({str(tmp_path / 'c.yaml')!r})))\n"
        "heavy = ('torch', 'onnxruntime', 'tensorrt', 'onnx')\n"
        "print(len(p.engines), sorted(m for m in heavy if m in sys.modules))\n"
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["12", "[]"]


def _gpu(name: str) -> GpuIdentity:
    return GpuIdentity(name, "9.0", "570.1")


def test_gpu_type_matches_whole_words_of_the_card_name() -> None:
    assert gpu_matches("h100", "NVIDIA H100 80GB HBM3")
    assert gpu_matches("h100-80gb", "NVIDIA H100 80GB HBM3")
    assert gpu_matches("l40s", "NVIDIA L40S")
    assert not gpu_matches("l40", "NVIDIA L40S")
    assert not gpu_matches("a10", "NVIDIA A100-SXM4-40GB")
    assert check_gpu("h100", [_gpu("NVIDIA H100 80GB HBM3")]).driver == "570.1"
    with pytest.raises(GpuMismatchError, match=r"for GPU type 'l40s' .* but got NVIDIA H100"):
        check_gpu("l40s", [_gpu("NVIDIA H100 80GB HBM3")])
    with pytest.raises(GpuMismatchError, match="sees no GPU"):
        check_gpu("h100", [])


def test_cuda_visible_devices_picks_the_job_s_card() -> None:
    found = [("GPU-aaa", _gpu("NVIDIA A100-SXM4-40GB")), ("GPU-bbb", _gpu("NVIDIA H100 80GB HBM3"))]
    assert _cuda_visible(found, None)[0].name.startswith("NVIDIA A100")
    assert _cuda_visible(found, "1")[0].name.startswith("NVIDIA H100")
    assert _cuda_visible(found, "GPU-bbb,0")[0].name.startswith("NVIDIA H100")
    assert _cuda_visible(found, "") == []
