"""Tissue detection with marker ink (issue 17, kind 4): the mask with a pen stroke matches the mask without it."""

import cv2
import numpy as np
import pytest
import tifffile

from wsidistill.demo import plan_cohort, write_slide
from wsidistill.demo.formats import MARKER_COLOURS, draw_marker_stroke
from wsidistill.slides.tissue import detect_tissue

MARKERS = MARKER_COLOURS

#: Least IoU between the mask of the slide with a stroke and the mask without it.
MIN_IOU = 0.95


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(plan_cohort(6, 0)[0], tmp_path_factory.mktemp("tissue"), width=1024, height=768)["slide"]


stroke = draw_marker_stroke


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("colour", MARKERS)
def test_a_marker_stroke_touching_tissue_leaves_the_mask_as_it_was(slide, colour):
    level0 = tifffile.imread(slide, level=0)
    thumbnail = cv2.resize(level0, (512, 384), interpolation=cv2.INTER_AREA)  # 2x: a 0.2 mm stroke is 100 px
    clean = detect_tissue(thumbnail)
    assert clean.mean() > 0.1
    inked = stroke(thumbnail, MARKERS[colour], 24)
    assert (inked != thumbnail).any(-1).mean() > 0.03
    with_ink = detect_tissue(inked)
    assert iou(with_ink, clean) >= MIN_IOU, f"{colour}: IoU {iou(with_ink, clean):.3f}"


def test_a_blue_stroke_keeps_every_tissue_patch_through_extraction(slide, tmp_path):
    """End to end: every tissue patch of the slide without the stroke that the stroke does not cross is kept."""
    import zarr

    from wsidistill.demo.formats import aperio_description, write_pyramid
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    level0 = tifffile.imread(slide, level=0)
    inked = tmp_path / "inked.svs"
    write_pyramid(inked, [(0, stroke(level0, MARKERS["blue"], 48))], 1024, 768,
                  description=aperio_description(1024, 768, 40, 0.25, "inked"), mpp=0.25, aperio=True)
    settings = ExtractionSettings(classes=("NC", "G3", "G4", "G5"), class_map={}, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=64)
    clean = extract_slide(slide, tmp_path / "a.zarr", settings, slide_id="a", progress=False)["tissue_patches"]
    with_ink = extract_slide(inked, tmp_path / "b.zarr", settings, slide_id="b", progress=False)["tissue_patches"]
    ink = stroke(np.zeros((768, 1024, 1), np.uint8), (255,), 48)[..., 0] > 0
    coords = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["coords"][:]
    touched = sum(ink[y : y + 64, x : x + 64].any() for x, y in coords)  # patches the stroke crosses
    assert clean > 20 and touched < clean / 4
    assert clean - touched <= with_ink <= clean, (clean, touched, with_ink)  # every patch clear of ink is kept
