# INT8 debugging (config int8.debug; panoptic_deploy.int8_job): after a branch's INT8 benchmarks, FP32 vs
# INT8 tensor by tensor on a few calibration images and, when the INT8 gate fails, the sensitivity search
# with its int8.exclude_nodes ready to paste. In auto mode the job always exists and writes a short "gate
# passed" file when every INT8 row passes (a second, no model run), so the DAG does not depend on results.


rule int8_debug:
    input:
        fp32="results/onnx/{model}.sim.onnx",
        int8="results/onnx/{model}.int8.onnx",
        cache="results/calibration/{model}.int8.cache",
        reference="results/reference/{model}.npz",
        images=int8_debug_images,
        bench=int8_debug_bench,
    output:
        "results/int8_debug/{model}.json",
    log:
        "results/logs/int8_debug/{model}.log",
    benchmark:
        "results/benchmarks/int8_debug/{model}.tsv"
    conda:
        CPU_ENV
    threads: config["bench"]["threads"]
    resources:
        mem_mb=4000,
    params:
        mode=INT8_DEBUG_MODE,
        config=model_config,
        opts=model_opts,
        gates=config["gates"],
        high_precision=PLAN.int8_high_precision,
        exclude_op_types=config["int8"]["exclude_op_types"],
        exclude_nodes=config["int8"]["exclude_nodes"],
        search_evaluations=config["int8"]["search_evaluations"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/int8_debug.py"
