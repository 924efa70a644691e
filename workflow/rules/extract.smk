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
        mem_mb=2000,
        runtime=60,
    shell:
        "wsidistill extract {input.slide:q} --out {output.store:q} --summary {output.summary:q} --qc {output.qc:q} "
        "--slide-id {wildcards.slide} {params.flags} --threads {threads} > {log:q} 2>&1"
