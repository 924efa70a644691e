if SOURCE == "demo":

    rule demo_slide:
        output:
            slide=f"{DEMO_DIR}/{{slide}}.svs",
            annotations=f"{DEMO_DIR}/{{slide}}.geojson",
        conda:
            "../../environment.yml"
        log:
            "results/logs/demo/{slide}.log",
        benchmark:
            "results/benchmarks/demo/{slide}.tsv"
        params:
            out=DEMO_DIR,
            slides=DEMO["slides"],
            seed=DEMO["seed"],
            size=cli_flags({k: DEMO.get(k) for k in ("width", "height", "cues", "val_patients", "test_patients")}),
        threads: 1
        resources:
            mem_mb=1500,
            runtime=10,
        shell:
            "wsidistill demo-slide --out {params.out:q} --slide-id {wildcards.slide:q} --slides {params.slides:q} "
            "--seed {params.seed:q} {params.size:q} --threads {threads} > {log:q} 2>&1"

    rule demo_sheet:
        input:
            expand(rules.demo_slide.output.slide, slide=SAMPLES.slide_id),
        output:
            str(SHEET),
        conda:
            "../../environment.yml"
        log:
            "results/logs/demo/sheet.log",
        benchmark:
            "results/benchmarks/demo/sheet.tsv"
        params:
            out=DEMO_DIR,
            slides=DEMO["slides"],
            seed=DEMO["seed"],
            splits=cli_flags({k: DEMO.get(k) for k in ("val_patients", "test_patients")}),
        threads: 1
        resources:
            mem_mb=500,
            runtime=5,
        shell:
            "wsidistill demo-sheet --out {params.out:q} --sheet {output:q} --slides {params.slides:q} "
            "--seed {params.seed:q} {params.splits:q} --threads {threads} > {log:q} 2>&1"
