# Stage report: results/verdict.json (the release gates of config 'gates', PASS / FAIL / NOT RUN per row),
# results/report.md with the verdict first, the environment, one table per model branch × device (the CPU or
# a GPU type) with a row per backend × precision, plots under results/report/, each branch's example image
# per row, and one plain line for every combination the plan does not run and why; with trtexec, its timing
# of each TensorRT engine beside ours. results/verdict.passed exists only when every gate passes: the target
# a CI job asks for (`snakemake --cores 1`, whose default target includes it, fails naming each failing row
# after writing the report). A failed benchmark job stops neither the other rows (profiles/default keeps
# going) nor the report: onerror in the Snakefile writes the verdict and the report of what ran.


# Seconds of work each, next to the report: not worth a cluster job.
localrules:
    verdict,
    verdict_check,


rule verdict:
    input:
        bench=PLAN.bench_files(),
    output:
        report("results/verdict.json", caption="../report/verdict.rst", category="Report"),
    log:
        "results/logs/verdict/verdict.log",
    benchmark:
        "results/benchmarks/verdict/verdict.tsv"
    conda:
        CPU_ENV
    params:
        expected=PLAN.expected_rows(),
        gates=config["gates"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/verdict.py"


rule report:
    input:
        bench=PLAN.bench_files(),
        trtexec=PLAN.trtexec_files(),
        verdict="results/verdict.json",
        int8_debug=INT8_DEBUG_FILES,
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


rule verdict_check:
    input:
        verdict="results/verdict.json",
        report="results/report.md",
    output:
        "results/verdict.passed",
    log:
        "results/logs/verdict_check/verdict_check.log",
    conda:
        CPU_ENV
    params:
        version=PACKAGE_VERSION,
    script:
        "../scripts/verdict_check.py"
