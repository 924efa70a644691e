"""PANDA label masks graded as a pathologist grades: by the glands, stroma only as context (issue 17).

Each test writes its own mask, one 16 x 16 px cell per patch, so the mask is read 1:1 (16 samples per
cell side) and every class fraction is an exact count of pixels / 256.
"""

import cv2
import numpy as np
import pytest
import tifffile

from wsidistill.slides.annotations import (
    KAROLINSKA_CONTEXT,
    RADBOUD_CLASSES,
    RADBOUD_CONTEXT,
    AnnotationError,
    context_labels,
    label_mask_fractions,
    majority_labels,
    unlabelled_gland_classes,
)

CELL = 16
GLEASON = ("NC", "G3", "G4", "G5")
STROMA, BENIGN, G3, G4 = 1, 2, 3, 4  # Radboud values


def cell(fill: int, *shapes: tuple[int, slice, slice]) -> np.ndarray:
    patch = np.full((CELL, CELL), fill, np.uint8)
    for value, rows, cols in shapes:
        patch[rows, cols] = value
    return patch


def gland(value: int, lumen: int = 0) -> list:
    """An 8 x 8 px gland ring (48 px of epithelium) around a 4 x 4 px lumen, centred in the cell."""
    return [(value, slice(4, 12), slice(4, 12)), (lumen, slice(6, 10), slice(6, 10))]


def write_mask(path, cells: list[np.ndarray]):
    tifffile.imwrite(path, np.hstack(cells), tile=(16, 16), compression="zlib")
    coords = np.array([[CELL * i, 0] for i in range(len(cells))])
    return coords, (CELL * len(cells), CELL)


RADBOUD_CELLS = {
    "G4 gland ring in stroma": cell(STROMA, *gland(G4)),             # 192 stroma, 48 G4, 16 lumen
    "pure stroma": cell(STROMA),
    "G4 sliver in stroma": cell(STROMA, (G4, slice(0, 2), slice(0, 4))),  # 8 px = 3% of the tissue
    "benign sliver in stroma": cell(STROMA, (BENIGN, slice(0, 2), slice(0, 4))),
    "benign and G3 glands": cell(STROMA, (BENIGN, slice(0, 4), slice(0, 16)), (G3, slice(8, 14), slice(0, 16))),
    "G4 ring on glass": cell(0, *gland(G4, lumen=0)),                 # 48 px of tissue in 256
}


@pytest.fixture
def radboud(tmp_path):
    coords, size = write_mask(tmp_path / "radboud.tiff", list(RADBOUD_CELLS.values()))
    return label_mask_fractions(tmp_path / "radboud.tiff", RADBOUD_CLASSES, GLEASON, coords, CELL, size,
                                RADBOUD_CONTEXT)


def test_radboud_fractions_split_the_stroma_out(radboud):
    fractions, context = radboud
    assert (fractions * 256).round().astype(int).tolist() == [
        [192, 0, 48, 0], [256, 0, 0, 0], [248, 0, 8, 0], [256, 0, 0, 0], [160, 96, 0, 0], [0, 0, 48, 0]]
    assert (context * 256).round().astype(int)[:, 0].tolist() == [192, 256, 248, 248, 96, 0]
    assert not context[:, 1:].any()


def test_a_patch_is_graded_by_its_glands_and_stroma_decides_only_without_them(radboud):
    """G4 ring in stroma: G4 (it was NC by area); pure stroma: NC; a G4 sliver under `min_epithelium_fraction`
    of the tissue: -1 (not called against the gland it shows); a benign sliver: NC; benign (64 px) and G3
    (96 px) glands: G3, the glands' majority; a gland on glass: -1 (19% tissue, below min_label_fraction)."""
    fractions, context = radboud
    assert context_labels(fractions, context, 0.5, 0.05).tolist() == [2, 0, -1, 0, 1, -1]
    assert majority_labels(fractions, 0.5).tolist() == [0, 0, 0, 0, 0, -1]  # stroma voting: every patch NC


def test_min_epithelium_fraction_moves_the_line_between_glands_and_stroma(radboud):
    fractions, context = radboud
    # the G4 ring is 48 / 240 = 20% of its tissue; the benign + G3 glands 160 / 256 = 62%
    assert context_labels(fractions, context, 0.5, 0.2).tolist() == [2, 0, -1, 0, 1, -1]
    assert context_labels(fractions, context, 0.5, 0.21).tolist() == [-1, 0, -1, 0, 1, -1]
    assert context_labels(fractions, context, 0.5, 0.0).tolist() == [2, 0, 2, 0, 1, -1]  # any gland decides


def test_without_context_every_value_votes_by_its_area(tmp_path):
    coords, size = write_mask(tmp_path / "m.tiff", list(RADBOUD_CELLS.values()))
    fractions, context = label_mask_fractions(tmp_path / "m.tiff", RADBOUD_CLASSES, GLEASON, coords, CELL, size)
    assert not context.any()
    assert context_labels(fractions, context, 0.5, 0.05).tolist() == majority_labels(fractions, 0.5).tolist() \
        == [0, 0, 0, 0, 0, -1]


def test_karolinska_cancer_in_benign_tissue_is_the_cancer_class(tmp_path):
    """Karolinska: 0 background, 1 benign tissue (stroma and benign glands), 2 cancer, mapped to the study's
    cancer class; a 36 px cancer focus (14%) is cancer, a 4 px one (1.6%) is -1, benign tissue alone NC."""
    cells = [cell(1, (2, slice(5, 11), slice(5, 11))), cell(1, (2, slice(7, 9), slice(7, 9))), cell(1)]
    coords, size = write_mask(tmp_path / "karolinska.tiff", cells)
    fractions, context = label_mask_fractions(tmp_path / "karolinska.tiff", {0: None, 1: "NC", 2: "cancer"},
                                              ("NC", "cancer"), coords, CELL, size, KAROLINSKA_CONTEXT)
    assert (fractions * 256).round().astype(int).tolist() == [[220, 36], [252, 4], [256, 0]]
    assert context_labels(fractions, context, 0.5, 0.05).tolist() == [1, -1, 0]
    assert majority_labels(fractions, 0.5).tolist() == [0, 0, 0]


def test_a_context_value_that_is_no_class_is_one_line_naming_the_file(tmp_path):
    coords, size = write_mask(tmp_path / "m.tiff", [cell(STROMA)])
    with pytest.raises(AnnotationError) as err:
        label_mask_fractions(tmp_path / "m.tiff", RADBOUD_CLASSES, GLEASON, coords, CELL, size, (0, 300))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'm.tiff'}: `label_mask_context` values [0, 300] are not tissue of a class")
    assert "\n" not in message


def test_a_cancer_focus_too_small_to_label_any_patch_is_named(tmp_path):
    """A 4 px Karolinska cancer focus (1.6% of its patch) leaves its patch -1 and no patch cancer: the slide's
    labels would not show the cancer, so the class is reported (extraction turns it into a warning)."""
    cells = [cell(1, (2, slice(7, 9), slice(7, 9))), cell(1)]
    coords, size = write_mask(tmp_path / "k.tiff", cells)
    fractions, context = label_mask_fractions(tmp_path / "k.tiff", {0: None, 1: "NC", 2: "cancer"},
                                              ("NC", "cancer"), coords, CELL, size, KAROLINSKA_CONTEXT)
    labels = context_labels(fractions, context, 0.5, 0.05)
    assert labels.tolist() == [-1, 0]
    assert unlabelled_gland_classes(fractions, context, labels, ("NC", "cancer")) == {"cancer": 1}
    labels = context_labels(fractions, context, 0.5, 0.01)
    assert labels.tolist() == [1, 0] and unlabelled_gland_classes(fractions, context, labels, ("NC", "cancer")) == {}


def test_a_mask_coarser_than_16_px_per_patch_side_is_a_warning(tmp_path):
    coords, (width, height) = write_mask(tmp_path / "m.tiff", list(RADBOUD_CELLS.values()))
    with pytest.warns(UserWarning, match=r"m\.tiff: the mask holds 8 px per patch side \(1/2 of the slide\)"):
        fractions, _ = label_mask_fractions(tmp_path / "m.tiff", RADBOUD_CLASSES, GLEASON, coords, CELL,
                                            (width * 2, height * 2), RADBOUD_CONTEXT)
    assert fractions.shape == (6, 4)


def test_any_tissue_mask_form_reads_as_the_same_mask(tmp_path):
    """Issue 17, kind 6: a left-half tissue mask of a 768 x 512 slide at a 3.3 downsample, as 0/1 PNG, as white
    on a transparent (white, alpha 0) background, as a 1-bit CCITT TIFF: the same mask, the same scale."""
    from PIL import Image

    from wsidistill.slides.annotations import read_tissue_mask

    left = np.zeros((155, 233), np.uint8)
    left[:, :116] = 1
    cv2.imwrite(str(tmp_path / "ones.png"), left)
    rgba = np.full(left.shape + (4,), 255, np.uint8)
    rgba[..., 3] = left * 255
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    Image.fromarray(left * 255).convert("1").save(tmp_path / "bilevel.tif", compression="group4")
    for name in ("ones.png", "alpha.png", "bilevel.tif"):
        mask, downsample = read_tissue_mask(tmp_path / name, (768, 512))
        assert downsample == pytest.approx(768 / 233) and (mask == left.astype(bool)).all(), name
