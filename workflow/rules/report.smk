# Stage report: results/report.md with the environment, one table row per model branch × backend × precision,
# plots under results/report/, each branch's example image per row, and one plain line for every combination
# that could not run on this machine and why (config 'backends' and bench.combo_support); with trtexec, its
# timing of each TensorRT engine beside ours.


rule report:
    input:
        bench=bench_files(),
        trtexec=trtexec_files(),
    output:
        report="results/report.md",
        latency="results/report/latency.png",
        accuracy_vs_speed="results/report/accuracy_vs_speed.png",
        panoptic=expand("results/report/panoptic_{model}.png", model=MODELS),
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        CONDA_ENV
    params:
        example_image=example_image(),
        skipped=SKIPPED,
        version=PACKAGE_VERSION,
    script:
        "../scripts/report.py"
