# Stage report: results/report.md with the environment, one table per model branch × device (the CPU or a
# GPU type) with a row per backend × precision, plots under results/report/, each branch's example image per
# row, and one plain line for every combination the plan does not run and why; with trtexec, its timing of
# each TensorRT engine beside ours.


rule report:
    input:
        bench=PLAN.bench_files(),
        trtexec=PLAN.trtexec_files(),
        int8_debug=INT8_DEBUG_FILES,
    output:
        report="results/report.md",
        latency="results/report/latency.png",
        accuracy_vs_speed="results/report/accuracy_vs_speed.png",
        panoptic=expand("results/report/panoptic_{model}.png", model=PLAN.branches),
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        CPU_ENV
    params:
        example_image=PLAN.example_image,
        skipped=PLAN.skipped_json(),
        version=PACKAGE_VERSION,
    script:
        "../scripts/report.py"
