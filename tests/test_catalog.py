"""The Snakemake workflow catalog's conventions: .test/ plans the whole workflow, the GPU rules carry the
TensorRT container image (config 'gpu_container') and the CPU rules none, and --sdm apptainer is accepted.

Dry runs only (seconds); the real run of .test/ is what `snakemake --cores 2 --directory .test` does
(.test/README.md), and test_workflow.py runs the same stages for real on its own tiny config.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from test_workflow import REPO, _combined, _snakemake_env, job_counts, make_workdir, snakemake

GPU_RULES = {"engine_tensorrt", "bench_torch_gpu", "bench_engine_gpu", "trtexec_tensorrt"}
GPU_PLAN = {"backends": ["onnxruntime", "tensorrt"], "gpus": ["h100"], "tensorrt": {"trtexec": True}}

# Every rule's container image, from the parsed workflow (Snakemake's API: the dry-run listing shows none).
_RULE_IMAGES = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, ResourceSettings

with SnakemakeApi() as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[Path("config/overlay.yaml")]),
        snakefile=Path("workflow/Snakefile"),
    )
    print(json.dumps({rule.name: rule.container_img for rule in workflow._workflow.rules}))
"""


def _rule_images(workdir: Path, overlay: dict[str, object]) -> dict[str, str | None]:
    (workdir / "config" / "overlay.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", _RULE_IMAGES],
        cwd=workdir,
        env=_snakemake_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, _combined(proc)[-3000:]
    images: dict[str, str | None] = json.loads(proc.stdout.splitlines()[-1])
    return images


def test_gpu_rules_carry_the_container_and_cpu_rules_do_not(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "w")
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
    default = schema["properties"]["gpu_container"]["default"]
    assert default == "docker://nvcr.io/nvidia/tensorrt:25.10-py3"
    images = _rule_images(workdir, GPU_PLAN)
    assert set(images) >= GPU_RULES
    assert {name: image for name, image in images.items() if image is not None} == dict.fromkeys(
        GPU_RULES, default
    )
    # The key names the image: e.g. one built FROM NVIDIA's with this package in it.
    custom = "docker://registry.example.org/panoptic-deploy-trt:1"
    images = _rule_images(workdir, {**GPU_PLAN, "gpu_container": custom})
    assert {name: image for name, image in images.items() if image is not None} == dict.fromkeys(
        GPU_RULES, custom
    )


def test_sdm_apptainer_pulls_the_image_only_for_a_plan_with_gpu_jobs(tmp_path: Path) -> None:
    """`--sdm apptainer` dry runs: Snakemake announces the pull of the GPU image when the plan has GPU jobs
    and nothing for the CPU-only plan, whose jobs all run in this environment. Snakemake only asks
    `apptainer --version` in a dry run, answered here by a stand-in (no image is pulled, nothing runs)."""
    workdir = make_workdir(tmp_path / "w")
    stub = tmp_path / "bin" / "apptainer"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 'apptainer version 1.4.0'\n", encoding="utf-8")
    stub.chmod(0o755)
    env_path = f"{stub.parent}:{_snakemake_env()['PATH']}"
    custom = "docker://registry.example.org/panoptic-deploy-trt:1"
    (workdir / "config" / "gpu.yaml").write_text(
        yaml.safe_dump({**GPU_PLAN, "gpu_container": custom}), encoding="utf-8"
    )
    runs = {}
    for name, extra in (("cpu", []), ("gpu", ["--configfile", "config/gpu.yaml"])):
        proc = subprocess.run(
            # The target first: --sdm and --configfile take every word after them.
            [sys.executable, "-m", "snakemake", "results/report.md", "--dry-run", "--cores", "1",
             "--sdm", "apptainer", *extra],
            cwd=workdir,
            env={**_snakemake_env(), "PATH": env_path},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, _combined(proc)[-3000:]
        runs[name] = _combined(proc)
    assert "will be pulled" not in runs["cpu"]
    assert f"Singularity image {custom} will be pulled." in runs["gpu"]
    assert not (workdir / "results").exists()


def test_dot_test_config_plans_every_stage_of_the_workflow(tmp_path: Path) -> None:
    """`snakemake --directory .test`, as the catalog's CI runs it: from a copy of the repository's workflow,
    configs and .test/, the dry run plans every CPU rule once per precision where it has one."""
    root = tmp_path / "repo"
    for name in ("workflow", "configs", ".test"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.rmtree(root / ".test" / ".snakemake", ignore_errors=True)
    proc = snakemake(root, "--dry-run", "--cores", "1", "--directory", ".test")
    assert proc.returncode == 0, _combined(proc)[-3000:]
    assert job_counts(proc.stdout) == {
        "synthetic_weights": 1,
        "export_onnx": 1,
        "simplify_onnx": 1,
        "fp16_onnx": 1,
        "calibration_cache": 1,
        "int8_onnx": 1,
        "engine_onnxruntime": 3,
        "reference_outputs": 1,
        "bench_torch": 1,
        "bench_engine": 3,
        "polygraphy_files": 1,
        "int8_debug": 1,
        "verdict": 1,
        "report": 1,
        "verdict_check": 1,
        "all": 1,
    }
    assert "results/report.md" in proc.stdout
    assert not (root / ".test" / "results").exists() and not (root / "results").exists()
