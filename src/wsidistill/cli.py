"""``wsidistill <verb>``: every pipeline stage, runnable by hand or from a Snakemake rule.

Known input errors (``wsidistill.errors.InputError``: a corrupt slide, a bad
sample sheet, unmappable annotations, a stale Teacher cache) exit with status 1
and a one-line message naming the file and the fix, instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .config import config_default, flag_name, load_schema, section_defaults, section_schema
from .errors import InputError

#: Defaults of the config schema, the one place they are declared.
DEFAULT_CLASSES = config_default("classes")
DEFAULT_CLASS_MAP = config_default("annotation_classes")
_SCHEMA_TYPES = {"integer": int, "number": float, "string": str}


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err})") from err


def _add_config_key(parser, key: str, spec: dict) -> None:
    """Option ``--key`` for a config key of schema ``spec``: the schema's type, choices, default and description."""
    kwargs = {"default": spec.get("default"), "help": (spec.get("description") or "").replace("%", "%%") or None}
    kind = spec["type"] if isinstance(spec["type"], str) else next(t for t in spec["type"] if t != "null")  # nullable: left out
    if kind == "boolean":
        parser.add_argument(flag_name(key), action=argparse.BooleanOptionalAction, **kwargs)
    else:
        parser.add_argument(flag_name(key), type=_SCHEMA_TYPES[kind], choices=spec.get("enum"), **kwargs)


def _add_runtime_arguments(parser):
    schema = load_schema()["properties"]
    for key in ("device", "precision"):
        _add_config_key(parser, key, schema[key])


def _add_config_section(parser, section: str) -> None:
    """One option per key of config section ``section`` (:func:`_add_config_key`): the inverse of
    :func:`wsidistill.config.cli_flags`, which the workflow uses to call us."""
    for key, spec in section_schema(section).items():
        _add_config_key(parser, key, spec)


def _add_demo(sub):
    cohort = sub.add_parser("demo-cohort", help="write the synthetic demo cohort (slides, annotations, sample sheet)")
    cohort.add_argument("--out", required=True, type=Path)
    demo = section_defaults("demo")
    cohort.add_argument("--slides", type=int, default=demo["slides"])
    cohort.add_argument("--seed", type=int, default=demo["seed"])
    cohort.add_argument("--width", type=int)
    cohort.add_argument("--height", type=int)
    cohort.add_argument("--threads", type=int, default=1)
    _add_cohort_keys(cohort, ("cues", "val_patients", "test_patients"))

    slide = sub.add_parser("demo-slide", help="write one slide of the demo cohort")
    slide.add_argument("--out", required=True, type=Path)
    slide.add_argument("--slide-id", required=True)
    slide.add_argument("--slides", type=int, required=True)
    slide.add_argument("--seed", type=int, required=True)
    slide.add_argument("--width", type=int)
    slide.add_argument("--height", type=int)
    slide.add_argument("--threads", type=int, default=1)
    _add_cohort_keys(slide, ("cues", "val_patients", "test_patients"))

    mixed = sub.add_parser("demo-mixed", help="write the mixed real-world cohort (SVS, generic TIFF, OME-TIFF, DICOM, "
                           "PANDA mask, own class names, marker stroke, unannotated test slide), its sample sheet "
                           "and a config overlay (run: snakemake --configfile config.yaml OUT/config.yaml)")
    mixed.add_argument("--out", required=True, type=Path)
    mixed.add_argument("--seed", type=int, default=0)
    mixed.add_argument("--width", type=int)
    mixed.add_argument("--height", type=int)

    sheet = sub.add_parser("demo-sheet", help="write the demo cohort's sample sheet")
    sheet.add_argument("--out", required=True, type=Path, help="the cohort directory")
    sheet.add_argument("--sheet", required=True, type=Path)
    sheet.add_argument("--slides", type=int, required=True)
    sheet.add_argument("--seed", type=int, required=True)
    sheet.add_argument("--threads", type=int, default=1)
    _add_cohort_keys(sheet, ("val_patients", "test_patients"))


def _add_cohort_keys(parser, keys) -> None:
    """Options for the `demo` config keys that shape the cohort (cue mode, split sizes), from the schema."""
    schema = section_schema("demo")
    for key in keys:
        _add_config_key(parser, key, schema[key])


def _add_extract(sub):
    p = sub.add_parser("extract", help="slide -> Zarr store of aligned multi-magnification patches")
    p.add_argument("slide", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--slide-id", help="defaults to the file name without extension")
    p.add_argument("--annotations", type=Path)
    p.add_argument("--label-mask", type=Path, help="PANDA-style label mask TIFF (instead of --annotations)")
    p.add_argument("--label-mask-classes", type=_json,
                   help='JSON: mask value -> class or null, default Radboud {"0": null, "1": "NC", "2": "NC", "3": "G3", ...}')
    p.add_argument("--label-mask-context", type=int, nargs="*", default=config_default("label_mask_context"),
                   help="label mask values that are tissue context (stroma), graded by the glands they hold; "
                        "none: every value votes by its area (default 1: Radboud stroma, Karolinska benign tissue)")
    p.add_argument("--tissue-mask", type=Path, help="PNG/JPEG/TIFF tissue mask (nonzero = tissue) replacing detection")
    p.add_argument("--summary", type=Path, help="extraction summary JSON")
    p.add_argument("--qc", type=Path, help="quality-control PNG: thumbnail, tissue mask and kept patches")
    p.add_argument("--magnifications", type=float, nargs="+", default=config_default("magnifications"))
    p.add_argument("--teacher-magnification", type=float, help="defaults to the highest magnification")
    _add_slide_overrides(p)
    p.add_argument("--classes", nargs="+", default=DEFAULT_CLASSES)
    p.add_argument("--class-map", type=_json, default=DEFAULT_CLASS_MAP,
                   help="JSON: annotation name -> class, or null to ignore that name")
    _add_config_section(p, "extraction")
    p.add_argument("--scheduler-address", help="dask distributed scheduler to use instead of local threads")
    p.add_argument("--require-labels", action="store_true",
                   help="fail when no patch gets a label (a training slide), instead of writing an unlabelled store")
    p.add_argument("--threads", type=int, default=1)


def _add_slide_overrides(p):
    """A sample sheet's per-slide ``mpp`` / ``objective_power`` columns, as extraction and predict take them."""
    p.add_argument("--mpp", type=float, help="override the slide's microns per pixel")
    p.add_argument("--objective-power", type=float, help="override the slide's objective power")


def _add_importers(sub):
    p = sub.add_parser("import-sicapv2", help="SICAPv2's patches and partitions -> one patch store per slide")
    p.add_argument("root", type=Path, help="the SICAPv2 folder (images/, partition/, wsi_labels.xlsx)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--magnifications", type=float, nargs="+", default=[10, 5, 2.5])
    p.add_argument("--slide", action="append", dest="slides", metavar="SLIDE",
                   help="import only this slide (repeatable; default: every partitioned slide, plus slides.tsv)")
    p.add_argument("--threads", type=int, default=1)


def _add_train(sub):
    for verb, help_text in (("train-teacher", "train the Teacher"), ("distill", "distil a Student from the Teacher")):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument("--train-stores", nargs="+", required=True)
        p.add_argument("--val-stores", nargs="+", required=True)
        p.add_argument("--magnification", type=float, required=True)
        p.add_argument("--classes", nargs="+", default=DEFAULT_CLASSES)
        _add_config_key(p, "arch", section_schema("student" if verb == "distill" else "teacher")["arch"])
        p.add_argument("--pretrained", type=Path, help="local checkpoint to start from (nothing is downloaded)")
        p.add_argument("--training", type=_json, default={}, help="JSON of the config's `training` section")
        p.add_argument("--training-loading", type=_json, default={},
                       help="JSON of `training` keys that choose how patches are loaded (merged into --training)")
        _add_runtime_arguments(p)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--history", required=True, type=Path)
        p.add_argument("--threads", type=int, default=1)
        if verb == "distill":
            p.add_argument("--teacher", required=True, type=Path)
            p.add_argument("--method", required=True)
            p.add_argument("--weights", type=_json, required=True, help='JSON of named loss terms, e.g. {"ce": 1}')
            student = section_schema("student")
            _add_config_key(p, "student_input", student["input"])
            _add_config_key(p, "student_grid", student["grid"])
            p.add_argument("--distill-options", type=_json, default=config_default("distill_options"))
            p.add_argument("--teacher-cache", type=Path, help="Teacher-target cache (`wsidistill teacher-cache`)")

    c = sub.add_parser("teacher-cache", help="the Teacher's targets for every training patch and D4 element, once")
    c.add_argument("--teacher", required=True, type=Path)
    c.add_argument("--train-stores", nargs="+", required=True)
    c.add_argument("--terms", nargs="+", required=True, help="union of the loss terms of every method")
    c.add_argument("--distill-options", type=_json, default=config_default("distill_options"),
                   help="JSON; only `at_p` reaches the Teacher")
    c.add_argument("--dtype", choices=["float32", "float16"], default="float16",
                   help="float16 (default) rounds the targets to a relative 4.9e-4 (docs/performance.md)")
    c.add_argument("--student-magnifications", type=float, nargs="*", default=[],
                   help="magnifications of the Students that will read the cache: its maps and features are "
                        "stored pooled to their grids (none: on the Teacher's grid, 4x the bytes at 20x)")
    student = section_schema("student")
    c.add_argument("--student-arch", choices=student["arch"]["enum"], default=student["arch"]["default"])
    _add_config_key(c, "student_input", student["input"])
    _add_config_key(c, "student_grid", student["grid"])
    c.add_argument("--batch-size", type=int, default=64)
    _add_config_key(c, "loader_workers", section_schema("training")["loader_workers"])
    _add_runtime_arguments(c)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--threads", type=int, default=1)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="whole-slide inference on test stores and metrics")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--stores", nargs="+", required=True)
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--confusion-csv", type=Path, help="confusion matrix counts (rows: true class)")
    p.add_argument("--confusion-png", type=Path, help="confusion matrix plot")
    p.add_argument("--batch-size", type=int, default=64)
    _add_runtime_arguments(p)
    p.add_argument("--threads", type=int, default=1)

    t = sub.add_parser("tables", help="comparison table and plot from metrics JSONs")
    t.add_argument("--metrics", nargs="+", required=True)
    t.add_argument("--csv", required=True, type=Path)
    t.add_argument("--md", required=True, type=Path)
    t.add_argument("--html", required=True, type=Path)
    t.add_argument("--plot", required=True, type=Path)
    t.add_argument("--baseline", default=config_default("baseline_method"))
    t.add_argument("--threads", type=int, default=1)

    k = sub.add_parser("claims", help="the paper's claims tested on the test slides, each with a verdict")
    k.add_argument("--metrics", nargs="+", required=True)
    k.add_argument("--csv", required=True, type=Path)
    k.add_argument("--md", required=True, type=Path)
    k.add_argument("--plot", required=True, type=Path)
    k.add_argument("--methods", nargs="+", help="methods whose claims are tested (default: atplus atplusl2)")
    k.add_argument("--against", nargs="+", help="comparators of the 'beats' claims (default: ce kd kdref fm)")
    k.add_argument("--margin", type=float, help="non-inferiority margin against the Teacher, in kappa (default "
                   "0.05); fix it before the run")

    c = sub.add_parser("cost", help="pixels, FLOPs and measured throughput per magnification and Student design")
    given = c.add_mutually_exclusive_group(required=True)
    given.add_argument("--models", nargs="+", help="NAME=PATH, the Teacher first")
    given.add_argument("--arch", help="no trained models: build this architecture untrained (with --patch-size)")
    c.add_argument("--patch-size", type=int, default=section_defaults("extraction")["patch_size"],
                   help="with --arch: px at the Teacher's magnification")
    c.add_argument("--magnifications", nargs="+", type=float, default=config_default("magnifications"),
                   help="with --arch: the Teacher's first")
    c.add_argument("--stores", nargs="*", default=[], help="test stores, for tissue patches per slide")
    c.add_argument("--csv", required=True, type=Path)
    c.add_argument("--md", required=True, type=Path)
    c.add_argument("--threads", type=int, default=1)

    h = sub.add_parser("heatmaps", help="Gleason heatmaps of several models on one slide, and their panel")
    h.add_argument("--store", required=True, type=Path)
    h.add_argument("--predictions", nargs="+", required=True, help="MODEL=PREDICTIONS.zarr")
    h.add_argument("--out", nargs="+", required=True, type=Path, help="one PNG per model, in the same order")
    h.add_argument("--panel", nargs="*", default=[], help="models shown beside the annotation, in order")
    h.add_argument("--panel-out", type=Path, help="PNG of the side-by-side panel")
    h.add_argument("--threads", type=int, default=1)


def _add_figures(sub):
    g = sub.add_parser("slide-grades", help="Gleason score and grade group per test slide and model")
    g.add_argument("--predictions", nargs="+", required=True, help="MODEL=PREDICTIONS.zarr")
    g.add_argument("--stores", nargs="+", required=True)
    g.add_argument("--val-predictions", nargs="+", help="MODEL=PREDICTIONS.zarr on the validation stores: the "
                   "minimum secondary/tertiary pattern area is chosen on these (default: 0, ISUP as written)")
    g.add_argument("--val-stores", nargs="+", default=[])
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--md", type=Path, help="Markdown summary per model")
    g.add_argument("--threads", type=int, default=1)


def _add_attention(sub):
    a = sub.add_parser("attention", help="Teacher-Student AT+ attention panels and agreement table")
    a.add_argument("--teacher", required=True, type=Path)
    a.add_argument("--students", nargs="+", required=True, help="NAME=MODEL.pt")
    a.add_argument("--stores", nargs="+", required=True)
    a.add_argument("--out-dir", required=True, type=Path)
    a.add_argument("--panel-students", nargs="+", default=[], help="Student names shown in the panels")
    a.add_argument("--samples-per-class", type=int, default=3)
    a.add_argument("--spike-md", type=Path, help="Markdown table of the fixed-spike share per model (CSV beside it)")
    a.add_argument("--threads", type=int, default=1)


def _add_predict(sub):
    p = sub.add_parser("predict", help="apply a trained model to new slides: probabilities, heatmap, grade, QuPath GeoJSON")
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="any slide OpenSlide or tiatoolbox reads")
    p.add_argument("--model", required=True, type=Path, help="model.pt written by train-teacher or distill")
    p.add_argument("--out", required=True, type=Path, help="folder for {slide_id}.zarr/.png/.geojson/.json")
    p.add_argument("--slide-id", nargs="+", dest="slide_ids", help="one per slide (default: the file names)")
    p.add_argument("--summary", type=Path, help="summary CSV over the slides (default OUT/summary.csv)")
    p.add_argument("--no-summary", action="store_true", help="write no summary CSV (the workflow's per-slide jobs)")
    # Tissue detection and blocks as extraction's (their defaults are the schema's `extraction` section).
    extraction = section_defaults("extraction")
    p.add_argument("--tissue-method", default=extraction["tissue_method"])
    p.add_argument("--min-tissue-fraction", type=float, default=extraction["min_tissue_fraction"])
    p.add_argument("--block-cells", type=int, default=extraction["block_cells"])
    _add_slide_overrides(p)
    predict = section_schema("predict")
    for key in ("min_tumour_fraction", "batch_size"):
        _add_config_key(p, key, predict[key])
    _add_runtime_arguments(p)
    p.add_argument("--threads", type=int, default=1)

    s = sub.add_parser("predict-summary", help="summary CSV over per-slide predict JSONs")
    s.add_argument("--slides", nargs="+", required=True, type=Path, help="{slide_id}.json files")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--threads", type=int, default=1)


def _inference_settings(args):
    from .device import InferenceSettings

    return InferenceSettings(batch_size=args.batch_size, device=args.device, precision=args.precision,
                             threads=args.threads)


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsidistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_demo(sub)
    _add_extract(sub)
    _add_importers(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_figures(sub)
    _add_attention(sub)
    _add_predict(sub)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.verb == "demo-cohort":
        from .demo import write_cohort
        from .demo.params import cue_params

        print(write_cohort(args.out, args.slides, args.seed, **_splits(args), params=cue_params(args.cues), **_size(args)))
    elif args.verb == "demo-slide":
        from .demo import plan_cohort, write_slide
        from .demo.params import cue_params

        plan = {s.slide_id: s for s in plan_cohort(args.slides, args.seed, **_splits(args))}
        if args.slide_id not in plan:
            raise ValueError(f"{args.slide_id} is not in a {args.slides}-slide demo cohort (ids: {sorted(plan)})")
        write_slide(plan[args.slide_id], args.out, params=cue_params(args.cues), **_size(args))
    elif args.verb == "demo-mixed":
        from .demo.mixed import write_mixed_cohort, write_overlay

        print(write_overlay(write_mixed_cohort(args.out, seed=args.seed, **_size(args))))
    elif args.verb == "demo-sheet":
        from .demo import plan_cohort, write_sample_sheet

        write_sample_sheet(plan_cohort(args.slides, args.seed, **_splits(args)), args.out, args.sheet)
    elif args.verb == "extract":
        from .patches.extract import EXTRACTION_DEFAULTS, ExtractionSettings, extract_slide

        settings = ExtractionSettings(
            classes=tuple(args.classes),
            class_map=args.class_map,
            magnifications=tuple(sorted(args.magnifications, reverse=True)),
            teacher_magnification=args.teacher_magnification or max(args.magnifications),
            **{key: getattr(args, key) for key in EXTRACTION_DEFAULTS},
            scheduler_address=args.scheduler_address,
            **({"label_mask_classes": {int(k): v for k, v in args.label_mask_classes.items()}}
               if args.label_mask_classes else {}),
            label_mask_context=tuple(args.label_mask_context),
        )
        summary = extract_slide(
            args.slide, args.out, settings, slide_id=args.slide_id or args.slide.stem, annotations=args.annotations,
            label_mask=args.label_mask, tissue_mask=args.tissue_mask,
            mpp=args.mpp, objective_power=args.objective_power, threads=args.threads, summary_path=args.summary,
            require_labels=args.require_labels,
        )
        if args.qc:
            from .report.heatmaps import extraction_qc

            extraction_qc(args.out, args.qc)
        print(json.dumps({k: summary[k] for k in ("slide_id", "tissue_patches", "patches_per_class",
                                                  "skipped_magnifications", "source_tiles")}))
    elif args.verb == "import-sicapv2":
        from .patches.sicapv2 import import_sicapv2, import_slides

        if args.slides:
            for summary in import_slides(args.root, args.out, args.slides, magnifications=tuple(args.magnifications),
                                         threads=args.threads):
                print(json.dumps({k: summary[k] for k in ("slide_id", "split", "tissue_patches", "patches_per_class")}))
        else:
            print(import_sicapv2(args.root, args.out, magnifications=tuple(args.magnifications), threads=args.threads))
    elif args.verb in ("train-teacher", "distill"):
        from .config import TEACHER
        from .training.loop import TrainSettings, train

        settings = TrainSettings(**{**args.training, **args.training_loading, "device": args.device,
                                    "precision": args.precision})
        is_student = args.verb == "distill"
        train(
            train_stores=args.train_stores, val_stores=args.val_stores, classes=args.classes,
            magnification=args.magnification, arch=args.arch,
            weights=args.weights if is_student else {"ce": 1.0}, settings=settings, seed=args.seed,
            out_model=args.out, out_history=args.history, threads=args.threads,
            teacher_path=args.teacher if is_student else None,
            student_input=args.student_input if is_student else "native",
            student_grid=args.student_grid if is_student else "native",
            distill_options=args.distill_options if is_student else None,
            method=args.method if is_student else TEACHER,
            teacher_cache=args.teacher_cache if is_student else None, pretrained=args.pretrained,
        )
    elif args.verb == "teacher-cache":
        from .training.teacher_cache import build_teacher_cache

        summary = build_teacher_cache(
            args.teacher, args.train_stores, args.out, args.terms, dtype=args.dtype,
            teacher_options={k: v for k, v in args.distill_options.items() if k == "at_p"},
            students=[{"arch": args.student_arch, "magnification": m, "grid": args.student_grid,
                       "upsampled": args.student_input == "upsampled"} for m in args.student_magnifications],
            settings=_inference_settings(args), loader_workers=args.loader_workers,
        )
        print(json.dumps(summary))
    elif args.verb == "evaluate":
        from .evaluation.evaluate import evaluate_model

        metrics = evaluate_model(args.model, args.stores, args.predictions, args.metrics, args.confusion_csv,
                                 args.confusion_png, settings=_inference_settings(args))
        if metrics["quadratic_kappa"] is None:  # every test slide unlabelled: predicted, nothing to score
            print(f"{args.model}: no labelled test patch on {metrics['test_slides']} test slides; predictions "
                  "written, no metrics")
        else:
            low, high = metrics["ci95"]["quadratic_kappa"] or (float("nan"), float("nan"))
            print(f"{args.model}: kappa {metrics['quadratic_kappa']:.3f} (95% CI over slides {low:.3f}-{high:.3f}), "
                  f"balanced accuracy {metrics['balanced_accuracy']:.3f} on {metrics['test_patches']} patches")
    elif args.verb == "tables":
        from .report.tables import write_comparison

        write_comparison(args.metrics, args.csv, args.md, args.html, args.plot, baseline=args.baseline)
    elif args.verb == "claims":
        from .report.claims import write_claims

        write_claims(args.metrics, args.csv, args.md, args.plot, methods=args.methods, comparators=args.against,
                     margin=args.margin)  # None: the module's defaults
    elif args.verb == "cost":
        from .report.cost import write_cost

        write_cost(_pairs(args.models) if args.models else None, args.stores, args.csv, args.md, threads=args.threads,
                   design=None if args.models else (args.arch, args.patch_size, args.magnifications))
    elif args.verb == "heatmaps":
        from .report.heatmaps import comparison_panel, slide_heatmap

        predictions = _pairs(args.predictions)
        if len(args.out) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions but {len(args.out)} --out paths")
        for (model, path), out in zip(predictions.items(), args.out):
            slide_heatmap(args.store, path, out, title=model)
        if args.panel_out:
            comparison_panel(args.store, {m: predictions[m] for m in args.panel}, args.panel_out)
    elif args.verb == "attention":
        import torch

        from .report.attention import attention_study

        torch.set_num_threads(args.threads)
        attention_study(args.teacher, _pairs(args.students), args.stores, args.out_dir,
                        panel_students=args.panel_students, samples_per_class=args.samples_per_class,
                        spike_md=args.spike_md)
    elif args.verb == "predict":
        from .predict import PredictSettings, predict_slides

        settings = PredictSettings(tissue_method=args.tissue_method, min_tissue_fraction=args.min_tissue_fraction,
                                   block_cells=args.block_cells, batch_size=args.batch_size, threads=args.threads)
        records = predict_slides(args.slides, args.model, args.out, slide_ids=args.slide_ids, settings=settings,
                                 device=args.device, precision=args.precision,
                                 summary=False if args.no_summary else args.summary,
                                 min_tumour_fraction=args.min_tumour_fraction, mpp=args.mpp,
                                 objective_power=args.objective_power)
        for record in records:
            print(json.dumps({k: record[k] for k in ("slide_id", "tissue_patches", "gleason_score", "grade_group")}))
    elif args.verb == "predict-summary":
        from .predict import summarise_slide_jsons

        summarise_slide_jsons(args.slides, args.out)
    elif args.verb == "slide-grades":
        from .report.slides import write_slide_grades

        write_slide_grades(_pairs(args.predictions), args.stores, args.out,
                           _pairs(args.val_predictions) if args.val_predictions else None, args.val_stores, args.md)


def _size(args) -> dict:
    return {k: v for k, v in (("width", args.width), ("height", args.height)) if v is not None}


def _splits(args) -> dict:
    return {"val_patients": args.val_patients, "test_patients": args.test_patients}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("always")
    try:
        run(args)
    except InputError as err:
        print(f"wsidistill {args.verb}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
