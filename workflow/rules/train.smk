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
        loading=loading_flags,
        launcher=training_launcher(),
    threads: 2
    resources:
        # memory and minutes follow the stores' size (training_mem_mb, training_runtime in common.smk)
        gpu=config["training"]["gpus_per_job"],
        mem_mb=training_mem_mb,
        runtime=training_runtime,
    shell:
        "{params.launcher:q} train-teacher --train-stores {input.train:q} --val-stores {input.val:q} "
        "--magnification {wildcards.mag:q} --seed {wildcards.seed:q} {params.flags:q} {params.loading:q} "
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
        # the Students that read the cache: its maps and features are stored pooled to their grids (a quarter of
        # the Teacher grid's bytes at 20x); a change to them rebuilds it, and so retrains the Students reading it
        student_mags=[f"{m:g}" for m in STUDENT_MAGS],
        student_arch=config["student"]["arch"],
        student_input=config["student"]["input"],
        student_grid=config["student"]["grid"],
        device=config["device"],
        precision=config["precision"],
        loader_workers=lambda wildcards, threads: config["training"]["loader_workers"],  # untracked: LOADING_KEYS
    threads: 2
    resources:
        # the framework and loader workers (patches are streamed), a few batches of targets; minutes follow the
        # training stores (eight Teacher passes over them)
        gpu=1,
        mem_mb=lambda wildcards, input: BASE_MB + WORKER_MB * config["training"]["loader_workers"] + 500,
        runtime=lambda wildcards, input: int(20 + 8 * tree_mb(input.train) / 100),
    shell:
        "wsidistill teacher-cache --teacher {input.teacher:q} --train-stores {input.train:q} --terms {params.terms:q} "
        "--distill-options {params.options:q} --student-magnifications {params.student_mags:q} "
        "--student-arch {params.student_arch:q} --student-input {params.student_input:q} "
        "--student-grid {params.student_grid:q} --device {params.device:q} --precision {params.precision:q} "
        "--loader-workers {params.loader_workers:q} --out {output.cache:q} --threads {threads} > {log:q} 2>&1"


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
        loading=loading_flags,
        launcher=training_launcher(),
        weights=lambda wildcards: json.dumps(METHODS[wildcards.method]),
        options=json.dumps(config["distill_options"]),
        student_input=config["student"]["input"],
        student_grid=config["student"]["grid"],
        cache=lambda wildcards, input: ["--teacher-cache", input.cache] if input.cache else [],
    threads: 2
    resources:
        # memory and minutes follow the stores' and the cache's size (training_mem_mb, training_runtime in common.smk)
        gpu=config["training"]["gpus_per_job"],
        mem_mb=training_mem_mb,
        runtime=training_runtime,
    shell:
        "{params.launcher:q} distill --train-stores {input.train:q} --val-stores {input.val:q} --teacher {input.teacher:q} "
        "--method {wildcards.method:q} --weights {params.weights:q} --magnification {wildcards.mag:q} "
        "--student-input {params.student_input:q} --student-grid {params.student_grid:q} --distill-options {params.options:q} {params.cache:q} "
        "--seed {wildcards.seed:q} {params.flags:q} {params.loading:q} "
        "--out {output.model:q} --history {output.history:q} --threads {threads} > {log:q} 2>&1"
