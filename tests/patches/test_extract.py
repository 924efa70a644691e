import json

import numpy as np
import openslide
import pytest
import zarr

from wsidistill.demo import plan_cohort, write_slide
from wsidistill.patches.extract import ExtractionSettings, area_downsample, extract_slide
from wsidistill.slides.reader import SlideReadError

SETTINGS = ExtractionSettings(
    classes=("NC", "G3", "G4", "G5"),
    class_map={"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"},
    magnifications=(40, 20, 10, 5),
    teacher_magnification=40,
    patch_size=64,
    block_cells=4,
)


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("slides")
    return write_slide(plan_cohort(6, 0)[0], out, width=1024, height=768)


@pytest.fixture(scope="module")
def store(demo_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "s.zarr"
    summary = extract_slide(demo_slide["slide"], out, SETTINGS, slide_id="s", annotations=demo_slide["annotations"],
                            threads=2, summary_path=out.with_suffix(".json"), progress=False)
    return out, summary


def test_store_layout_and_attributes(store):
    path, summary = store
    root = zarr.open_group(str(path), mode="r")
    n = root["coords"].shape[0]
    assert n == summary["tissue_patches"] > 0
    for name, side in (("40x", 64), ("20x", 32), ("10x", 16), ("5x", 8)):
        assert root[f"{name}/images"].shape == (n, side, side, 3)
        assert root[f"{name}/images"].dtype == np.uint8
    assert root["labels"].shape == (n,) and root["tissue_fraction"].shape == (n,)
    assert (root["tissue_fraction"][:] >= SETTINGS.min_tissue_fraction).all()
    attrs = root.attrs
    assert attrs["slide_id"] == "s" and attrs["classes"] == list(SETTINGS.classes)
    assert attrs["mpp"] == pytest.approx(0.25) and attrs["mpp_source"] == "metadata"
    assert attrs["patch_sizes"] == {"40x": 64, "20x": 32, "10x": 16, "5x": 8}
    assert json.loads(path.with_suffix(".json").read_text())["tissue_patches"] == n


def test_patches_are_the_same_tissue_at_every_magnification(store, demo_slide):
    root = zarr.open_group(str(store[0]), mode="r")
    rng = np.random.default_rng(0)
    coords = root["coords"][:]
    with openslide.OpenSlide(str(demo_slide["slide"])) as slide:
        for i in rng.choice(len(coords), size=min(8, len(coords)), replace=False):
            x, y = coords[i]
            level0 = np.asarray(slide.read_region((int(x), int(y)), 0, (64, 64)))[..., :3]
            np.testing.assert_array_equal(root["40x/images"][i], level0)
            for name, side in (("20x", 32), ("10x", 16), ("5x", 8)):
                expected = area_downsample(level0, (side, side)).astype(int)
                assert np.abs(root[f"{name}/images"][i].astype(int) - expected).max() <= 1


def test_labels_follow_the_annotation(store, demo_slide):
    root = zarr.open_group(str(store[0]), mode="r")
    fractions = root["class_fractions"][:]
    labels = root["labels"][:]
    labelled = labels >= 0
    assert labelled.any()
    np.testing.assert_array_equal(labels[labelled], fractions[labelled].argmax(1))
    assert (fractions[labelled].max(1) >= SETTINGS.min_label_fraction).all()
    assert (fractions[~labelled].max(1, initial=0) < SETTINGS.min_label_fraction).all()


def test_corrupt_slide_fails_with_its_name_and_leaves_the_existing_store(tmp_path, store):
    corrupt = tmp_path / "broken.svs"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    existing = store[0]
    before = sorted(p.name for p in existing.rglob("*"))
    with pytest.raises(SlideReadError, match="broken.svs"):
        extract_slide(corrupt, existing, SETTINGS, slide_id="s", progress=False)
    assert sorted(p.name for p in existing.rglob("*")) == before


def test_magnification_above_native_is_skipped_not_upsampled(demo_slide, tmp_path):
    settings = ExtractionSettings(**{**SETTINGS.__dict__, "magnifications": (80, 40, 20), "teacher_magnification": 80,
                                     "patch_size": 128})
    with pytest.warns(UserWarning, match="80x requested.*never upsampled"):
        summary = extract_slide(demo_slide["slide"], tmp_path / "s.zarr", settings, slide_id="s", progress=False)
    assert summary["skipped_magnifications"] == ["80x"]
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert "80x" not in root and root["40x/images"].shape[1] == 64


def test_area_downsample_is_the_block_mean():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = area_downsample(image, (2, 2))
    np.testing.assert_array_equal(out[0, 0], np.round(image[:2, :2].reshape(-1, 3).mean(0) + 1e-9).astype(np.uint8))
