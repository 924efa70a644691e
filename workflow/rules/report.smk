rule tables:
    input:
        expand("results/metrics/{model}/seed{seed}.json", model=MODELS, seed=SEEDS),
    output:
        csv=report("results/tables/comparison.csv", caption="../report/comparison.rst", category="Comparison"),
        md="results/tables/comparison.md",
        plot=report("results/tables/kappa_vs_magnification.png", caption="../report/kappa_plot.rst",
                    category="Comparison"),
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    params:
        baseline=config["baseline_method"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wsidistill tables --metrics {input:q} --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} "
        "--baseline {params.baseline} --threads {threads} > {log:q} 2>&1"


rule heatmap:
    input:
        store="results/patches/{slide}.zarr",
        predictions="results/predictions/{model}/seed{seed}.zarr",
    output:
        report(
            "results/heatmaps/{slide}/{model}_seed{seed}.png",
            caption="../report/heatmap.rst",
            category="Heatmaps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "model": "{model}", "seed": "{seed}"},
        ),
    log:
        "results/logs/heatmap/{slide}/{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/heatmap/{slide}/{model}_seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wsidistill heatmap --store {input.store:q} --predictions {input.predictions:q} --out {output:q} "
        "--title '{wildcards.model} seed {wildcards.seed}' --threads {threads} > {log:q} 2>&1"
