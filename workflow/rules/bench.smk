# Stage bench: latency, throughput, memory and accuracy against the torch FP32 reference, per device ×
# backend × precision × model branch: results/bench/<device>/<backend>/<model>.<precision>.json, device =
# cpu or a GPU type of config 'gpus'. A benchmark asks for bench.threads cores so that, with --cores <=
# bench.threads, nothing else runs beside it. The *_gpu rules are the same jobs on a GPU type: they hold
# gpu=1 of that gpu_model (the SLURM executor asks for --gpus=<type>:1), run in the TensorRT environment, and
# the job checks that the card it got is of that type. Separate rules rather than wildcard-dependent
# resources: static resources keep the dry run of a 900-job plan within seconds.


rule bench_torch:
    input:
        unpack(torch_bench_inputs),
    output:
        bench="results/bench/cpu/{backend}/{model}.{precision}.json",
        panoptic=directory("results/bench/cpu/{backend}/{model}.{precision}.panoptic"),
    log:
        "results/logs/bench_torch/cpu/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_torch/cpu/{backend}/{model}.{precision}.tsv"
    wildcard_constraints:
        backend=TORCH_BACKEND_PATTERN,
    conda:
        CPU_ENV
    threads: config["bench"]["threads"]
    resources:
        mem_mb=4000,
    params:
        config=model_config,
        opts=model_opts,
        warmup=config["bench"]["warmup"],
        iterations=config["bench"]["iterations"],
        min_seconds=config["bench"]["min_seconds"],
        cov_threshold=config["bench"]["cov_threshold"],
        threads=config["bench"]["threads"],
        example_image=config["report"]["example_image"],
        compile_mode=config["bench"]["torch_compile_mode"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/bench.py"


use rule bench_torch as bench_torch_gpu with:
    output:
        bench="results/bench/{gpu}/{backend}/{model}.{precision}.json",
        panoptic=directory("results/bench/{gpu}/{backend}/{model}.{precision}.panoptic"),
    log:
        "results/logs/bench_torch/{gpu}/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_torch/{gpu}/{backend}/{model}.{precision}.tsv"
    conda:
        GPU_ENV
    container:
        GPU_CONTAINER
    resources:
        gpu=1,
        gpu_model=gpu_model,
        mem_mb=4000,


rule bench_engine:
    input:
        unpack(bench_engine_inputs),
    output:
        bench="results/bench/cpu/{backend}/{model}.{precision}.json",
        panoptic=directory("results/bench/cpu/{backend}/{model}.{precision}.panoptic"),
    log:
        "results/logs/bench_engine/cpu/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_engine/cpu/{backend}/{model}.{precision}.tsv"
    wildcard_constraints:
        backend="onnxruntime",
    group:
        "engine"
    conda:
        CPU_ENV
    threads: config["bench"]["threads"]
    resources:
        mem_mb=4000,
    params:
        config=model_config,
        opts=model_opts,
        warmup=config["bench"]["warmup"],
        iterations=config["bench"]["iterations"],
        min_seconds=config["bench"]["min_seconds"],
        cov_threshold=config["bench"]["cov_threshold"],
        threads=config["bench"]["threads"],
        example_image=config["report"]["example_image"],
        cuda_graph=config["tensorrt"]["cuda_graph"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/bench.py"


use rule bench_engine as bench_engine_gpu with:
    output:
        bench="results/bench/{gpu}/{backend}/{model}.{precision}.json",
        panoptic=directory("results/bench/{gpu}/{backend}/{model}.{precision}.panoptic"),
    log:
        "results/logs/bench_engine/{gpu}/{backend}/{model}.{precision}.log",
    benchmark:
        "results/benchmarks/bench_engine/{gpu}/{backend}/{model}.{precision}.tsv"
    wildcard_constraints:
        backend="tensorrt",
    conda:
        GPU_ENV
    container:
        GPU_CONTAINER
    resources:
        gpu=1,
        gpu_model=gpu_model,
        mem_mb=4000,


if PLAN.trtexec:

    rule trtexec_tensorrt:
        """NVIDIA trtexec times the same engine file (the C++ path): its GPU compute time beside ours, and
        its per-layer times and layer information (precision, tactic) in trtexec's own JSON beside it."""
        input:
            engine="results/engines/tensorrt/{gpu}/{model}.{precision}.engine",
        output:
            check="results/trtexec/{gpu}/{model}.{precision}.json",
            profile="results/trtexec/{gpu}/{model}.{precision}.profile.json",
            layer_info="results/trtexec/{gpu}/{model}.{precision}.layers.json",
        log:
            "results/logs/trtexec_tensorrt/{gpu}/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/trtexec_tensorrt/{gpu}/{model}.{precision}.tsv"
        group:
            "engine"
        conda:
            GPU_ENV
        container:
            GPU_CONTAINER
        resources:
            gpu=1,
            gpu_model=gpu_model,
            mem_mb=4000,
        params:
            iterations=config["tensorrt"]["trtexec_iterations"],
            cuda_graph=config["tensorrt"]["cuda_graph"],
            version=PACKAGE_VERSION,
        script:
            "../scripts/trtexec_tensorrt.py"
