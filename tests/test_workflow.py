"""End to end: the real Snakemake DAG on a tiny mixed real-world cohort (tests/test_cohort.py), every distillation
method."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
import zarr
from PIL import Image

from wsidistill.demo.mixed import KINDS
from wsidistill.evaluation.grading import MIN_PATTERN_FRACTIONS
from wsidistill.report.claims import VERDICTS


def test_comparison_table_has_every_method_and_the_teacher(tiny_run):
    workdir, config = tiny_run
    table = pd.read_csv(workdir / "results/tables/comparison.csv")
    assert set(table.method) == {"teacher", *config["methods"]}
    assert set(table[table.method == "teacher"].magnification) == {40}
    assert set(table[table.method != "teacher"].magnification) == {10}
    assert table.kappa_mean.between(-1, 1).all() and table.balanced_accuracy_mean.between(0, 1).all()
    assert (table.kappa_pooled_ci_low <= table.kappa_pooled).all()
    assert (table.kappa_pooled <= table.kappa_pooled_ci_high).all()
    markdown = (workdir / "results/tables/comparison.md").read_text()
    rows = {line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("|")}
    assert {"atplus", "teacher"} <= rows and "10x" in markdown


def test_metrics_are_computed_on_the_test_slides_labelled_patches(tiny_run):
    workdir, config = tiny_run
    sheet = pd.read_csv(workdir / config["samples"], sep="\t")
    test_ids = set(sheet.slide_id[sheet.split == "test"])
    labelled = sum(int((zarr.open_group(str(workdir / f"results/patches/{s}.zarr"))["labels"][:] >= 0).sum())
                   for s in test_ids)
    metrics = json.loads((workdir / "results/metrics/atplus_10x/seed0.json").read_text())
    assert metrics["test_patches"] == labelled > 0
    assert set(metrics["per_patch"]["slide"]) <= test_ids
    assert metrics["magnification"] == 10 and metrics["method"] == "atplus"
    low, high = metrics["ci95"]["quadratic_kappa"]
    assert low <= metrics["quadratic_kappa"] <= high
    confusion = pd.read_csv(workdir / "results/metrics/atplus_10x/seed0_confusion.csv", index_col="true")
    assert list(confusion.index) == list(confusion.columns) == ["NC", "G3", "G4", "G5"]
    assert confusion.to_numpy().tolist() == metrics["confusion_matrix"]
    assert (workdir / "results/metrics/atplus_10x/seed0_confusion.png").stat().st_size > 5_000


def test_patch_stores_are_aligned_across_magnifications(tiny_run):
    workdir, _ = tiny_run
    store = zarr.open_group(str(workdir / "results/patches/svs.zarr"))
    n = store["coords"].shape[0]
    assert store["40x/images"].shape == (n, 32, 32, 3)
    assert store["10x/images"].shape == (n, 8, 8, 3)
    assert store.attrs["classes"] == ["NC", "G3", "G4", "G5"]
    assert store.attrs["objective_power"] == 40 and store.attrs["mpp"] == pytest.approx(0.25)


def test_students_see_native_low_resolution(tiny_run):
    import torch

    workdir, _ = tiny_run
    meta = torch.load(workdir / "results/models/atplus_10x/seed0/model.pt", weights_only=False)["meta"]
    assert meta["student_input"] == "native" and meta["input_magnification"] == 10


def test_every_loss_term_of_every_method_is_trained(tiny_run):
    """Each term's loss (e.g. every one of the combined method's seven terms) is logged, non-zero, and the
    training loss is their weighted sum: no term was dropped on the way from config to Distiller."""
    workdir, config = tiny_run
    for method, weights in config["methods"].items():
        history = pd.read_csv(workdir / f"results/models/{method}_10x/seed0/history.csv")
        terms = history[[f"train_{term}" for term in weights]]
        assert np.isfinite(terms.to_numpy()).all() and (terms.to_numpy() > 0).all(), method
        weighted = sum(weight * history[f"train_{term}"] for term, weight in weights.items())
        np.testing.assert_allclose(history.train_loss, weighted, rtol=1e-5, err_msg=method)


def test_a_heatmap_per_test_slide_and_model(tiny_run):
    workdir, config = tiny_run
    sheet = pd.read_csv(workdir / config["samples"], sep="\t")
    models = ["teacher_40x"] + [f"{m}_10x" for m in config["methods"]]
    for slide in sheet.slide_id[sheet.split == "test"]:
        for model in models:
            image = np.asarray(Image.open(workdir / f"results/heatmaps/{slide}/{model}_seed0.png"))
            assert image.shape[0] > 200 and image.shape[1] > 400
            assert image[..., :3].std() > 10  # a picture, not a blank canvas
        assert (workdir / f"results/heatmaps/{slide}/panel.png").stat().st_size > 10_000


def test_report_tables_cost_grades_and_attention(tiny_run):
    workdir, config = tiny_run
    cost = pd.read_csv(workdir / "results/tables/cost.csv")
    assert cost.model.tolist() == ["teacher_40x", "ce_10x", "ce_10x"]  # the Student's native and teacher grid designs
    assert cost.design.tolist() == ["Teacher", "native", "teacher"] and cost.trained.tolist() == [True, True, False]
    assert cost.pixel_ratio_vs_teacher.tolist() == [1, 16, 16]
    assert (cost.gflops_per_patch > 0).all() and (cost.cpu_patches_per_second > 0).all()
    grades = pd.read_csv(workdir / "results/tables/slides.csv")
    summary = grades[grades.slide_id == "ALL"]
    assert len(summary) == 1 + len(config["methods"])
    assert summary.grade_group_accuracy.between(0, 1).all()
    assert summary.min_pattern_fraction.isin(MIN_PATTERN_FRACTIONS).all()  # chosen on the validation slide
    assert (summary.min_pattern_fraction_source == "validation").all()
    assert (workdir / "results/tables/slides.md").exists()
    agreement = pd.read_csv(workdir / "results/attention/agreement.csv")
    assert set(agreement.method) == set(config["methods"])
    assert agreement.mean_correlation.between(-1, 1).all()
    spike = pd.read_csv(workdir / "results/tables/attention_spike.csv")
    assert spike.model.tolist()[0] == "teacher" and set(spike.method[1:]) == set(config["methods"])
    assert spike.spike_share.between(0, 1).all() and (workdir / "results/tables/attention_spike.md").exists()
    for cls in ("NC", "G3", "G4", "G5"):
        assert (workdir / f"results/attention/{cls}.png").stat().st_size > 5_000
    claims = pd.read_csv(workdir / "results/tables/claims.csv")  # AT+ at 10x against CE, KD and the Teacher
    assert list(zip(claims.method, claims.other)) == [("atplus", "ce"), ("atplus", "kd"), ("atplus", "teacher")]
    assert claims.verdict.isin(VERDICTS).all() and np.allclose(claims.delta, claims.kappa - claims.kappa_other)
    assert (workdir / "results/tables/claims.png").stat().st_size > 5_000


def test_the_demo_rules_write_the_synthetic_cohort_and_its_sheet(tmp_path, repo_root, run_snakemake):
    """tiny_run reads a sample sheet; this runs the demo's own rules (demo_slide, demo_sheet) on 6 small slides."""
    from wsidistill.slides.reader import Slide

    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["demo"].update(slides=6, seed=0, width=256, height=256)  # the schema's least cohort
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "resources/demo/slides.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    sheet = pd.read_csv(tmp_path / "resources/demo/slides.tsv", sep="\t")
    assert len(sheet) == 6 and set(sheet.split) == {"train", "val", "test"}
    for row in sheet.itertuples():
        with Slide(tmp_path / "resources/demo" / row.path) as slide:
            assert slide.info.dimensions == (256, 256) and slide.info.objective_power == 40
        assert json.loads((tmp_path / "resources/demo" / row.annotations).read_text())["features"]


def test_rerun_has_nothing_to_do(tiny_run, run_snakemake):
    workdir, _ = tiny_run
    result = run_snakemake(workdir, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_killed_training_job_resumes_from_its_checkpoint_when_snakemake_reruns(tiny_run, snakemake_command,
                                                                                  tmp_path):
    source, config = tiny_run
    workdir = tmp_path / "workflow"
    shutil.copytree(source, workdir, ignore=shutil.ignore_patterns(".snakemake"))
    config = copy.deepcopy(config)
    config["training"]["epochs"] = 4  # killed after 2, resumed for the rest
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/models/teacher_40x/seed0/model.pt"
    model = workdir / target
    history, checkpoint = model.with_name("history.csv"), model.with_name("checkpoint.pt")
    model.unlink()
    command, env = snakemake_command(workdir, "--rerun-incomplete", target)

    snakemake = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    try:
        while not (history.exists() and len(pd.read_csv(history)) >= 2):  # the stale 1-epoch history is removed first
            assert snakemake.poll() is None, "training finished before it could be killed"
            time.sleep(0.05)
        jobs = [process for process in psutil.Process(snakemake.pid).children(recursive=True)
                if "train-teacher" in " ".join(process.cmdline())]
        assert jobs
        for job in jobs:
            job.kill()
        assert snakemake.wait(timeout=120) != 0
    finally:
        if snakemake.poll() is None:
            os.killpg(snakemake.pid, signal.SIGKILL)
    assert checkpoint.exists() and not model.exists()
    epochs_done = torch.load(checkpoint, weights_only=False)["epoch"] + 1

    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    log = (workdir / "results/logs/train/teacher_40x/seed0.log").read_text()
    assert f"resuming {target} from epoch {epochs_done}" in log
    assert "epoch 0:" not in log
    assert len(pd.read_csv(history)) == 4 and not checkpoint.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(magnifications=[40, 20, 7]), "unknown magnification 7"),
        (lambda c: c["methods"].update(atplus={"ce": 1, "fm": 0.1, "atplsu": 10}), "atplsu"),
        (lambda c: c.update(baseline_method="ce_only"), "`baseline_method` 'ce_only'"),
        (lambda c: (c["demo"].update(enabled=False), c.update(samples="missing/slides.tsv")),
         "sample sheet missing/slides.tsv not found"),
        (lambda c: c["training"].update(epoch=3), "epoch"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, repo_root, run_snakemake, change, message):
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    change(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def _job_counts(output: str) -> dict[str, int]:
    if "Job stats:" not in output:  # "Nothing to be done"
        return {}
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {row.split()[0]: int(row.split()[1]) for row in table.splitlines()[3:] if row.strip()}


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        # CE only: the overlay's `atplus: null` removes config.yaml's AT+ method, so no Teacher cache either.
        ("config/resolution.yaml", {"train_teacher": 3, "distill": 3 * 3}),
        ("config/benchmark.yaml", {"train_teacher": 3, "teacher_cache": 3, "distill": 12 * 3 * 3}),
    ],
)
def test_overlay_configs_plan_the_runs_they_describe(tmp_path, repo_root, run_snakemake, overlay, expected):
    (tmp_path / "config.yaml").write_text((repo_root / "config.yaml").read_text())
    result = run_snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "config.yaml"), str(repo_root / overlay))
    assert result.returncode == 0, result.stderr[-2000:]
    counts = _job_counts(result.stdout)
    assert {job: counts.get(job, 0) for job in ("train_teacher", "teacher_cache", "distill")} == {
        "teacher_cache": 0, **expected}


# --- Ids are data, settings are tracked, the pre-flight stops before any job (issue 15) -----------------------

IMAGING_STACK = ("cv2", "openslide", "tiatoolbox")


def _sheet(workdir, rows, extra_columns=()):
    header = ["slide_id", "path", "annotations", "patient_id", "split", *extra_columns]
    (workdir / "slides.tsv").write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def _sheet_config(repo_root, workdir, **changes):
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config.update(samples=str(workdir / "slides.tsv"), magnifications=[40, 10], **changes)
    config.setdefault("extraction", {})["patch_size"] = 32
    return config


@pytest.fixture(scope="module")
def sheet_cohort(tmp_path_factory, repo_root, snakemake_command):
    """Three tiny slides in a user sample sheet, ids with regex characters, their stores extracted for real."""
    from wsidistill.demo import plan_cohort, write_slide

    workdir = tmp_path_factory.mktemp("sheet_cohort")
    plan = {s.split: s for s in plan_cohort(6, 0)}
    rows = []
    for slide_id, split in (("s.1", "train"), ("s-2", "val"), ("s_3", "test")):
        files = write_slide(plan[split], workdir / "slides", width=512, height=384)
        rows.append((slide_id, files["slide"], files["annotations"], f"P{split}", split))
    _sheet(workdir, rows)
    (workdir / "config.yaml").write_text(yaml.safe_dump(_sheet_config(repo_root, workdir)))
    targets = [f"results/patches/{row[0]}.zarr" for row in rows]
    command, env = snakemake_command(workdir, *targets)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, rows, targets


def _planned(run_snakemake, workdir, config, *args):
    """Job counts of `snakemake -n` with ``config`` written over the workdir's config.yaml."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    return _job_counts(result.stdout)


def test_ids_with_regex_characters_extract_and_constraints_are_escaped(sheet_cohort, run_snakemake):
    workdir, rows, _ = sheet_cohort
    for slide_id, *_ in rows:
        assert zarr.open_group(str(workdir / f"results/patches/{slide_id}.zarr"), mode="r").attrs["slide_id"] == slide_id
    # "s.1" must not match "sX1": an unescaped constraint would plan a job for a slide the sheet lacks.
    result = run_snakemake(workdir, "-n", "results/patches/sX1.zarr")
    assert result.returncode != 0 and "MissingRuleException" in result.stdout + result.stderr


def test_each_setting_that_shapes_a_store_reruns_exactly_its_jobs(sheet_cohort, repo_root, run_snakemake):
    """Extraction keys, the class mapping and one slide's sheet override: each change plans its extract jobs;
    label-mask settings plan none for slides annotated in GeoJSON."""
    workdir, rows, targets = sheet_cohort
    base = _sheet_config(repo_root, workdir)
    try:
        assert _planned(run_snakemake, workdir, base, *targets) == {}
        changed = copy.deepcopy(base)
        changed.setdefault("extraction", {})["patch_size"] = 64
        assert _planned(run_snakemake, workdir, changed, *targets)["extract"] == 3
        changed = copy.deepcopy(base)
        changed.setdefault("extraction", {})["min_tissue_fraction"] = 0.3
        assert _planned(run_snakemake, workdir, changed, *targets)["extract"] == 3
        changed = copy.deepcopy(base)
        changed["annotation_classes"]["Gleason 5"] = "G4"
        assert _planned(run_snakemake, workdir, changed, *targets)["extract"] == 3
        # one slide's sheet override plans that slide alone, though how label masks are read changes at the same
        # time: those settings shape no store labelled from GeoJSON
        changed = copy.deepcopy(base)
        changed.setdefault("extraction", {})["min_epithelium_fraction"] = 0.3
        changed["label_mask_context"] = []
        (workdir / "config.yaml").write_text(yaml.safe_dump(changed))
        _sheet(workdir, [(*row, "0.25" if row[0] == "s-2" else "") for row in rows], extra_columns=["mpp"])
        result = run_snakemake(workdir, "-n", *targets)
        planned = [line.split()[1].rstrip(",") for line in result.stdout.splitlines() if line.strip().startswith("output:")]
        assert _job_counts(result.stdout)["extract"] == 1 and planned == ["results/patches/s-2.zarr"]
    finally:
        _sheet(workdir, rows)
        (workdir / "config.yaml").write_text(yaml.safe_dump(base))


def test_the_teacher_cache_is_stored_pooled_to_the_students_grids(tiny_run):
    """Rule teacher_cache passes the Students: 32 px patches at 40x, so a 10x Student reads 8 px on a 4 x 4 grid,
    and the saliency maps (input grid) are stored on 8 x 8, not the Teacher's 32 x 32 (16x fewer bytes)."""
    workdir, config = tiny_run
    (path,) = (workdir / "results/cache").glob("*/seed*.zarr")
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert attrs["students"] == [{"grid": [4, 4], "input": [8, 8]}]
    assert attrs["teacher_sides"]["saliency"] == [32, 32] and attrs["sides"]["saliency"] == [8, 8]
    assert attrs["sides"]["features"] == [4, 4]


#: Job counts of tiny_run's own size: one job per Student (method), and per model (the Students and the Teacher).
STUDENTS, MODELS = "every Student", "every model"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.setdefault("extraction", {}).update(patch_size=64),
         {"extract": len(KINDS), "train_teacher": 1, "teacher_cache": 1, "distill": STUDENTS, "evaluate": MODELS}),
        (lambda c: c["training"].update(lr=0.01),
         {"extract": 0, "train_teacher": 1, "teacher_cache": 1, "distill": STUDENTS, "evaluate": MODELS}),
        (lambda c: c["distill_options"].update(kd_temperature=2.0),
         {"extract": 0, "train_teacher": 0, "teacher_cache": 1, "distill": STUDENTS, "evaluate": STUDENTS}),
        # the cache is stored on the Students' grids (rule teacher_cache passes them): another grid rebuilds it
        (lambda c: c.setdefault("student", {}).update(grid="teacher"),
         {"extract": 0, "train_teacher": 0, "teacher_cache": 1, "distill": STUDENTS, "evaluate": STUDENTS}),
        (lambda c: c["methods"].update(kd={"ce": 1, "kd": 2}),
         {"extract": 0, "train_teacher": 0, "teacher_cache": 0, "distill": 1, "evaluate": 1}),
        # How patches are loaded (streamed or in memory) does not change the weights: nothing retrains.
        (lambda c: c["training"].update(loader_workers=0, memory_budget_mb=1),
         {"extract": 0, "train_teacher": 0, "teacher_cache": 0, "distill": 0, "evaluate": 0}),
    ],
)
def test_a_settings_change_after_a_run_plans_the_affected_jobs_and_everything_downstream(
        tiny_run, snakemake_command, tmp_path, change, expected):
    workdir, config = tiny_run
    assert len(config["methods"]) >= 3
    expected = {job: {STUDENTS: len(config["methods"]), MODELS: len(config["methods"]) + 1}.get(n, n)
                for job, n in expected.items()}
    changed = copy.deepcopy(config)
    change(changed)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(changed))
    command, env = snakemake_command(workdir, "-n")
    command[command.index("--configfile") + 1] = str(tmp_path / "config.yaml")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    assert {job: counts.get(job, 0) for job in expected} == expected
    assert counts.get("tables", 0) == (1 if any(expected.values()) else 0)  # and the tables downstream


@pytest.mark.parametrize("source", ["demo", "sheet"])
def test_a_dry_run_does_not_import_the_imaging_stack(tmp_path, repo_root, snakemake_command, source):
    """`python -X importtime` lists every module the dry run imports: no OpenCV, OpenSlide or tiatoolbox."""
    from wsidistill.demo import plan_cohort, write_slide

    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    if source == "sheet":
        rows = []
        for slide in plan_cohort(6, 0)[:6]:
            files = write_slide(slide, tmp_path / "slides", width=256, height=256)
            rows.append((slide.slide_id, files["slide"], files["annotations"], slide.patient_id, slide.split))
        _sheet(tmp_path, rows)
        config = _sheet_config(repo_root, tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command, env = snakemake_command(tmp_path, "-n")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", *command[1:]], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "import time:" in line}
    assert "snakemake" in imported and "wsidistill" in imported
    assert not imported & set(IMAGING_STACK)
    # nor what took 4 of a dry run's 6 s: torchvision (wsidistill.models), and the Lark grammars of jsonschema's
    # optional IRI checker (rfc3987_syntax: its blocked import is still listed, so its dependency lark is checked);
    # nor PyTorch, 2.2 s of the 5 s left (the config check reads the term registry, whose losses load on first use)
    assert "jsonschema" in imported and not imported & {"torchvision", "lark", "torch"}


BAD_IDS = ["a b", "x;touch PWNED", "$(touch PWNED2)", "c|d", "e(1)*", "-rf", ".hidden", "'q'"]


def test_ids_that_are_not_data_stop_the_run_naming_their_lines(tmp_path, repo_root, run_snakemake):
    (tmp_path / "slide.svs").write_bytes(b"x")
    rows = [(slide_id, tmp_path / "slide.svs", "", f"P{i}", ("train", "val", "test")[i % 3])
            for i, slide_id in enumerate(["ok.1", *BAD_IDS])]
    _sheet(tmp_path, rows)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_sheet_config(repo_root, tmp_path)))
    for args in (["-n"], []):  # a dry run, then a real run: neither gets past the sheet
        result = run_snakemake(tmp_path, *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("sample sheet error: ") and str(tmp_path / "slides.tsv") in error
        for line, slide_id in enumerate(BAD_IDS, start=3):
            assert f"{slide_id!r} (line {line})" in error
        assert "'ok.1'" not in error
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert not list(tmp_path.glob("**/PWNED*")) and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["methods"].update(atplus={"ce": 0, "fm": 0, "atplus": 0}), "`methods.atplus`: every weight is 0"),
        (lambda c: c.update(distill_options={"kd_temprature": 2}), "`distill_options` has unknown key(s) ['kd_temprature']"),
        (lambda c: c.update(device="gpu"), "config key `device`: 'gpu' does not match"),
        (lambda c: c.update(panel_methods=["nosuch"]), "`panel_methods` names ['nosuch']"),
        (lambda c: c["training"].update(lr="fast"), "config key `training.lr`: 'fast' is not of type 'number'"),
        (lambda c: c.setdefault("extraction", {}).update(tissue_method="otsu"), "config key `extraction.tissue_method`"),
    ],
)
def test_the_preflight_stops_before_any_job_in_one_line(tmp_path, repo_root, run_snakemake, change, message):
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    change(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_an_empty_sheet_is_one_line_naming_the_file(tmp_path, repo_root, run_snakemake):
    (tmp_path / "slides.tsv").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_sheet_config(repo_root, tmp_path)))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"sample sheet error: sample sheet {tmp_path / 'slides.tsv'} is empty; it needs a header line "
        "(slide_id, path, patient_id, split) and one row per slide")
