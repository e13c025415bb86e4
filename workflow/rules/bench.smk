# Stage bench: latency, throughput, memory and accuracy against the torch FP32 reference, per backend ×
# precision × model branch. A benchmark asks for bench.threads cores so that, with --cores <= bench.threads,
# nothing else runs beside it; GPU benchmarks also hold the gpu resource (run with --resources gpu=1).


rule bench_torch:
    input:
        unpack(torch_bench_inputs),
    output:
        "results/bench/{backend}/{model}.{precision}.json",
    log:
        "results/logs/bench_torch/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_torch/{backend}/{model}.{precision}.tsv"
    wildcard_constraints:
        backend=TORCH_BACKEND_PATTERN,
    conda:
        CONDA_ENV
    threads: config["bench"]["threads"]
    resources:
        gpu=bench_gpus,
        mem_mb=4000,
    params:
        config=config["model"]["config"],
        opts=model_opts(),
        warmup=config["bench"]["warmup"],
        iterations=config["bench"]["iterations"],
        threads=config["bench"]["threads"],
        compile_mode=config["bench"]["torch_compile_mode"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/bench.py"


rule bench_engine:
    input:
        unpack(bench_engine_inputs),
    output:
        "results/bench/{backend}/{model}.{precision}.json",
    log:
        "results/logs/bench_engine/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_engine/{backend}/{model}.{precision}.tsv"
    wildcard_constraints:
        backend=ENGINE_BACKEND_PATTERN,
    conda:
        CONDA_ENV
    threads: config["bench"]["threads"]
    resources:
        gpu=bench_gpus,
        mem_mb=4000,
    params:
        config=config["model"]["config"],
        opts=model_opts(),
        warmup=config["bench"]["warmup"],
        iterations=config["bench"]["iterations"],
        threads=config["bench"]["threads"],
        cuda_graph=config["tensorrt"]["cuda_graph"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/bench.py"


if TRTEXEC:

    rule trtexec_tensorrt:
        """NVIDIA trtexec times the same engine file (the C++ path): its GPU compute time beside ours."""
        input:
            engine=f"results/engines/tensorrt/{DEVICE_KEYS['tensorrt']}/{{model}}.{{precision}}.engine",
        output:
            f"results/trtexec/{DEVICE_KEYS['tensorrt']}/{{model}}.{{precision}}.json",
        log:
            "results/logs/trtexec_tensorrt/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/trtexec_tensorrt/{model}.{precision}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            mem_mb=4000,
        params:
            iterations=config["tensorrt"]["trtexec_iterations"],
            cuda_graph=config["tensorrt"]["cuda_graph"],
            version=PACKAGE_VERSION,
        script:
            "../scripts/trtexec_tensorrt.py"
