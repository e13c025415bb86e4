"""The tiny workflow through the SLURM executor (snakemake-executor-plugin-slurm) on a real cluster.

Start one first: ``bash tests/slurm/start-cluster.sh`` (a single node from Debian's munge/slurmctld/slurmd).
Without a reachable slurmctld or without the plugin the test is skipped. Two models of a model sheet, the CPU
stages each a SLURM job (squeue for job states: the test cluster has no accounting database), then a dry run
of the finished directory must schedule nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_workflow import (
    RUN_TIMEOUT_S,
    TINY_CONFIG,
    _combined,
    _write_config,
    dry_run_outputs,
    make_workdir,
    snakemake,
)

pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "up" in proc.stdout


@pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (tests/slurm/start-cluster.sh) or no plugin")
def test_two_models_run_as_slurm_jobs_and_the_rerun_schedules_nothing(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "slurm")
    opts = "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 96"
    config = "configs/PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
    (workdir / "config" / "models.tsv").write_text(
        f"name\tconfig\tcheckpoint\topts\tcategories\nalpha\t{config}\t\t{opts}\t\nbeta\t{config}\t\t{opts}\t\n",
        encoding="utf-8",
    )
    cfg = {**json.loads(json.dumps(TINY_CONFIG)), "models": "config/models.tsv", "precisions": ["fp32"]}
    _write_config(workdir, cfg)
    start = time.monotonic()
    proc = snakemake(
        workdir,
        "results/report.md",  # first: --default-resources takes every word after it
        "--executor", "slurm",
        "--jobs", "4",
        "--latency-wait", "10",
        "--slurm-status-command", "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "1",
        "--default-resources", "slurm_partition=cpu", "mem_mb=1500", "runtime=30", "cpus_per_task=1",
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert proc.returncode == 0, _combined(proc)[-6000:]
    # Per model 7 jobs (synthetic weights, export, simplify, reference, ONNX Runtime engine, 2 benchmarks),
    # of which the engine and its benchmark are one group job (group "engine": built and timed on one node),
    # so 6 SLURM jobs a model, and the report.
    output = _combined(proc)
    submitted = [line for line in output.splitlines() if "has been submitted with SLURM jobid" in line]
    assert len(submitted) == 2 * 6 + 1, _combined(proc)[-4000:]
    for model in ("alpha_64x96", "beta_64x96"):
        for path in (
            f"results/bench/cpu/torch/{model}.fp32.json",
            f"results/bench/cpu/onnxruntime/{model}.fp32.json",
            f"results/engines/onnxruntime/cpu/{model}.fp32.onnx.json",
        ):
            assert (workdir / path).is_file(), path
    report = (workdir / "results/report.md").read_text(encoding="utf-8")
    assert "### alpha_64x96" in report and "### beta_64x96" in report
    assert dry_run_outputs(workdir) == set()
    print(f"SLURM run of 15 jobs: {seconds:.0f} s")
