if SOURCE == "sicapv2":

    # SICAPv2 ships 512 px patches at 10x, not slides: one job imports one slide's patches into the store
    # layout of rule extract, at the config's magnifications (area downsamplings of the 10x patch). There is
    # no extraction QC image ({slide}.qc.png): no slide image and no tissue detection to check.
    rule import_sicapv2:
        input:
            sicapv2_inputs,
        output:
            store=directory("results/patches/{slide}.zarr"),
            summary="results/patches/{slide}.json",
        conda:
            "../../environment.yml"
        log:
            "results/logs/import_sicapv2/{slide}.log",
        benchmark:
            "results/benchmarks/import_sicapv2/{slide}.tsv"
        params:
            root=SICAP_ROOT,
            out=lambda wildcards, output: Path(output.store).parent,
            magnifications=list(map(str, config["magnifications"])),
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "wsidistill import-sicapv2 {params.root:q} --out {params.out:q} --slide {wildcards.slide:q} "
            "--magnifications {params.magnifications:q} --threads {threads} > {log:q} 2>&1"

else:

    rule extract:
        input:
            unpack(extract_inputs),
        output:
            store=directory("results/patches/{slide}.zarr"),
            summary="results/patches/{slide}.json",
            qc=report("results/patches/{slide}.qc.png", caption="../report/qc.rst", category="Extraction QC"),
        conda:
            "../../environment.yml"
        log:
            "results/logs/extract/{slide}.log",
        benchmark:
            "results/benchmarks/extract/{slide}.tsv"
        params:
            settings=EXTRACT_FLAGS,
            slide=slide_flags,
            # Where the work runs, not what it makes: a function of `threads`, which Snakemake leaves out
            # of its params rerun check (moving to another scheduler reruns nothing).
            scheduler=lambda wildcards, threads: cli_flags({"scheduler_address": config["dask"]["scheduler_address"]}),
            # A training slide must get labelled patches (issue 17, kind 7). It decides whether the job fails, not
            # what the store holds, so it too is a function of `threads`: moving a slide between splits reruns nothing.
            role=lambda wildcards, threads: ["--require-labels"] if SAMPLES.split[wildcards.slide] == "train" else [],
        threads: 2
        resources:
            # memory is bounded by the reading block; memory and minutes grow with the slide file (common.smk)
            mem_mb=EXTRACT_MEM_MB,
            runtime=EXTRACT_RUNTIME,
        shell:
            "wsidistill extract {input.slide:q} --out {output.store:q} --summary {output.summary:q} --qc {output.qc:q} "
            "--slide-id {wildcards.slide:q} {params.settings:q} {params.slide:q} {params.scheduler:q} {params.role:q} "
            "--threads {threads} > {log:q} 2>&1"


#: A slide's patch store, whichever rule writes it.
PATCH_STORE = (rules.import_sicapv2 if SOURCE == "sicapv2" else rules.extract).output.store
