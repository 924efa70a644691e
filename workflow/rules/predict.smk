# `wsidistill predict`: a trained model applied to new, unannotated slides (config section `predict`).
# Off by default; when enabled, rule all also asks for results/predict/{NAME}/summary.csv.

import re

PREDICT = config["predict"]


def _predict_model():
    """(output name, checkpoint path) of the model to apply: a path, or a model this workflow trains."""
    if PREDICT["path"]:
        path = Path(PREDICT["path"])
        return PREDICT.get("name") or path.parent.parent.name or path.stem, str(path)
    name, seed = PREDICT["model"], PREDICT["seed"]
    if name not in MODELS:
        raise WorkflowError(f"config error: predict.model {name!r} is not a model this config trains "
                            f"({', '.join(MODELS)}); give one of those, or predict.path to a checkpoint")
    return f"{name}_seed{seed}", model_path(name, seed)


def _load_predict_sheet():
    """slide_id -> absolute slide path, from the TSV/CSV `predict.samples` (paths relative to the sheet)."""
    sheet_path = Path(PREDICT["samples"] or "")
    if not PREDICT["samples"] or not sheet_path.is_file():
        raise WorkflowError(f"config error: predict.samples {PREDICT['samples']!r} is not a file; give a sheet "
                            "(TSV) with columns slide_id and path")
    sheet = pd.read_csv(sheet_path, sep="," if sheet_path.suffix == ".csv" else "\t", dtype=str,
                        keep_default_na=False)
    missing = [c for c in ("slide_id", "path") if c not in sheet.columns]
    if missing:
        raise WorkflowError(f"{sheet_path}: missing columns {missing}; a predict sheet needs slide_id and path")
    duplicated = sorted(sheet.slide_id[sheet.slide_id.duplicated()].unique())
    if duplicated:
        raise WorkflowError(f"{sheet_path}: slide ids {duplicated} occur twice; make them unique")
    bad = [s for s in sheet.slide_id if not s or "/" in s or s.startswith(".")]
    if bad:
        raise WorkflowError(f"{sheet_path}: slide ids {bad} are not usable as file names")
    base = sheet_path.parent
    return {row.slide_id: str(base / row.path) if not Path(row.path).is_absolute() else row.path
            for row in sheet.itertuples()}


if PREDICT["enabled"]:
    PREDICT_NAME, PREDICT_MODEL = _predict_model()
    PREDICT_SLIDES = _load_predict_sheet()
else:
    PREDICT_NAME, PREDICT_MODEL, PREDICT_SLIDES = "none", "", {}


def predict_outputs():
    return [f"results/predict/{PREDICT_NAME}/summary.csv"] if PREDICT["enabled"] else []


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
        flags=shlex.join([
            "--tissue-method", config["extraction"]["tissue_method"],
            "--min-tissue-fraction", str(config["extraction"]["min_tissue_fraction"]),
            "--block-cells", str(config["extraction"]["block_cells"]),
            "--min-tumour-fraction", str(PREDICT["min_tumour_fraction"]),
            "--batch-size", str(PREDICT["batch_size"]),
            "--device", config["device"],
            "--precision", config["precision"],
        ]),
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    shell:
        "wsidistill predict {input.slide:q} --model {input.model:q} --out {params.out:q} "
        "--slide-id {wildcards.predicted:q} --no-summary {params.flags} --threads {threads} > {log:q} 2>&1"


rule predict_summary:
    input:
        grades=expand("results/predict/{name}/{predicted}.json", name=PREDICT_NAME, predicted=list(PREDICT_SLIDES)),
    output:
        summary="results/predict/{name}/summary.csv",
    wildcard_constraints:
        name=re.escape(PREDICT_NAME),
    log:
        "results/logs/predict/{name}/summary.log",
    shell:
        "wsidistill predict-summary --slides {input.grades:q} --out {output.summary:q} > {log:q} 2>&1"
