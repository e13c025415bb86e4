# Stage engines: one engine per backend × model branch × precision, built from the precision's ONNX model,
# each with a JSON sidecar (backend and version, device, input shape, build time, size, source ONNX hash).
# The folder is keyed by backend version and device (common.device_key), so engines built elsewhere are never
# picked up.

if "onnxruntime" in ENGINE_BACKENDS:

    rule engine_onnxruntime:
        input:
            onnx=precision_onnx,
        output:
            engine=f"results/engines/onnxruntime/{DEVICE_KEYS['onnxruntime']}/{{model}}.{{precision}}.onnx",
            sidecar=f"results/engines/onnxruntime/{DEVICE_KEYS['onnxruntime']}/{{model}}.{{precision}}.onnx.json",
        log:
            "results/logs/engine_onnxruntime/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/engine_onnxruntime/{model}.{precision}.tsv"
        conda:
            CONDA_ENV
        resources:
            mem_mb=3000,
        params:
            threads=config["onnxruntime"]["threads"],
            version=PACKAGE_VERSION,
        script:
            "../scripts/engine_onnxruntime.py"


if "tensorrt" in ENGINE_BACKENDS:

    rule engine_tensorrt:
        input:
            onnx=precision_onnx,
        output:
            engine=f"results/engines/tensorrt/{DEVICE_KEYS['tensorrt']}/{{model}}.{{precision}}.engine",
            sidecar=f"results/engines/tensorrt/{DEVICE_KEYS['tensorrt']}/{{model}}.{{precision}}.engine.json",
        log:
            "results/logs/engine_tensorrt/{model}.{precision}.log",
        benchmark:
            "results/benchmarks/engine_tensorrt/{model}.{precision}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            mem_mb=8000,
        params:
            input_shape=input_shape,
            workspace_bytes=config["tensorrt"]["workspace_mb"] * 2**20,
            optimization_level=config["tensorrt"]["optimization_level"],
            # Shared by all builds on this device; not an output (several jobs update it), kept under results/.
            timing_cache=f"results/engines/tensorrt/{DEVICE_KEYS['tensorrt']}/timing.cache",
            version=PACKAGE_VERSION,
        script:
            "../scripts/engine_tensorrt.py"
