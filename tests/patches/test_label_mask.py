"""PANDA-style label masks: per-patch class fractions from a pyramidal mask TIFF, read at a coarse level."""

import re

import numpy as np
import pytest
import tifffile
import zarr

from wsidistill.demo import plan_cohort, write_slide
from wsidistill.patches.extract import ExtractionSettings, extract_slide
from wsidistill.slides.annotations import RADBOUD_CLASSES, AnnotationError, context_labels, majority_labels

SETTINGS = ExtractionSettings(
    classes=("NC", "G3", "G4", "G5"),
    class_map={"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"},
    magnifications=(40, 10),
    teacher_magnification=40,
    patch_size=64,
    min_tissue_fraction=0.25,
)


@pytest.fixture(scope="module")
def panda(tmp_path_factory):
    out = tmp_path_factory.mktemp("panda")
    files = write_slide(plan_cohort(6, 2)[0], out, width=1024, height=768, label_mask=True)
    summary = extract_slide(files["slide"], out / "s.zarr", SETTINGS, slide_id="s", label_mask=files["mask"],
                            progress=False)
    return files, summary, zarr.open_group(str(out / "s.zarr"), mode="r")


def full_resolution_fractions(mask: np.ndarray, coords: np.ndarray, cell: int) -> np.ndarray:
    lut = np.array([SETTINGS.classes.index(RADBOUD_CLASSES[v]) if RADBOUD_CLASSES.get(v) else 4 for v in range(256)])
    out = np.zeros((len(coords), 4))
    for i, (x, y) in enumerate(coords):
        out[i] = np.bincount(lut[mask[y : y + cell, x : x + cell]].ravel(), minlength=5)[:4] / cell**2
    return out


def test_class_fractions_follow_the_mask_and_labels_the_glands(panda):
    """The store keeps each class's area and the stroma's part of it (`context_fractions`); labels are
    context_labels of the two: stroma carries its glands' grade (issue 17), where area alone calls most
    tumour patches NC."""
    files, summary, root = panda
    mask = tifffile.imread(files["mask"], level=0)
    fractions, context = root["class_fractions"][:], root["context_fractions"][:]
    expected = full_resolution_fractions(mask, root["coords"][:], 64)
    assert len(fractions) > 20 and (expected.max(1) > 0.5).sum() > 10  # tumour and benign both present
    np.testing.assert_allclose(fractions, expected, atol=0.1)  # 16x16 samples per patch at mask level 1
    stroma = np.array([(mask[y : y + 64, x : x + 64] == 1).mean() for x, y in root["coords"][:]])
    np.testing.assert_allclose(context[:, 0], stroma, atol=0.1)
    assert not context[:, 1:].any()
    labels = root["labels"][:]
    np.testing.assert_array_equal(labels, context_labels(fractions, context, SETTINGS.min_label_fraction,
                                                         SETTINGS.min_epithelium_fraction))
    area = majority_labels(fractions, SETTINGS.min_label_fraction)
    assert (labels > 0).sum() > 3 * (area > 0).sum()  # stroma no longer out-votes the tumour glands
    assert root.attrs["label_mask"] == str(files["mask"]) and root.attrs["annotations"] is None
    assert root.attrs["label_mask_context"] == [1] and root.attrs["min_epithelium_fraction"] == 0.05
    assert summary["patches_per_class"]["unlabelled"] < len(fractions)


def test_panda_rgb_mask_at_another_scale_gives_the_same_fractions(panda, tmp_path):
    """PANDA keeps labels in the red channel of an RGB TIFF; any mask scale that covers the slide works."""
    files, _, root = panda
    half = tifffile.imread(files["mask"], level=0)[::2, ::2]
    rgb = np.stack([half, np.zeros_like(half), np.zeros_like(half)], axis=-1)
    tifffile.imwrite(tmp_path / "rgb_mask.tiff", rgb, tile=(128, 128), compression="zlib", photometric="rgb")
    extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", label_mask=tmp_path / "rgb_mask.tiff",
                  progress=False)
    fractions = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["class_fractions"][:]
    np.testing.assert_allclose(fractions, root["class_fractions"][:], atol=0.1)


def test_unmapped_mask_values_are_ignored_with_a_warning_in_the_summary(panda, tmp_path):
    files, _, _ = panda
    settings = ExtractionSettings(**{**SETTINGS.__dict__, "label_mask_classes": {0: None, 1: "NC"}})
    unmapped = sorted(set(np.unique(tifffile.imread(files["mask"], level=1)).tolist()) - {0, 1})
    assert unmapped
    with pytest.warns(UserWarning, match=rf"label mask values {re.escape(str(unmapped))} are not in `label_mask_cl"):
        summary = extract_slide(files["slide"], tmp_path / "s.zarr", settings, slide_id="s", label_mask=files["mask"],
                                progress=False)
    assert any("label mask values" in w for w in summary["warnings"])
    assert sum(summary["patches_per_class"][c] for c in ("G3", "G4", "G5")) == 0


def test_label_mask_errors_name_the_file_and_the_fix(panda, tmp_path):
    files, _, _ = panda
    settings = ExtractionSettings(**{**SETTINGS.__dict__, "label_mask_classes": {3: "Gleason3"}})
    with pytest.raises(AnnotationError, match=r"_mask\.tiff: label mask value 3 maps to 'Gleason3'.*label_mask_cl"):
        extract_slide(files["slide"], tmp_path / "a.zarr", settings, slide_id="s", label_mask=files["mask"],
                      progress=False)
    with pytest.raises(AnnotationError, match=r"give either GeoJSON annotations or a label mask"):
        extract_slide(files["slide"], tmp_path / "b.zarr", SETTINGS, slide_id="s", label_mask=files["mask"],
                      annotations=files["annotations"], progress=False)
    wide = tmp_path / "float.tiff"
    tifffile.imwrite(wide, np.zeros((768, 1024), np.float32))
    with pytest.raises(AnnotationError, match=r"float\.tiff: no 8-bit image") as caught:
        extract_slide(files["slide"], tmp_path / "c.zarr", SETTINGS, slide_id="s", label_mask=wide, progress=False)
    assert "vips" not in str(caught.value)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=r"junk\.png: not a readable 8-bit mask"):
        extract_slide(files["slide"], tmp_path / "d.zarr", SETTINGS, slide_id="s", label_mask=tmp_path / "junk.png",
                      progress=False)
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr", "d.zarr"))


@pytest.mark.parametrize(("layout", "scale"), [("png", 1), ("png", 4), ("stripped", 1), ("stripped", 2),
                                               ("tiled", 4), ("tiled-pyramid", 1)])
def test_any_raster_label_mask_of_the_slide_or_a_whole_downsample_gives_the_same_labels(panda, tmp_path, layout,
                                                                                        scale):
    """PNG, stripped TIFF, tiled TIFF: at the slide's size or a whole downsample, the same class fractions."""
    import cv2

    files, _, root = panda
    mask = tifffile.imread(files["mask"], level=0)[scale // 2 :: scale, scale // 2 :: scale]
    path = tmp_path / ("mask.png" if layout == "png" else "mask.tiff")
    if layout == "png":
        cv2.imwrite(str(path), mask)
    elif layout == "stripped":
        tifffile.imwrite(path, mask, rowsperstrip=16, compression="zlib")
    elif layout == "tiled":
        tifffile.imwrite(path, mask, tile=(64, 64), compression="zlib")
    else:
        path = files["mask"]
    extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", label_mask=path, progress=False)
    got = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_allclose(got["class_fractions"][:], root["class_fractions"][:], atol=0.1)
    np.testing.assert_allclose(got["context_fractions"][:], root["context_fractions"][:], atol=0.1)
    labels, reference = got["labels"][:], root["labels"][:]
    # A coarser mask may see or miss a sliver of a gland in stroma, which makes a patch -1: only those differ.
    differ = labels != reference
    assert differ.sum() <= 0.03 * len(labels) and ((labels[differ] == -1) | (reference[differ] == -1)).all()


def test_the_extract_command_takes_the_context_and_its_threshold(panda, tmp_path, capsys):
    """`--label-mask-context` with no value: every mask value votes by its area (the stroma out-votes the
    glands, as before issue 17); a value the mapping ignores: one line naming the mask, nothing written."""
    from wsidistill.cli import main

    files, _, root = panda
    flags = ["extract", str(files["slide"]), "--label-mask", str(files["mask"]), "--magnifications", "40", "10",
             "--patch-size", "64", "--min-tissue-fraction", "0.25"]
    assert main([*flags, "--out", str(tmp_path / "a.zarr"), "--label-mask-context", "--min-epithelium-fraction",
                 "0.3"]) == 0
    area = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert area.attrs["label_mask_context"] == [] and area.attrs["min_epithelium_fraction"] == 0.3
    assert not area["context_fractions"][:].any()
    np.testing.assert_array_equal(area["labels"][:], majority_labels(root["class_fractions"][:], 0.5))
    capsys.readouterr()
    assert main([*flags, "--out", str(tmp_path / "b.zarr"), "--label-mask-context", "0", "1"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"wsidistill extract: error: {files['mask']}: `label_mask_context` values [0] are not "
                            "tissue of a class") and error.count("\n") == 1
    assert not (tmp_path / "b.zarr").exists()


def test_glands_no_patch_is_labelled_with_are_a_warning_in_the_summary(panda, tmp_path):
    """With `min_epithelium_fraction` 1 no patch holding stroma is graded: the G5 glands, all in stroma, label
    nothing, and the summary names the class the slide's labels lost."""
    files, _, _ = panda
    settings = ExtractionSettings(**{**SETTINGS.__dict__, "min_epithelium_fraction": 1.0})
    with pytest.warns(UserWarning, match=r"_mask\.tiff: G5 glands in 46 patch\(es\), but no patch labelled G5 \("):
        summary = extract_slide(files["slide"], tmp_path / "s.zarr", settings, slide_id="s",
                                label_mask=files["mask"], progress=False)
    assert summary["patches_per_class"]["G5"] == 0
    assert any("but no patch labelled G5" in w and "--min-epithelium-fraction" in w for w in summary["warnings"])
