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
            magnifications=" ".join(map(str, config["magnifications"])),
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "wsidistill import-sicapv2 {params.root:q} --out {params.out:q} --slide {wildcards.slide} "
            "--magnifications {params.magnifications} --threads {threads} > {log:q} 2>&1"

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
            flags=extract_flags,
        threads: 2
        resources:
            # memory is bounded by the reading block; memory and minutes grow with the slide file (common.smk)
            mem_mb=EXTRACT_MEM_MB,
            runtime=EXTRACT_RUNTIME,
        shell:
            "wsidistill extract {input.slide:q} --out {output.store:q} --summary {output.summary:q} --qc {output.qc:q} "
            "--slide-id {wildcards.slide} {params.flags} --threads {threads} > {log:q} 2>&1"
