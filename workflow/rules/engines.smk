# Stage engines: one engine per backend × device × model branch × precision, built from the precision's ONNX
# model, each with a JSON sidecar (backend and version, device with driver, input shape, build time, size,
# source ONNX hash). ONNX Runtime engines are CPU ones (results/engines/onnxruntime/cpu/); TensorRT engines
# go under their GPU type of config 'gpus' (results/engines/tensorrt/<gpu>/), and the job checks that the
# card it got is of that type. The bench job refuses an engine whose sidecar names another backend version
# or device than the one it runs with.
# group "engine": on a cluster the engine, its benchmark and its trtexec check run as one job on one node
# (the one that built it), so a plan is never timed on another card of the same type.

if "onnxruntime" in PLAN.engine_backends:

    rule engine_onnxruntime:
        input:
            onnx=precision_onnx,
        output:
            engine="results/engines/onnxruntime/cpu/{model}.{precision}.onnx",
            sidecar="results/engines/onnxruntime/cpu/{model}.{precision}.onnx.json",
        log:
            "results/logs/engine_onnxruntime/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/engine_onnxruntime/{model}.{precision}.tsv"
        group:
            "engine"
        conda:
            CPU_ENV
        resources:
            mem_mb=3000,
        params:
            threads=config["onnxruntime"]["threads"],
            version=PACKAGE_VERSION,
        script:
            "../scripts/engine_onnxruntime.py"


if "tensorrt" in PLAN.engine_backends:

    rule engine_tensorrt:
        input:
            onnx=precision_onnx,
        output:
            engine="results/engines/tensorrt/{gpu}/{model}.{precision}.engine",
            sidecar="results/engines/tensorrt/{gpu}/{model}.{precision}.engine.json",
        log:
            "results/logs/engine_tensorrt/{gpu}/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/engine_tensorrt/{gpu}/{model}.{precision}.tsv"
        group:
            "engine"
        conda:
            GPU_ENV
        container:
            GPU_CONTAINER
        resources:
            gpu=1,
            gpu_model=gpu_model,
            mem_mb=8000,
        params:
            input_shape=input_shape,
            workspace_bytes=config["tensorrt"]["workspace_mb"] * 2**20,
            optimization_level=config["tensorrt"]["optimization_level"],
            # Shared by the builds of one GPU type; not an output (several jobs update it under a lock).
            timing_cache="results/engines/tensorrt/{gpu}/timing.cache",
            version=PACKAGE_VERSION,
        script:
            "../scripts/engine_tensorrt.py"
