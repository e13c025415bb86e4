# Stage reference: torch FP32 (CPU) outputs and panoptic results on the evaluation images of each branch, the
# accuracy reference of every benchmark.


rule reference_outputs:
    input:
        unpack(reference_inputs),
    output:
        # the .npz (raw outputs of the fidelity subset) names the job; the panoptic maps of every image are
        # a COCO panoptic set beside it (bench.reference.reference_panoptic_dir)
        reference="results/reference/{model}.npz",
        panoptic=directory("results/reference/{model}.panoptic"),
    log:
        "results/logs/reference_outputs/{model}.log",
    benchmark:
        "results/benchmarks/reference_outputs/{model}.tsv"
    conda:
        CPU_ENV
    resources:
        mem_mb=4000,
    params:
        config=model_config,
        opts=model_opts,
        input_hw=input_hw,
        buckets=input_buckets,
        categories=model_categories,
        fidelity_images=config["evaluation"]["fidelity_images"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/reference_outputs.py"


rule polygraphy_files:
    """The network inputs and torch FP32 outputs of the first polygraphy.images evaluation images whose raw
    outputs the reference keeps (evaluation.fidelity_images) as Polygraphy JSON, so that NVIDIA's checker compares any engine with our reference (docs/engines.md):
    polygraphy run <engine> --trt --load-inputs <inputs> --load-outputs <outputs>."""
    input:
        reference="results/reference/{model}.npz",
        images=eval_images,
    output:
        inputs="results/polygraphy/{model}.inputs.json",
        outputs="results/polygraphy/{model}.torch_fp32.json",
    log:
        "results/logs/polygraphy_files/{model}.log",
    conda:
        CPU_ENV
    params:
        config=model_config,
        opts=model_opts,
        images=config["polygraphy"]["images"],
        version=PACKAGE_VERSION,
    script:
        "../scripts/polygraphy_files.py"
