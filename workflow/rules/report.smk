# Stage report: results/report.md with the environment, one table per model branch × device (the CPU or a
# GPU type) with a row per backend × precision, plots under results/report/, each branch's example image per
# row, and one plain line for every combination the plan does not run and why; with trtexec, its timing of
# each TensorRT engine beside ours.


rule report:
    input:
        bench=PLAN.bench_files(),
        trtexec=PLAN.trtexec_files(),
    output:
        # report(): also in `snakemake --report report.html`, with the captions of workflow/report/.
        report=report("results/report.md", caption="../report/report_md.rst", category="Report"),
        latency=report("results/report/latency.png", caption="../report/latency.rst", category="Plots"),
        accuracy_vs_speed=report(
            "results/report/accuracy_vs_speed.png",
            caption="../report/accuracy_vs_speed.rst",
            category="Plots",
        ),
        panoptic=report(
            expand("results/report/panoptic_{model}.png", model=PLAN.branches),
            caption="../report/panoptic.rst",
            category="Panoptic results",
        ),
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
