# Stage export: the network part at the branch's static input size to ONNX, checked against PyTorch on a real
# evaluation image, then simplified (config export.simplifier: onnxsim or onnxslim) and checked against the
# export on the branch's evaluation images.


rule export_onnx:
    input:
        weights=weights,
        image=first_eval_image,
    output:
        "results/onnx/{model}.onnx",
    log:
        "results/logs/export_onnx/{model}.log",
    benchmark:
        "results/benchmarks/export_onnx/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=6000,
    params:
        config=model_config,
        opts=model_opts,
        input_hw=input_hw,
        buckets=input_buckets,
        opset=config["export"]["opset"],
        exporter=config["export"]["exporter"],
        atol=config["export"]["atol"],
        rtol=config["export"]["rtol"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/export_onnx.py"


rule simplify_onnx:
    input:
        onnx="results/onnx/{model}.onnx",
        images=eval_images,
    output:
        "results/onnx/{model}.sim.onnx",
    log:
        "results/logs/simplify_onnx/{model}.log",
    benchmark:
        "results/benchmarks/simplify_onnx/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=3000,
    params:
        config=model_config,
        opts=model_opts,
        input_hw=input_hw,
        buckets=input_buckets,
        simplifier=config["export"]["simplifier"],
        atol=config["export"]["simplify_atol"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/simplify_onnx.py"
