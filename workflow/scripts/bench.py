"""Rules bench_torch, bench_engine and their *_gpu twins: latency, memory and accuracy of one row
(backend × precision × device) on one model branch."""

from typing import TYPE_CHECKING

from _job import log_to_job_file

if TYPE_CHECKING:
    from snakemake.iocontainers import snakemake

log_to_job_file(snakemake)  # first: everything this job prints, warns or raises goes to its log file

from panoptic_deploy.bench.run import BenchSpec, run_bench  # noqa: E402
from panoptic_deploy.gpu import check_gpu  # noqa: E402

# A GPU row (rules *_gpu: a 'gpu' wildcard, a GPU type of config 'gpus') checks the card it got first; a CPU
# row stays on the CPU even on a GPU node.
gpu_type = snakemake.wildcards.get("gpu")
device = "cpu" if gpu_type is None else "cuda"
if gpu_type is not None:
    gpu = check_gpu(gpu_type)
    print(f"GPU {gpu.name} (compute capability {gpu.compute_capability}, driver {gpu.driver})")

spec = BenchSpec(
    snakemake.wildcards.backend,
    snakemake.wildcards.precision,
    config=snakemake.params.config,
    reference=snakemake.input.reference,
    output=snakemake.output.bench,
    panoptic_dir=snakemake.output.panoptic,
    example_image=snakemake.params.example_image,
    images=snakemake.input.images,
    weights=snakemake.input.get("weights"),
    engine=snakemake.input.get("engine"),
    sidecar=snakemake.input.get("sidecar"),
    opts=snakemake.params.opts,
    model=snakemake.wildcards.model,
    device=device,
    warmup=snakemake.params.warmup,
    iterations=snakemake.params.iterations,
    min_seconds=snakemake.params.min_seconds,
    cov_threshold=snakemake.params.cov_threshold,
    threads=snakemake.params.threads,
    gt_json=snakemake.input.get("gt_json"),
    gt_dir=snakemake.input.get("gt_dir"),
    cuda_graph=snakemake.params.get("cuda_graph", False),
    compile_mode=snakemake.params.get("compile_mode", "default"),
)
result = run_bench(spec)
net = result.latency.network
print(
    f"wrote {snakemake.output.bench}: network p50 {net.p50_ms:.1f} ms over {net.count} runs "
    f"(CoV {net.cov if net.cov is None else round(100 * net.cov, 1)} %), "
    f"PQ vs torch FP32 {100 * result.accuracy.panoptic.pq:.2f}"
)
if net.note():
    print(f"warning: {net.note()}")
