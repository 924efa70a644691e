rule tables:
    input:
        expand(rules.evaluate.output.metrics, model=MODELS, seed=SEEDS),
    output:
        csv=report("results/tables/comparison.csv", caption="../report/comparison.rst", category="Comparison"),
        md="results/tables/comparison.md",
        html=report("results/tables/comparison.html", caption="../report/comparison.rst", category="Comparison"),
        plot=report("results/tables/kappa_vs_magnification.png", caption="../report/kappa_plot.rst",
                    category="Comparison"),
    conda:
        "../../environment.yml"
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
        "wsidistill tables --metrics {input:q} --csv {output.csv:q} --md {output.md:q} --html {output.html:q} --plot {output.plot:q} "
        "--baseline {params.baseline:q} --threads {threads} > {log:q} 2>&1"


rule claims:
    input:
        expand(rules.evaluate.output.metrics, model=MODELS, seed=SEEDS),
    output:
        csv="results/tables/claims.csv",
        md="results/tables/claims.md",
        plot=report("results/tables/claims.png", caption="../report/claims.rst", category="Comparison"),
    conda:
        "../../environment.yml"
    log:
        "results/logs/claims.log",
    benchmark:
        "results/benchmarks/claims.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wsidistill claims --metrics {input:q} --csv {output.csv:q} --md {output.md:q} --plot {output.plot:q} "
        "> {log:q} 2>&1"


rule cost:
    input:
        models=[model_path(m, SEEDS[0]) for m in COST_MODELS],
        stores=stores("test"),
    output:
        csv=report("results/tables/cost.csv", caption="../report/cost.rst", category="Cost"),
        md="results/tables/cost.md",
    conda:
        "../../environment.yml"
    log:
        "results/logs/cost.log",
    benchmark:
        "results/benchmarks/cost.tsv"
    params:
        models=lambda wildcards, input: [f"{m}={p}" for m, p in zip(COST_MODELS, input.models)],
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "wsidistill cost --models {params.models:q} --stores {input.stores:q} --csv {output.csv:q} --md {output.md:q} "
        "--threads {threads} > {log:q} 2>&1"


rule heatmaps:
    input:
        store=PATCH_STORE,
        predictions=expand(rules.evaluate.output.predictions, model=MODELS, seed=SEEDS[0]),
    output:
        maps=report(
            expand("results/heatmaps/{{slide}}/{model}_seed{seed}.png", model=MODELS, seed=SEEDS[0]),
            caption="../report/heatmap.rst",
            category="Heatmaps",
            subcategory="{slide}",
        ),
        panel=report("results/heatmaps/{slide}/panel.png", caption="../report/panel.rst", category="Heatmaps",
                     subcategory="{slide}"),
    conda:
        "../../environment.yml"
    log:
        "results/logs/heatmaps/{slide}.log",
    benchmark:
        "results/benchmarks/heatmaps/{slide}.tsv"
    params:
        pairs=lambda wildcards, input: [f"{m}={p}" for m, p in zip(MODELS, input.predictions)],
        panel=PANEL_MODELS,
    threads: 1
    resources:
        mem_mb=1500,
        runtime=20,
    shell:
        "wsidistill heatmaps --store {input.store:q} --predictions {params.pairs:q} --panel {params.panel:q} "
        "--out {output.maps:q} --panel-out {output.panel:q} --threads {threads} > {log:q} 2>&1"


rule validate:
    # each model's predictions on the validation slides, from which slide_grades chooses its grading threshold
    input:
        model=model_path("{model}", "{seed}"),
        stores=stores("val"),
    output:
        predictions=directory("results/validation/{model}/seed{seed}.zarr"),
        metrics="results/validation/{model}/seed{seed}.json",
    conda:
        "../../environment.yml"
    log:
        "results/logs/validate/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/validate/{model}/seed{seed}.tsv"
    params:
        device=config["device"],
        precision=config["precision"],
    threads: 2
    resources:
        gpu=1,
        mem_mb=EVALUATE_MEM_MB,
        runtime=EVALUATE_RUNTIME,
    shell:
        "wsidistill evaluate --model {input.model:q} --stores {input.stores:q} --predictions {output.predictions:q} "
        "--metrics {output.metrics:q} --device {params.device:q} --precision {params.precision:q} "
        "--threads {threads} > {log:q} 2>&1"


rule slide_grades:
    input:
        predictions=expand(rules.evaluate.output.predictions, model=MODELS, seed=SEEDS[0]),
        stores=stores("test"),
        val_predictions=expand(rules.validate.output.predictions, model=MODELS, seed=SEEDS[0]),
        val_stores=stores("val"),
    output:
        csv=report("results/tables/slides.csv", caption="../report/slides.rst", category="Slide grades"),
        md="results/tables/slides.md",
    conda:
        "../../environment.yml"
    log:
        "results/logs/slide_grades.log",
    benchmark:
        "results/benchmarks/slide_grades.tsv"
    params:
        pairs=lambda wildcards, input: [f"{m}={p}" for m, p in zip(MODELS, input.predictions)],
        val_pairs=lambda wildcards, input: [f"{m}={p}" for m, p in zip(MODELS, input.val_predictions)],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wsidistill slide-grades --predictions {params.pairs:q} --stores {input.stores:q} "
        "--val-predictions {params.val_pairs:q} --val-stores {input.val_stores:q} --out {output.csv:q} "
        "--md {output.md:q} --threads {threads} > {log:q} 2>&1"


rule attention:
    input:
        teacher=model_path(MODELS[0], SEEDS[0]),
        students=[model_path(m, SEEDS[0]) for m in MODELS[1:]],
        stores=stores("test"),
    output:
        csv=report("results/attention/agreement.csv", caption="../report/agreement.rst", category="Attention"),
        md="results/attention/agreement.md",
        spike_csv=report("results/tables/attention_spike.csv", caption="../report/attention_spike.rst",
                         category="Attention"),
        spike_md="results/tables/attention_spike.md",
        panels=report(
            expand("results/attention/{cls}.png", cls=config["classes"]),
            caption="../report/attention.rst",
            category="Attention",
        ),
    conda:
        "../../environment.yml"
    log:
        "results/logs/attention.log",
    benchmark:
        "results/benchmarks/attention.tsv"
    params:
        students=lambda wildcards, input: [f"{m}={p}" for m, p in zip(MODELS[1:], input.students)],
        panel=ATTENTION_PANEL,
        out_dir=lambda wildcards, output: Path(output.md).parent,
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    shell:
        "wsidistill attention --teacher {input.teacher:q} --students {params.students:q} --stores {input.stores:q} "
        "--out-dir {params.out_dir:q} --panel-students {params.panel:q} --spike-md {output.spike_md:q} "
        "--threads {threads} > {log:q} 2>&1"
