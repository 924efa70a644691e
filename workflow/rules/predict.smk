# `wsidistill predict`: a trained model applied to new, unannotated slides (config section `predict`).
# Off by default; when enabled, rule all also asks for results/predict/{NAME}/summary.csv.


rule predict:
    input:
        slide=lambda wildcards: PREDICT_SLIDES[wildcards.predicted],
        model=PREDICT_MODEL,
    output:
        probabilities=directory("results/predict/{name}/{predicted}.zarr"),
        heatmap="results/predict/{name}/{predicted}.png",
        geojson="results/predict/{name}/{predicted}.geojson",
        grade="results/predict/{name}/{predicted}.json",
    wildcard_constraints:
        name=re.escape(PREDICT_NAME),
        predicted="|".join(map(re.escape, PREDICT_SLIDES)) or "(?!)",
    conda:
        "../../environment.yml"
    log:
        "results/logs/predict/{name}/{predicted}.log",
    benchmark:
        "results/benchmarks/predict/{name}/{predicted}.tsv"
    params:
        out=lambda wildcards: f"results/predict/{wildcards.name}",
        # Tissue detection as extraction's, then the predict section: one config -> flags mapping (cli_flags).
        flags=(
            cli_flags({key: config["extraction"][key] for key in ("tissue_method", "min_tissue_fraction", "block_cells")})
            + cli_flags({key: PREDICT[key] for key in ("min_tumour_fraction", "batch_size")})
            + ["--device", config["device"], "--precision", config["precision"]]
        ),
        slide=predict_slide_flags,
    threads: 2
    resources:
        gpu=1,
        # the slide is streamed in blocks: memory and minutes grow with the slide file (common.smk)
        mem_mb=PREDICT_MEM_MB,
        runtime=PREDICT_RUNTIME,
    shell:
        "wsidistill predict {input.slide:q} --model {input.model:q} --out {params.out:q} "
        "--slide-id {wildcards.predicted:q} --no-summary {params.flags:q} {params.slide:q} --threads {threads} > {log:q} 2>&1"


rule predict_summary:
    input:
        grades=expand("results/predict/{name}/{predicted}.json", name=PREDICT_NAME, predicted=list(PREDICT_SLIDES)),
    output:
        summary="results/predict/{name}/summary.csv",
    wildcard_constraints:
        name=re.escape(PREDICT_NAME),
    conda:
        "../../environment.yml"
    log:
        "results/logs/predict/{name}/summary.log",
    benchmark:
        "results/benchmarks/predict/{name}/summary.tsv"
    shell:
        "wsidistill predict-summary --slides {input.grades:q} --out {output.summary:q} > {log:q} 2>&1"
