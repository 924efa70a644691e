import json

import cv2
import numpy as np
import openslide
import pytest
import zarr

from wsidistill.cli import main
from wsidistill.demo import plan_cohort, write_slide
from wsidistill.errors import UnlabelledSlideError
from wsidistill.patches.extract import (
    ExtractionSettings,
    MagnificationUnavailable,
    NoTissueError,
    area_downsample,
    extract_slide,
)
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


def test_a_student_magnification_above_native_is_skipped_not_upsampled(demo_slide, tmp_path):
    """Standalone `wsidistill extract` with a Teacher below the highest magnification: 80x is skipped."""
    settings = ExtractionSettings(**{**SETTINGS.__dict__, "magnifications": (80, 40, 20), "teacher_magnification": 40,
                                     "patch_size": 64})
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


def test_a_slide_without_tissue_stops_its_extraction_naming_it_and_the_choices(tmp_path, capsys):
    """Issue 17, kind 7: an empty store would stop the run later, in grading; whatever its split."""
    slide = blank_slide(tmp_path / "glass.svs")
    with pytest.raises(NoTissueError, match=r"glass\.svs: no tissue found \(hsv-otsu, no 64 px cell at least 0\.5"):
        extract_slide(slide, tmp_path / "glass.zarr", SETTINGS, slide_id="glass", progress=False)
    assert not (tmp_path / "glass.zarr").exists()
    status = main(["extract", str(slide), "--out", str(tmp_path / "cli.zarr"), "--patch-size", "64"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1 and "Traceback" not in error[0]
    for choice in ("`extraction.min_tissue_fraction`", "`extraction.tissue_method`", "`tissue_mask` sheet column",
                   "remove the slide from the sample sheet"):
        assert choice in error[0]
    # The choice works: a tissue mask (here the whole slide) gives the slide its patches.
    cv2.imwrite(str(tmp_path / "mask.png"), np.full((48, 64), 255, np.uint8))
    summary = extract_slide(slide, tmp_path / "masked.zarr", SETTINGS, slide_id="glass", tissue_mask=tmp_path / "mask.png",
                            progress=False)
    assert summary["tissue_patches"] == (512 // 64) * (384 // 64)


def test_a_slide_whose_tissue_lies_only_in_cells_under_the_threshold_says_how_much_the_best_holds(tmp_path):
    """Issue 17, kind 7: tissue specks, each a quarter of a 128 px cell, are not "no tissue"."""
    from wsidistill.demo.formats import aperio_description, write_pyramid

    image = np.full((512, 768, 3), 242, np.uint8)
    for y in (64, 320):
        for x in (64, 320, 576):
            cv2.circle(image, (x, y), 36, (190, 90, 160), -1)  # pi 36^2 / 128^2 = 25% of its cell
    path = tmp_path / "specks.svs"
    write_pyramid(path, [(0, image)], 768, 512, description=aperio_description(768, 512, 40, 0.25, "specks"),
                  mpp=0.25, aperio=True)
    settings = ExtractionSettings(classes=("NC", "G3"), class_map={}, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=128)
    with pytest.raises(NoTissueError, match=r"specks\.svs: too little tissue for a patch \(hsv-otsu: the most covered "
                                            r"128 px cell holds 25% tissue, under `extraction.min_tissue_fraction` 0\.5"):
        extract_slide(path, tmp_path / "s.zarr", settings, slide_id="s", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_a_20x_slide_stops_its_extraction_below_the_teachers_40x(tmp_path, capsys):
    """Issue 17, kind 7: skipping 40x would let `train-teacher` fail later; the job names the slide and choices."""
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=768, height=512, variant="svs20")
    with pytest.raises(MagnificationUnavailable) as caught:
        extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", progress=False)
    message = str(caught.value)
    assert message.startswith(f"{files['slide']}: the Teacher reads 40x but the slide's native magnification is 20x")
    for choice in ("`objective_power` / `mpp`", "remove it from the sheet", "lower `teacher.magnification`"):
        assert choice in message
    assert not (tmp_path / "s.zarr").exists()
    assert main(["extract", str(files["slide"]), "--out", str(tmp_path / "s.zarr"), "--patch-size", "64"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"wsidistill extract: error: {message}"]
    # A 20x Teacher reads it: 40x, above the Teacher, is then skipped (on_missing_magnification: skip), not upsampled.
    study_20x = ExtractionSettings(**{**SETTINGS.__dict__, "teacher_magnification": 20, "patch_size": 32})
    with pytest.warns(UserWarning, match="40x requested.*native magnification is 20x"):
        summary = extract_slide(files["slide"], tmp_path / "s.zarr", study_20x, slide_id="s", progress=False)
    assert summary["skipped_magnifications"] == ["40x"] and summary["magnifications"] == ["20x", "10x", "5x"]
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert "40x" not in root and root["20x/images"].shape[1:] == (32, 32, 3)
    assert root.attrs["cell_level0"] == 32  # a 32 px field at 20x on a 20x scan
    # Such a store given to a 40x Teacher (written before this check, or by hand): one line, not a KeyError traceback.
    from wsidistill.errors import InputError
    from wsidistill.patches.dataset import StorePatches

    with pytest.raises(InputError) as missing:
        StorePatches([tmp_path / "s.zarr"], [40])
    assert str(missing.value).startswith(f"{tmp_path / 's.zarr'}: no 40x patches: slide s is 20x (metadata)")


def test_a_training_slide_without_labelled_patches_stops_its_extraction(demo_slide, tmp_path, capsys):
    """`--require-labels` (the workflow's flag for train slides): no annotations, or none on tissue, is one line."""
    with pytest.raises(UnlabelledSlideError, match="a training slide with no labelled patch .no annotations"):
        extract_slide(demo_slide["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", require_labels=True,
                      progress=False)
    outside = tmp_path / "outside.geojson"
    outside.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"classification": {"name": "Gleason 3"}},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]]]}}]}))
    status = main(["extract", str(demo_slide["slide"]), "--out", str(tmp_path / "s.zarr"), "--patch-size", "64",
                   "--annotations", str(outside), "--require-labels"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1 and not (tmp_path / "s.zarr").exists()
    assert f"{outside} labels none of its" in error[0] and "move it to the test split" in error[0]
    # Without the flag (a test slide) the same slide extracts, every patch unlabelled.
    summary = extract_slide(demo_slide["slide"], tmp_path / "t.zarr", SETTINGS, slide_id="s", annotations=outside,
                            progress=False)
    assert summary["patches_per_class"]["unlabelled"] == summary["tissue_patches"] > 0
