rule evaluate:
    input:
        model=model_path("{model}", "{seed}"),  # written by rule train_teacher or rule distill
        stores=stores("test"),
    output:
        predictions=directory("results/predictions/{model}/seed{seed}.zarr"),
        metrics="results/metrics/{model}/seed{seed}.json",
        confusion_csv="results/metrics/{model}/seed{seed}_confusion.csv",
        confusion_png=report(
            "results/metrics/{model}/seed{seed}_confusion.png",
            caption="../report/confusion.rst",
            category="Confusion matrices",
        ),
    conda:
        "../../environment.yml"
    log:
        "results/logs/evaluate/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/seed{seed}.tsv"
    params:
        device=config["device"],
        precision=config["precision"],
    threads: 2
    resources:
        gpu=1,
        # test stores are streamed a batch at a time: memory and minutes grow with their size (common.smk)
        mem_mb=EVALUATE_MEM_MB,
        runtime=EVALUATE_RUNTIME,
    shell:
        "wsidistill evaluate --model {input.model:q} --stores {input.stores:q} "
        "--predictions {output.predictions:q} --metrics {output.metrics:q} "
        "--confusion-csv {output.confusion_csv:q} --confusion-png {output.confusion_png:q} --device {params.device:q} "
        "--precision {params.precision:q} "
        "--threads {threads} > {log:q} 2>&1"
