# Stage weights: deterministic synthetic weights for the demo. A user's own checkpoint (config
# model.checkpoint) is used as it is and this rule does not run.


rule synthetic_weights:
    output:
        "results/weights/{name}.pth",
    log:
        "results/logs/synthetic_weights/{name}.log",
    benchmark:
        "results/benchmarks/synthetic_weights/{name}.tsv"
    conda:
        CPU_ENV
    params:
        config=synthetic_config,
        opts=synthetic_opts,
        seed=synthetic_seed,
        version=PACKAGE_VERSION,
    script:
        "../scripts/synthetic_weights.py"
