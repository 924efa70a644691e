# Config and sample-sheet validation, input functions and wildcard constraints. Nothing here imports the
# imaging stack (OpenCV, OpenSlide, tiatoolbox): a dry run only reads config, sheets and GeoJSON names.
import json
import sys
import re
from pathlib import Path

import pandas as pd

from wsidistill.config import (
    TEACHER,
    ConfigError,
    active_methods,
    check_config,
    cli_flags,
    student_magnifications,
    validate_config,
)
from wsidistill.slides.geojson import AnnotationError, check_annotation_classes
from wsidistill.slides.samples import SampleSheetError, check_roles, load_sample_sheet


def stop(message):
    """End the run before any job with a one-line message (no traceback): a bad config or sample sheet."""
    print(message, file=sys.stderr)
    sys.exit(1)


# The schema (src/wsidistill/schemas/config.schema.yaml, linked from workflow/schemas) fills the defaults.
try:
    validate_config(config)
    check_config(config)
except ConfigError as err:
    stop(f"config error: {err}")

SHEET = Path(config["samples"])
DEMO = config["demo"]
#: A SICAPv2 folder: slides, splits and patients come from its partition sheets (rule import_sicapv2).
SICAP_ROOT = config["sicapv2"]["root"]
#: Where the slides come from: "sicapv2" (sicapv2.root set), else "demo" (demo.enabled), else "sheet" (samples).
SOURCE = "sicapv2" if SICAP_ROOT else "demo" if DEMO["enabled"] else "sheet"
DEMO_DIR = SHEET.parent
TEACHER_MAG = config["teacher"]["magnification"]
STUDENT_MAGS = student_magnifications(config)
METHODS = active_methods(config)
SEEDS = config["seeds"]


def mag_name(magnification):
    return f"{magnification:g}x"


def _load_sicapv2():
    """One row per partitioned SICAPv2 slide (slide_id, patient_id, split), read from the sheets only."""
    from wsidistill.patches.sicapv2 import SicapError, check_protocol, read_slides

    try:
        check_protocol(magnifications=config["magnifications"], teacher_magnification=TEACHER_MAG,
                       patch_size=config["extraction"]["patch_size"], classes=config["classes"])
        slides = read_slides(SICAP_ROOT)
    except SicapError as err:
        stop(f"SICAPv2 error (`sicapv2.root`): {err}")
    return slides.set_index("slide_id", drop=False)


def _load_samples():
    if SOURCE == "sicapv2":
        return _load_sicapv2()
    if SOURCE == "demo":
        from wsidistill.demo import plan_cohort

        try:
            plan = plan_cohort(DEMO["slides"], DEMO["seed"], val_patients=DEMO["val_patients"],
                               test_patients=DEMO["test_patients"])
        except ValueError as err:
            stop(f"config error: {err}")
        return pd.DataFrame(
            {
                "slide_id": [s.slide_id for s in plan],
                "path": [str(DEMO_DIR / f"{s.slide_id}.svs") for s in plan],
                "annotations": [str(DEMO_DIR / f"{s.slide_id}.geojson") for s in plan],
                "patient_id": [s.patient_id for s in plan],
                "split": [s.split for s in plan],
            }
        ).set_index("slide_id", drop=False)
    try:
        sheet = load_sample_sheet(SHEET)
        if "annotations" in sheet:
            check_annotation_classes([p for p in sheet.annotations if p], config["annotation_classes"])
        check_roles(sheet, SHEET, TEACHER_MAG)
    except (SampleSheetError, AnnotationError) as err:
        stop(f"sample sheet error: {err}")
    return sheet


SAMPLES = _load_samples()
for _split in ("train", "val", "test"):
    if not (SAMPLES.split == _split).any():
        stop(f"{'SICAPv2 ' + SICAP_ROOT if SOURCE == 'sicapv2' else 'sample sheet ' + str(SHEET)}: "
                            f"no slide in the {_split!r} split; every split needs one")

MODELS = [f"{TEACHER}_{mag_name(TEACHER_MAG)}"] + [
    f"{method}_{mag_name(mag)}" for method in METHODS for mag in STUDENT_MAGS
]

#: Side-by-side panel: the Teacher, then the chosen Students at the lowest magnification.
PANEL_MODELS = MODELS[:1] + [f"{m}_{mag_name(STUDENT_MAGS[-1])}" for m in config["panel_methods"] or METHODS]

#: Attention panels: CE-only, FM, AT+ and scale-free AT+ Students (those configured) at the lowest magnification.
ATTENTION_PANEL = [
    f"{m}_{mag_name(STUDENT_MAGS[-1])}"
    for m in (config["baseline_method"], "fm", "atplus", "atplusl2")
    if m in METHODS
]

#: One model per magnification for the cost table: the Teacher, then the baseline Student at each.
COST_MODELS = MODELS[:1] + [f"{config['baseline_method']}_{mag_name(mag)}" for mag in STUDENT_MAGS]


def one_of(values):
    """A wildcard constraint matching exactly these values (regex characters in ids are escaped)."""
    return "|".join(map(re.escape, map(str, values)))


wildcard_constraints:
    slide=one_of(SAMPLES.slide_id),
    method=one_of(METHODS),
    model=one_of(MODELS),
    mag=r"[0-9.]+",
    seed=r"\d+",


def stores(split):
    """The patch stores of one split's slides (PATCH_STORE, extract.smk)."""
    return expand(PATCH_STORE, slide=SAMPLES.slide_id[SAMPLES.split == split])


def test_slides():
    return list(SAMPLES.slide_id[SAMPLES.split == "test"])


def extract_inputs(wildcards):
    row = SAMPLES.loc[wildcards.slide]
    inputs = {"slide": row["path"]}
    for column in ("annotations", "label_mask", "tissue_mask"):
        if row.get(column):
            inputs[column] = row[column]
    return inputs


#: Extraction settings that shape only a store labelled from a label mask: flags of those slides alone (slide_flags),
#: so changing them reruns no slide annotated in GeoJSON.
LABEL_MASK_SETTINGS = ("min_epithelium_fraction",)

#: Everything of config that shapes a patch store, as `wsidistill extract` flags: a plain param of rule
#: extract, so Snakemake's params rerun trigger sees every change.
EXTRACT_FLAGS = [
    "--magnifications", *map(str, config["magnifications"]),
    "--teacher-magnification", str(TEACHER_MAG),
    "--classes", *config["classes"],
    "--class-map", json.dumps(config["annotation_classes"]),
    *cli_flags({key: value for key, value in config["extraction"].items() if key not in LABEL_MASK_SETTINGS}),
]

LABEL_MASK_FLAGS = cli_flags({
    "label_mask_classes": config.get("label_mask_classes") or None,
    "label_mask_context": config["label_mask_context"],
    **{key: config["extraction"].get(key) for key in LABEL_MASK_SETTINGS},
})


def sheet_flags(row, columns=("annotations", "label_mask", "mpp", "objective_power")):
    """A sheet row's non-empty ``columns`` as CLI flags (``--objective-power 40``): one code path for the
    training sheet (rule extract) and the predict sheet (rule predict)."""
    flags = []
    for column in columns:
        value = row.get(column)
        if value is not None and not pd.isna(value) and value != "":
            flags += [f"--{column.replace('_', '-')}", str(value)]
    return flags


def slide_flags(wildcards):
    """One slide's sample-sheet entries: its annotations or label mask, tissue mask and mpp/objective_power
    overrides, and with a label mask the settings that read it (LABEL_MASK_FLAGS).

    A function of the wildcards only (no `input`), so Snakemake records its value and reruns the slide's
    extraction when the sheet changes them.
    """
    row = SAMPLES.loc[wildcards.slide]
    flags = sheet_flags(row, ("annotations", "label_mask", "tissue_mask", "mpp", "objective_power"))
    return flags + (LABEL_MASK_FLAGS if sheet_flags(row, ("label_mask",)) else [])


def sicapv2_inputs(wildcards):
    """The partition sheets (and wsi_labels.xlsx) an import reads: editing one re-imports."""
    from wsidistill.patches.sicapv2 import SPLIT_SHEETS

    root = Path(SICAP_ROOT)
    return [str(root / sheet) for sheet in SPLIT_SHEETS.values()] + [
        str(path) for path in [root / "wsi_labels.xlsx"] if path.exists()
    ]


#: `training` keys that choose how patches are loaded, not what is learnt (the weights are equal either way:
#: tests/training/test_streaming.py); they reach the job untracked, so changing them retrains nothing.
LOADING_KEYS = ("loader_workers", "memory_budget_mb")


def training_flags(arch_section):
    """Classes, architecture, `training` section (less LOADING_KEYS), device and precision as flags (a plain
    param: Snakemake reruns the job when one changes)."""
    shaping = {key: value for key, value in config["training"].items() if key not in LOADING_KEYS}
    return [
        "--classes", *config["classes"],
        *cli_flags({"arch": config[arch_section]["arch"], "pretrained": config[arch_section].get("pretrained")}),
        "--training", json.dumps(shaping, sort_keys=True),
        *cli_flags({"device": config["device"], "precision": config["precision"]}),
    ]


def loading_flags(wildcards, threads):
    """LOADING_KEYS as `--training-loading` JSON: a function of `threads`, so Snakemake leaves it out of its
    rerun check (as dask's scheduler address)."""
    return ["--training-loading", json.dumps({key: config["training"][key] for key in LOADING_KEYS})]


def pretrained_input(arch_section):
    """The section's local starting checkpoint, an input of its training rule (none when null)."""
    return config[arch_section].get("pretrained") or []


def model_path(model, seed):
    return f"results/models/{model}/seed{seed}/model.pt"


#: Teacher-target cache: the union of the terms of every method that needs the Teacher.
CACHE_TERMS = sorted({term for weights in METHODS.values() for term, weight in weights.items() if weight and term != "ce"})


def teacher_cache_path(seed):
    return f"results/cache/{TEACHER}_{mag_name(TEACHER_MAG)}/seed{seed}.zarr"


def uses_teacher_cache(method):
    return config["teacher"].get("cache", True) and any(w and t != "ce" for t, w in METHODS[method].items())


def final_outputs():
    outputs = [rules.tables.output.md, rules.claims.output.md, rules.cost.output.md, rules.slide_grades.output.csv, rules.attention.output.md]
    outputs += expand(rules.heatmaps.output.panel, slide=test_slides())
    outputs += expand(rules.evaluate.output.confusion_png, model=MODELS, seed=SEEDS)
    outputs += expand(rules.train_teacher.output.history_plot, mag=f"{TEACHER_MAG:g}", seed=SEEDS)
    outputs += expand(rules.distill.output.history_plot, method=METHODS, mag=[f"{m:g}" for m in STUDENT_MAGS],
                      seed=SEEDS)
    if SOURCE == "demo":
        outputs.append(rules.demo_sheet.output[0])
    return outputs


# --- Resources that follow the cohort (issue 18) -----------------------------------------------------------------
# Snakemake calls these with the job's inputs present, just before it is scheduled. Patch stores and the
# Teacher cache are directories, so their sizes are summed over their files (input.size_mb would count the
# directory entry only). The coefficients are deliberately simple estimates, stated beside each rule.

#: A Python process with PyTorch, zarr and one model loaded, in MiB; each DataLoader worker adds about WORKER_MB.
BASE_MB, WORKER_MB = 1500, 400
#: Decoded pixels per MiB of store on disk: JPEG source tiles about 8x, Blosc-LZ4 patches about 1.5x.
PIXELS_PER_STORE_MB = 8


def tree_mb(paths):
    """MiB of the files under ``paths`` (files or directories)."""
    total = 0
    for path in map(Path, [paths] if isinstance(paths, str) else paths):
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total / 2**20


def training_mem_mb(wildcards, input):
    """The framework, the loader workers, the patches when they are read into memory (at most
    `training.memory_budget_mb`: above it they are streamed) and the Teacher cache's in-memory part (<= 4 GiB)."""
    training = config["training"]
    pixels = min(PIXELS_PER_STORE_MB * (tree_mb(input.train) + tree_mb(input.get("val", []))),
                 training["memory_budget_mb"])
    cache = min(tree_mb(input.get("cache", [])) * 2, 4096)  # float16 targets are stored ~1.4x compressed
    return int(BASE_MB + WORKER_MB * training["loader_workers"] + pixels + cache)


def training_runtime(wildcards, input):
    """Minutes: 30, plus for each epoch 2 minutes per 100 MiB of training stores (a CPU's pace on the demo;
    a GPU is faster), divided over `training.gpus_per_job` ranks."""
    epochs = config["training"]["epochs"]
    return int(30 + epochs * 2 * tree_mb(input.train) / 100 / config["training"]["gpus_per_job"])


def store_mb_resources(base_mb, per_store_mb, base_minutes, minutes_per_gb):
    """``mem_mb`` and ``runtime`` callables linear in the MiB of the job's input (files or stores)."""
    return (lambda wildcards, input: int(base_mb + per_store_mb * tree_mb(list(input))),
            lambda wildcards, input: int(base_minutes + minutes_per_gb * tree_mb(list(input)) / 1024))


#: Inference streams each test store in batches: memory is the framework plus about one store's worth of buffers.
EVALUATE_MEM_MB, EVALUATE_RUNTIME = store_mb_resources(BASE_MB, 0.05, 10, 20)
#: Extraction reads a slide in blocks and writes whole chunks (memory bounded by the block, not the slide);
#: time grows with the slide file's size.
EXTRACT_MEM_MB, EXTRACT_RUNTIME = store_mb_resources(1000, 0.25, 10, 30)
#: Prediction streams the slide in extraction's blocks through one model: the framework and the model, plus
#: extraction's per-MiB buffers; time grows with the slide file's size.
PREDICT_MEM_MB, PREDICT_RUNTIME = store_mb_resources(BASE_MB, 0.25, 10, 30)


def training_launcher():
    """The command that starts a training job, as words (a plain param, quoted with `:q`): ``torchrun`` with
    one process per GPU when `training.gpus_per_job` is above 1 (DistributedDataParallel), else the plain CLI."""
    gpus = config["training"]["gpus_per_job"]
    if gpus > 1:
        return ["torchrun", "--standalone", "--nproc-per-node", str(gpus), "-m", "wsidistill.cli"]
    return ["wsidistill"]


# `wsidistill predict`: the model and the new slides of config section `predict`.
PREDICT = config["predict"]


def _predict_model():
    """(output name, checkpoint path) of the model to apply: a path, or a model this workflow trains."""
    if PREDICT["path"]:
        path = Path(PREDICT["path"])
        return PREDICT.get("name") or path.parent.parent.name or path.stem, str(path)
    name, seed = PREDICT["model"], PREDICT["seed"]
    if name not in MODELS:
        stop(f"config error: predict.model {name!r} is not a model this config trains ({', '.join(MODELS)}); "
             "give one of those, or predict.path to a checkpoint")
    return f"{name}_seed{seed}", model_path(name, seed)


def _load_predict_sheet():
    """The sheet `predict.samples` (columns slide_id and path, optionally mpp and objective_power; paths
    relative to the sheet or absolute), validated as the training sheet is (ids, duplicates, files, numbers)."""
    if not PREDICT["samples"]:
        stop("config error: predict.samples is not set; give a sheet (TSV) with columns slide_id and path")
    try:
        return load_sample_sheet(PREDICT["samples"], required=("slide_id", "path"))
    except SampleSheetError as err:
        stop(f"predict sheet error: {err}")


if PREDICT["enabled"]:
    PREDICT_NAME, PREDICT_MODEL = _predict_model()
    PREDICT_SHEET = _load_predict_sheet()
else:
    PREDICT_NAME, PREDICT_MODEL, PREDICT_SHEET = "none", [], pd.DataFrame(columns=["slide_id", "path"])
#: slide_id -> slide path of the slides to predict
PREDICT_SLIDES = dict(zip(PREDICT_SHEET.slide_id, PREDICT_SHEET.path))


def predict_slide_flags(wildcards):
    """One predicted slide's mpp/objective_power overrides from the predict sheet (as slide_flags for extraction)."""
    return sheet_flags(PREDICT_SHEET.loc[wildcards.predicted], ("mpp", "objective_power"))


def predict_outputs():
    return [f"results/predict/{PREDICT_NAME}/summary.csv"] if PREDICT["enabled"] else []
