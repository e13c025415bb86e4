# Stage precision: FP16 mixed precision, the INT8 calibration cache (the tracked artifact: it depends on the
# calibration images and calibration settings only) and the explicit Q/DQ INT8 model made from that cache.
# FP16 takes its value ranges from an evaluation image, never from the calibration images, so that changing
# the calibration set rebuilds the INT8 branch only.


rule fp16_onnx:
    input:
        onnx="results/onnx/{model}.sim.onnx",
        image=first_eval_image,
    output:
        "results/onnx/{model}.fp16.onnx",
    log:
        "results/logs/fp16_onnx/{model}.log",
    benchmark:
        "results/benchmarks/fp16_onnx/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=3000,
    params:
        config=model_config,
        opts=model_opts,
        input_hw=input_hw,
        buckets=input_buckets,
        data_max=config["fp16"]["data_max"],
        keep_fp32_op_types=config["fp16"]["keep_fp32_op_types"],
        keep_fp32_nodes=config["fp16"]["keep_fp32_nodes"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/fp16_onnx.py"


rule calibration_cache:
    input:
        onnx="results/onnx/{model}.sim.onnx",
        images=PLAN.calibration_images,
    output:
        "results/calibration/{model}.int8.cache",
    log:
        "results/logs/calibration_cache/{model}.log",
    benchmark:
        "results/benchmarks/calibration_cache/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=4000,
    params:
        config=model_config,
        opts=model_opts,
        input_hw=input_hw,
        method=config["calibration"]["method"],
        percentile=config["calibration"]["percentile"],
        num_bins=config["calibration"]["num_bins"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/calibration_cache.py"


rule int8_onnx:
    input:
        onnx="results/onnx/{model}.sim.onnx",
        cache="results/calibration/{model}.int8.cache",
    output:
        "results/onnx/{model}.int8.onnx",
    log:
        "results/logs/int8_onnx/{model}.log",
    benchmark:
        "results/benchmarks/int8_onnx/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=4000,
    params:
        high_precision=PLAN.int8_high_precision,
        exclude_op_types=config["int8"]["exclude_op_types"],
        exclude_nodes=config["int8"]["exclude_nodes"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/int8_onnx.py"
