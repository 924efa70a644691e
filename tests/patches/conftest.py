import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import openslide
import pandas as pd
import pytest

from wsidistill.demo import plan_cohort, write_slide

OPENSLIDE_FIXTURES = ("small.svs", "unreadable.svs")


@pytest.fixture(scope="session")
def demo_slide(tmp_path_factory) -> dict[str, Path]:
    """One 1024 x 768 demo slide with its annotations, written once for every extraction test."""
    return write_slide(plan_cohort(6, 0)[0], tmp_path_factory.mktemp("demo_slide"), width=1024, height=768)


@pytest.fixture(scope="session")
def openslide_fixtures(request, tmp_path_factory) -> dict[str, Path]:
    """OpenSlide's own test slides, from the openslide-python sdist fetched once into pytest's cache.

    ``small.svs`` is a valid 16x16 Aperio slide (JPEG tiles with shared tables, RGB colourspace);
    ``unreadable.svs`` opens but its tile data is corrupt.  They are never committed; without
    pytest's cache (``-p no:cacheprovider``) they are fetched into this session's temporary folder.
    """
    version = openslide.__version__
    pytest_cache = getattr(request.config, "cache", None)
    name = f"openslide-python-{version}"
    cache = Path(pytest_cache.mkdir(name)) if pytest_cache else tmp_path_factory.mktemp(name)
    paths = {name: cache / name for name in OPENSLIDE_FIXTURES}
    if all(p.exists() for p in paths.values()):
        return paths
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"openslide-python=={version}",
         "-d", str(cache)],
        capture_output=True, text=True,
    )
    sdists = sorted(cache.glob("openslide_python-*.tar.gz"))
    if result.returncode or not sdists:
        pytest.fail(f"could not download the openslide-python {version} sdist for its test slides:\n{result.stderr}")
    with tarfile.open(sdists[-1]) as sdist:
        for member in sdist.getmembers():
            name = Path(member.name).name
            if name in paths and Path(member.name).parent.name == "fixtures":
                paths[name].write_bytes(sdist.extractfile(member).read())
    return paths


# slide -> (patient, the paper's split, one-hot class of each patch; "G4C" is cribriform G4)
SICAP_SLIDES = {
    "16B0001851": ("1", "train", ["NC", "G3", "G4C"]),
    "16B0003394": ("2", "val", ["G4", "G5"]),
    "17B0019433": ("3", "test", ["NC", "G5"]),
}
SICAP_SHEETS = {"train": "partition/Validation/Val1/Train.xlsx", "val": "partition/Validation/Val1/Test.xlsx",
                "test": "partition/Test/Test.xlsx"}
SICAP_COLUMNS = ["image_name", "NC", "G3", "G4", "G5", "G4C"]


def _patch_image(rng) -> np.ndarray:
    base = rng.integers(60, 250, (8, 8, 3)).astype(np.uint8)
    return cv2.resize(base, (512, 512), interpolation=cv2.INTER_CUBIC)


def _sheet_row(name: str, grade: str) -> dict:
    values = {c: int(c == grade) for c in SICAP_COLUMNS[1:]}
    values["G4"] |= values["G4C"]  # SICAPv2 marks cribriform patches as G4 too
    return {"image_name": name, **values}


@pytest.fixture
def sicap_slides() -> dict:
    """slide -> (patient, split, grade of each patch) of the ``sicap`` tree."""
    return SICAP_SLIDES


@pytest.fixture
def sicap(tmp_path):
    """A miniature SICAPv2 tree: the published file and sheet names, generated 512 px images."""
    root = tmp_path / "SICAPv2"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = {split: [] for split in SICAP_SHEETS}
    images = {}
    for slide, (_, split, grades) in SICAP_SLIDES.items():
        for i, grade in enumerate(grades):
            # Origins half a patch apart, overlapping as SICAPv2's do.
            name = f"{slide}_Block_Region_1_{i}_0_xini_{256 * i + 7}_yini_{256 * (i // 2) + 3}.jpg"
            images[name] = _patch_image(rng)
            (root / "images" / name).write_bytes(imagecodecs.jpeg8_encode(images[name], level=95))
            rows[split].append(_sheet_row(name, grade))
    for split, relative in SICAP_SHEETS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows[split], columns=SICAP_COLUMNS).to_excel(root / relative, index=False)
    pd.DataFrame(rows["train"] + rows["val"], columns=SICAP_COLUMNS).to_excel(root / "partition/Test/Train.xlsx",
                                                                              index=False)
    pd.DataFrame({"slide_id": list(SICAP_SLIDES), "patient_id": [int(p) for p, _, _ in SICAP_SLIDES.values()],
                  "Gleason_primary": [3, 4, 5], "Gleason_secondary": [4, 5, 3]}).to_excel(
        root / "wsi_labels.xlsx", index=False)
    return root, images
