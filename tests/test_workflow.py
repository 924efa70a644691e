"""End to end: the real Snakemake DAG on a tiny demo cohort, every distillation method."""

import copy
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
import zarr
from PIL import Image


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
    assert "| atplus |" in markdown and "| teacher |" in markdown and "10x" in markdown


def test_metrics_are_computed_on_the_test_slides_labelled_patches(tiny_run):
    workdir, _ = tiny_run
    sheet = pd.read_csv(workdir / "resources/demo/slides.tsv", sep="\t")
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
    store = zarr.open_group(str(next((workdir / "results/patches").glob("*.zarr"))))
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


def test_a_heatmap_per_test_slide_and_model(tiny_run):
    workdir, config = tiny_run
    sheet = pd.read_csv(workdir / "resources/demo/slides.tsv", sep="\t")
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
    agreement = pd.read_csv(workdir / "results/attention/agreement.csv")
    assert set(agreement.method) == set(config["methods"])
    assert agreement.mean_correlation.between(-1, 1).all()
    for cls in ("NC", "G3", "G4", "G5"):
        assert (workdir / f"results/attention/{cls}.png").stat().st_size > 5_000


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
    config["training"]["epochs"] = 8
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
    assert len(pd.read_csv(history)) == 8 and not checkpoint.exists()


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
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {row.split()[0]: int(row.split()[1]) for row in table.splitlines()[3:] if row.strip()}


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        # CE only: the overlay's `atplus: null` removes config.yaml's AT+ method, so no Teacher cache either.
        ("config/resolution.yaml", {"train_teacher": 3, "distill": 3 * 3}),
        ("config/benchmark.yaml", {"train_teacher": 3, "teacher_cache": 3, "distill": 10 * 3 * 3}),
    ],
)
def test_overlay_configs_plan_the_runs_they_describe(tmp_path, repo_root, run_snakemake, overlay, expected):
    (tmp_path / "config.yaml").write_text((repo_root / "config.yaml").read_text())
    result = run_snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "config.yaml"), str(repo_root / overlay))
    assert result.returncode == 0, result.stderr[-2000:]
    counts = _job_counts(result.stdout)
    assert {job: counts.get(job, 0) for job in ("train_teacher", "teacher_cache", "distill")} == {
        "teacher_cache": 0, **expected}
