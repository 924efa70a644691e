import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("NC", "G3", "G4", "G5")
CLASS_MAP = {"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory) -> dict[str, list[Path]]:
    """Patch stores of a small demo cohort (32 px at 40x, 40x and 10x), by split."""
    from wsidistill.demo import plan_cohort, write_slide
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    root = tmp_path_factory.mktemp("demo_stores")
    settings = ExtractionSettings(classes=CLASSES, class_map=CLASS_MAP, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=32)
    stores: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for slide in plan_cohort(6, 1):
        files = write_slide(slide, root, width=768, height=512)
        store = root / f"{slide.slide_id}.zarr"
        extract_slide(files["slide"], store, settings, slide_id=slide.slide_id, annotations=files["annotations"],
                      progress=False)
        stores[slide.split].append(store)
    return stores


#: Every loss term of both designs in the end-to-end run, in four methods: the CE baseline (no Teacher cache), the
#: paper's AT+ (with FM), KD alone (a settings-change test edits its weights) and every other term together. Each
#: Student is three jobs of ~5 s (distill, evaluate, validate), most of it process start-up, so the terms share a
#: method rather than each having its own; their losses combine in one Distiller as in
#: tests/distill/test_distiller.py (ALL_TERMS), and every term still reads its target from the Teacher cache.
ALL_TERMS_METHODS = {
    "ce": {"ce": 1},
    "atplus": {"ce": 1, "fm": 0.1, "atplus": 10},
    "kd": {"ce": 1, "kd": 1},
    "combined": {"ce": 1, "at": 100, "sr": 1, "gradcam": 10, "fma": 10, "mip": 10, "saliency": 10},
}


@pytest.fixture(scope="session")
def snakemake_command(repo_root):
    """Command line and environment that run the repository's workflow in ``workdir`` with its
    config.yaml, the venv's tools on PATH."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def command(workdir: Path, *args: str) -> tuple[list[str], dict[str, str]]:
        return [str(bin_dir / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory",
                str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args], env

    return command


@pytest.fixture(scope="session")
def run_snakemake(snakemake_command):
    def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
        command, env = snakemake_command(workdir, *args)
        return subprocess.run(command, env=env, capture_output=True, text=True)

    return run


#: Where tiny_run writes its cohort, relative to the workflow directory (config `samples` is cohort/slides.tsv).
COHORT_DIR = "cohort"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, repo_root, run_snakemake) -> tuple[Path, dict]:
    """The real workflow, end to end, with every distillation method, on a tiny mixed real-world cohort
    (issue 17: wsidistill.demo.mixed, one 768 x 512 slide per format and annotation kind, 32 px patches)."""
    from wsidistill.demo.mixed import OWN_ANNOTATION_CLASSES, write_mixed_cohort

    workdir = tmp_path_factory.mktemp("workflow")
    sheet = write_mixed_cohort(workdir / COHORT_DIR, seed=0, width=768, height=512)
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config["samples"] = str(sheet.relative_to(workdir))
    config["annotation_classes"].update(OWN_ANNOTATION_CLASSES)
    config["magnifications"] = [40, 10]
    config.setdefault("extraction", {})["patch_size"] = 32
    config["training"].update(epochs=1, batch_size=32)
    config["methods"] = ALL_TERMS_METHODS
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, config


@pytest.fixture
def kill_mid_write():
    """``kill_mid_write(argv, out)``: run the installed ``wsidistill`` with ``argv``, SIGKILL it as soon as
    a temporary of ``out`` appears (the write has begun), and return that temporary's path.

    Retries (at most 3 runs) only when the job finished before the poll saw its temporary.
    """
    import signal
    import time

    from wsidistill.io import temporaries

    command = str(Path(sys.executable).parent / "wsidistill")

    def run(argv, out):
        for _ in range(3):
            process = subprocess.Popen([command, *map(str, argv)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            while process.poll() is None:
                found = temporaries(out)
                if found:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return found[0]
                time.sleep(0.002)
            assert process.returncode == 0, f"wsidistill {argv[0]} failed before it was killed"
        pytest.fail(f"wsidistill {argv[0]} finished three times before its temporary could be seen")

    return run
