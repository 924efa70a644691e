rule train_teacher:
    input:
        train=stores("train"),
        val=stores("val"),
        pretrained=pretrained_input("teacher"),
    output:
        model=f"results/models/{TEACHER}_{{mag}}x/seed{{seed}}/model.pt",
        history=f"results/models/{TEACHER}_{{mag}}x/seed{{seed}}/history.csv",
        history_plot=report(
            f"results/models/{TEACHER}_{{mag}}x/seed{{seed}}/history.png",
            caption="../report/history.rst",
            category="Training",
            subcategory=f"{TEACHER}_{{mag}}x",
        ),
    conda:
        "../../environment.yml"
    log:
        f"results/logs/train/{TEACHER}_{{mag}}x/seed{{seed}}.log",
    benchmark:
        f"results/benchmarks/train/{TEACHER}_{{mag}}x/seed{{seed}}.tsv"
    params:
        flags=training_flags("teacher"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=6000,
        runtime=240,
    shell:
        "wsidistill train-teacher --train-stores {input.train:q} --val-stores {input.val:q} "
        "--magnification {wildcards.mag:q} --seed {wildcards.seed:q} {params.flags:q} "
        "--out {output.model:q} --history {output.history:q} --threads {threads} > {log:q} 2>&1"


#: The Teacher's model of one seed ("{seed}" keeps the wildcard).
TEACHER_MODEL = expand(rules.train_teacher.output.model, mag=f"{TEACHER_MAG:g}", seed="{seed}")[0]


rule teacher_cache:
    input:
        train=stores("train"),
        teacher=TEACHER_MODEL,
    output:
        cache=directory(teacher_cache_path("{seed}")),
    conda:
        "../../environment.yml"
    log:
        f"results/logs/cache/{TEACHER}_{mag_name(TEACHER_MAG)}/seed{{seed}}.log",
    benchmark:
        f"results/benchmarks/cache/{TEACHER}_{mag_name(TEACHER_MAG)}/seed{{seed}}.tsv"
    params:
        terms=CACHE_TERMS,
        options=json.dumps(config["distill_options"]),
        device=config["device"],
        precision=config["precision"],
    threads: 2
    resources:
        gpu=1,
        mem_mb=6000,
        runtime=120,
    shell:
        "wsidistill teacher-cache --teacher {input.teacher:q} --train-stores {input.train:q} --terms {params.terms:q} "
        "--distill-options {params.options:q} --device {params.device:q} --precision {params.precision:q} "
        "--out {output.cache:q} --threads {threads} > {log:q} 2>&1"


rule distill:
    input:
        train=stores("train"),
        val=stores("val"),
        teacher=TEACHER_MODEL,
        cache=lambda wildcards: (
            expand(rules.teacher_cache.output.cache, seed=wildcards.seed) if uses_teacher_cache(wildcards.method) else []
        ),
        pretrained=pretrained_input("student"),
    output:
        model="results/models/{method}_{mag}x/seed{seed}/model.pt",
        history="results/models/{method}_{mag}x/seed{seed}/history.csv",
        history_plot=report(
            "results/models/{method}_{mag}x/seed{seed}/history.png",
            caption="../report/history.rst",
            category="Training",
            subcategory="{method}_{mag}x",
        ),
    conda:
        "../../environment.yml"
    log:
        "results/logs/distill/{method}_{mag}x/seed{seed}.log",
    benchmark:
        "results/benchmarks/distill/{method}_{mag}x/seed{seed}.tsv"
    params:
        flags=training_flags("student"),
        weights=lambda wildcards: json.dumps(METHODS[wildcards.method]),
        options=json.dumps(config["distill_options"]),
        student_input=config["student"]["input"],
        student_grid=config["student"]["grid"],
        cache=lambda wildcards, input: ["--teacher-cache", input.cache] if input.cache else [],
    threads: 2
    resources:
        gpu=1,
        mem_mb=6000,
        runtime=240,
    shell:
        "wsidistill distill --train-stores {input.train:q} --val-stores {input.val:q} --teacher {input.teacher:q} "
        "--method {wildcards.method:q} --weights {params.weights:q} --magnification {wildcards.mag:q} "
        "--student-input {params.student_input:q} --student-grid {params.student_grid:q} --distill-options {params.options:q} {params.cache:q} "
        "--seed {wildcards.seed:q} {params.flags:q} "
        "--out {output.model:q} --history {output.history:q} --threads {threads} > {log:q} 2>&1"
