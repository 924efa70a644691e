"""Bad input through the command line and the workflow: a clear error naming the file, nothing else lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

from wsidistill.cli import main
from wsidistill.demo import plan_cohort, write_slide

SMALL = ["--magnifications", "20", "10", "5", "--patch-size", "16", "--min-tissue-fraction", "0"]


def test_openslide_small_svs_extracts(openslide_fixtures, tmp_path, capsys):
    out = tmp_path / "small.zarr"
    assert main(["extract", str(openslide_fixtures["small.svs"]), "--out", str(out), *SMALL]) == 0
    root = zarr.open_group(str(out), mode="r")
    assert root["20x/images"].shape == (1, 16, 16, 3) and root["5x/images"].shape == (1, 4, 4, 3)
    assert root.attrs["objective_power"] == 20 and root.attrs["slide"]["pixel_reader"] == "tiff tiles"
    assert json.loads(capsys.readouterr().out)["tissue_patches"] == 1


@pytest.mark.parametrize(("flags", "kept"), [([], "40x"), (["--no-reuse-source-tiles"], None)])
def test_whole_tile_patches_keep_the_slides_jpeg_unless_told_not_to(tmp_path, capsys, flags, kept):
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=1024, height=768)
    out = tmp_path / "s.zarr"
    assert main(["extract", str(files["slide"]), "--out", str(out), "--patch-size", "256", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["source_tiles"] == kept
    assert zarr.open_group(str(out), mode="r").attrs["source_tiles"] == kept


def test_unreadable_slide_exits_1_naming_the_file_and_keeps_the_existing_store(openslide_fixtures, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert main(["extract", str(openslide_fixtures["small.svs"]), "--out", str(out), *SMALL]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["extract", str(openslide_fixtures["unreadable.svs"]), "--out", str(out), *SMALL]) == 1
    error = capsys.readouterr().err
    assert error.startswith("wsidistill extract: error: ") and "unreadable.svs" in error and "corrupt" in error
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporary left behind


def test_the_installed_command_exits_non_zero_with_the_message_on_stderr(openslide_fixtures, tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "wsidistill"), "extract", str(openslide_fixtures["unreadable.svs"]),
         "--out", str(tmp_path / "s.zarr"), *SMALL],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "unreadable.svs" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def snakemake(workdir: Path, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(repo_root / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def cohort(openslide_fixtures, tmp_path_factory, repo_root):
    """A user sample sheet: a demo slide, OpenSlide's small.svs and its corrupt unreadable.svs."""
    workdir = tmp_path_factory.mktemp("cohort")
    files = write_slide(plan_cohort(6, 0)[0], workdir / "slides", width=512, height=384)
    rows = [("good", files["slide"], files["annotations"], "P1", "train"),
            ("small", openslide_fixtures["small.svs"], "", "P2", "val"),
            ("unreadable", openslide_fixtures["unreadable.svs"], "", "P3", "test")]
    (workdir / "slides.tsv").write_text("slide_id\tpath\tannotations\tpatient_id\tsplit\n"
                                        + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config["samples"] = str(workdir / "slides.tsv")
    # small.svs and unreadable.svs are 20x scans: a 20x Teacher reads them (a 40x one stops their jobs, kind 7)
    config["magnifications"], config["teacher"]["magnification"] = [20, 10, 5], 20
    config.setdefault("extraction", {}).update(patch_size=16, min_tissue_fraction=0)  # small.svs: one 16 px cell
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir, files


def test_unknown_annotation_class_stops_the_workflow_before_any_job(cohort, repo_root):
    workdir, files = cohort
    original = files["annotations"].read_text()
    collection = json.loads(original)
    collection["features"][0]["properties"]["classification"]["name"] = "Tumour"
    files["annotations"].write_text(json.dumps(collection))
    try:
        result = snakemake(workdir, repo_root, "-n", "results/patches/good.json")
    finally:
        files["annotations"].write_text(original)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "demo000.geojson: ['Tumour']" in output and "annotation_classes" in output, output[-2000:]
    assert not (workdir / "results").exists()


def test_corrupt_slide_fails_its_own_job_and_keep_going_finishes_the_others(cohort, repo_root):
    workdir, _ = cohort
    targets = [f"results/patches/{s}.json" for s in ("good", "unreadable")]
    result = snakemake(workdir, repo_root, "--keep-going", *targets)
    assert result.returncode != 0
    assert zarr.open_group(str(workdir / "results/patches/good.zarr"), mode="r")["coords"].shape[0] > 0
    assert json.loads((workdir / "results/patches/good.json").read_text())["tissue_patches"] > 0
    assert not (workdir / "results/patches/unreadable.zarr").exists()
    log = (workdir / "results/logs/extract/unreadable.log").read_text()
    assert "error: " in log and "unreadable.svs" in log and "cannot be decoded" in log
