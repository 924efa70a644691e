"""The workflow's SICAPv2 mode and config/paper_sicapv2.yaml on a miniature fake SICAPv2 tree (``sicap``)."""

import re
import shutil
from collections import Counter

import pytest
import yaml
import zarr

PAPER = "config/paper_sicapv2.yaml"


def job_stats(output: str) -> Counter:
    """Snakemake's "Job stats" table: rule -> number of jobs."""
    table = re.search(r"Job stats:\njob +count\n[- ]+\n(.*?)\ntotal +\d+", output, re.S)
    assert table, output[-3000:]
    return Counter({rule: int(n) for rule, n in (line.split() for line in table.group(1).splitlines())})


@pytest.fixture
def paper_run(tmp_path, repo_root, run_snakemake):
    """Run the workflow as the paper config's header says: config.yaml, the overlay, `--config sicapv2=...`."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(repo_root / "config.yaml", workdir / "config.yaml")

    def run(root, *args, overlay=None):
        extra = ["--configfile", str(workdir / "config.yaml"), str(repo_root / PAPER)]
        if overlay is not None:
            (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
            extra.append(str(workdir / "overlay.yaml"))
        # targets first: --configfile and --config take every word after them
        return run_snakemake(workdir, *args, *extra, "--config", f"sicapv2={{root: {root}}}")

    return workdir, run


def test_dry_run_plans_the_papers_jobs(sicap, sicap_slides, paper_run):
    root, _ = sicap
    workdir, run = paper_run
    result = run(root, "-n", "-p")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = job_stats(output)
    assert jobs["import_sicapv2"] == len(sicap_slides) == 3
    assert "extract" not in jobs and "demo_slide" not in jobs and "demo_sheet" not in jobs
    assert jobs["train_teacher"] == 3  # seeds 22, 32, 43
    assert jobs["distill"] == 5 * 3 * 3  # ce, kd, fm, sr, atplus x 5, 2.5, 1.25x x 3 seeds
    assert jobs["teacher_cache"] == 3 and jobs["evaluate"] == (1 + 15) * 3
    assert jobs["heatmaps"] == sum(split == "test" for _, split, _ in sicap_slides.values())
    for slide in sicap_slides:
        assert f"--slide {slide} --magnifications 10 5 2.5 1.25" in output
    for seed in (22, 32, 43):
        assert f"results/models/teacher_10x/seed{seed}/model.pt" in output
        for mag in ("5x", "2.5x", "1.25x"):
            assert f"results/models/atplus_{mag}/seed{seed}/model.pt" in output
    assert "--arch vgg16" in output and "--student-input upsampled" in output
    assert '"lr": 0.0001' in output and '"kd_ref": 1' in output
    assert not (workdir / "results").exists()


def test_the_import_rule_writes_the_stores_at_the_configs_magnifications(sicap, sicap_slides, paper_run):
    root, _ = sicap
    workdir, run = paper_run
    targets = [f"results/patches/{slide}.zarr" for slide in sicap_slides]
    result = run(root, *targets)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for slide, (patient, split, grades) in sicap_slides.items():
        store = zarr.open_group(str(workdir / f"results/patches/{slide}.zarr"), mode="r")
        assert store.attrs["magnifications"] == ["10x", "5x", "2.5x", "1.25x"]
        for name, side in (("10x", 512), ("5x", 256), ("2.5x", 128), ("1.25x", 64)):
            assert store[f"{name}/images"].shape == (len(grades), side, side, 3)
        assert store.attrs["split"] == split and store.attrs["patient_id"] == patient
        assert (workdir / f"results/patches/{slide}.json").exists()
        assert (workdir / f"results/logs/import_sicapv2/{slide}.log").exists()
        assert (workdir / f"results/benchmarks/import_sicapv2/{slide}.tsv").exists()
    assert not (workdir / "results/patches/slides.tsv").exists()
    rerun = run(root, "-n", *targets)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: root.with_name("nowhere"), "nowhere: no images/ folder"),
        (lambda root: (root / "partition/Test/Test.xlsx").unlink() or root,
         "partition/Test/Test.xlsx: partition sheet not found"),
    ],
)
def test_a_bad_root_stops_before_any_job(sicap, paper_run, breakage, message):
    root, _ = sicap
    workdir, run = paper_run
    result = run(breakage(root), "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SICAPv2 error" in output and message in output
    assert not (workdir / "results").exists()


def test_settings_sicapv2_cannot_provide_stop_before_any_job(sicap, paper_run):
    root, _ = sicap
    workdir, run = paper_run
    result = run(root, "-n", overlay={"extraction": {"patch_size": 256}})
    assert result.returncode != 0
    assert "`extraction.patch_size` is 256, but SICAPv2's patches are 512 px" in result.stdout + result.stderr


def test_a_pretrained_checkpoint_reaches_training(sicap, paper_run, tmp_path):
    root, _ = sicap
    workdir, run = paper_run
    checkpoint = tmp_path / "vgg16_imagenet.pt"
    overlay = {"teacher": {"pretrained": str(checkpoint)}, "student": {"pretrained": str(checkpoint)}}
    missing = run(root, "-n", overlay=overlay)
    assert missing.returncode != 0 and str(checkpoint) in missing.stdout + missing.stderr
    checkpoint.write_bytes(b"")
    result = run(root, "-n", "-p", overlay=overlay)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count(f"--pretrained {checkpoint}") == 3 + 45  # every Teacher and every Student
