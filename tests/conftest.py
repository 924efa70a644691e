from pathlib import Path

import pytest

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
