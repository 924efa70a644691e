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
                factor = 64 // side
                exact = level0.reshape(side, factor, side, factor, 3).mean(axis=(1, 3))  # the area average
                error = np.abs(root[f"{name}/images"][i] - exact)
                assert error.max() <= 1.5 and error.mean() < 0.5, (name, error.max(), error.mean())


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


def blank_slide(path, width=512, height=384):
    """An Aperio slide of bare glass: no tissue anywhere."""
    from wsidistill.demo.formats import aperio_description, write_pyramid

    strips = [(y, np.full((min(256, height - y), width, 3), 242, np.uint8)) for y in range(0, height, 256)]
    write_pyramid(path, strips, width, height, description=aperio_description(width, height, 40, 0.25, path.stem),
                  mpp=0.25, aperio=True)
    return path


def test_slide_without_tissue_gives_an_empty_valid_store_and_a_warning(tmp_path):
    from wsidistill.patches.dataset import load_patches

    slide = blank_slide(tmp_path / "glass.svs")
    with pytest.warns(UserWarning, match="no tissue found"):
        summary = extract_slide(slide, tmp_path / "glass.zarr", SETTINGS, slide_id="glass",
                                summary_path=tmp_path / "glass.json", progress=False)
    assert summary["tissue_patches"] == 0
    assert any("no tissue found" in w for w in json.loads((tmp_path / "glass.json").read_text())["warnings"])
    root = zarr.open_group(str(tmp_path / "glass.zarr"), mode="r")
    assert root["40x/images"].shape == (0, 64, 64, 3) and root["coords"].shape == (0, 2)
    assert len(load_patches([tmp_path / "glass.zarr"], [40, 5], labelled_only=False)) == 0


def test_native_20x_slide_skips_40x_with_a_warning_in_the_summary(tmp_path):
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=768, height=512, variant="svs20")
    with pytest.warns(UserWarning, match="40x requested.*native magnification is 20x"):
        summary = extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", progress=False)
    assert summary["skipped_magnifications"] == ["40x"] and summary["magnifications"] == ["20x", "10x", "5x"]
    assert any("40x requested" in w and "skipped" in w for w in summary["warnings"])
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert "40x" not in root and root["20x/images"].shape[1:] == (32, 32, 3)
    assert root.attrs["cell_level0"] == 32  # a 64 px field at 40x is 32 level-0 px of a 20x scan
    from wsidistill.patches.extract import MagnificationUnavailable

    strict = ExtractionSettings(**{**SETTINGS.__dict__, "on_missing_magnification": "error"})
    with pytest.raises(MagnificationUnavailable, match=r"demo000\.svs: 40x requested.*on_missing_magnification"):
        extract_slide(files["slide"], tmp_path / "strict.zarr", strict, slide_id="s", progress=False)
    assert not (tmp_path / "strict.zarr").exists()


def test_slide_without_metadata_extracts_with_a_sample_sheet_override(tmp_path):
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=768, height=512, variant="nometa")
    with pytest.raises(SlideReadError, match="neither microns per pixel nor objective power"):
        extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", progress=False)
    summary = extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", mpp=0.25, progress=False)
    assert summary["tissue_patches"] > 0
    attrs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs
    assert (attrs["mpp_source"], attrs["objective_power"], attrs["objective_power_source"]) == \
        ("sample sheet", 40, "derived from mpp (sample sheet)")


def test_user_tissue_mask_replaces_detection(demo_slide, tmp_path):
    import cv2

    mask = np.zeros((96, 128), np.uint8)  # 1/8 scale of the 1024x768 slide
    mask[:48, :64] = 255  # top-left quarter only
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    summary = extract_slide(demo_slide["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s",
                            tissue_mask=tmp_path / "mask.png", progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    coords = root["coords"][:]
    assert summary["tissue_patches"] == (384 // 64) * (512 // 64)  # every cell of the quarter, tissue or not
    assert (coords[:, 0] < 512).all() and (coords[:, 1] < 384).all()
    assert root.attrs["tissue_method"] == "user mask" and root["tissue_mask"].shape == root["thumbnail"].shape[:2]
    cv2.imwrite(str(tmp_path / "square.png"), np.full((100, 100), 255, np.uint8))
    from wsidistill.slides.annotations import AnnotationError

    with pytest.raises(AnnotationError, match=r"square\.png: the mask is 100x100 px but the slide is 1024x768"):
        extract_slide(demo_slide["slide"], tmp_path / "bad.zarr", SETTINGS, slide_id="s",
                      tissue_mask=tmp_path / "square.png", progress=False)
