"""The synthetic tissue carries what the study needs: H&E colours, grade-specific architecture at low
power, grade-specific cytology only at high power, artefacts, and strip-independent rendering."""

import dataclasses

import cv2
import numpy as np
import pytest
from shapely.geometry import box

from wsidistill.demo import DEFAULT_PARAMS, plan_cohort
from wsidistill.demo.render import render_strip
from wsidistill.demo.scene import Region, build_scene, single_grade_scene, slide_grades

SIZE = 512


def _render(scene):
    return render_strip(scene, DEFAULT_PARAMS, 0, int(scene.height), int(scene.width), int(scene.height), 1.0)


def _haematoxylin(rgb, stain):
    """Colour deconvolution with the slide's own stain vectors (Ruifrok & Johnston)."""
    od = -np.log10(np.maximum(rgb.astype(float), 1) / stain.background)
    vectors = np.stack([stain.haematoxylin * stain.h_strength, stain.eosin * stain.e_strength], 1)
    return (od.reshape(-1, 3) @ np.linalg.pinv(vectors).T)[:, 0].reshape(rgb.shape[:2])


@pytest.fixture(scope="module")
def same_glands_four_cytologies():
    """Identical Gleason-3-type glands rendered with the cytology of each grade."""
    scene = single_grade_scene(3, 1, SIZE, DEFAULT_PARAMS, architecture=1)
    out = []
    for grade in range(4):
        scene.regions = [Region(grade, box(0, 0, SIZE, SIZE))]
        out.append(_render(scene))
    return scene, out


def test_nuclei_grow_with_grade_at_40x(same_glands_four_cytologies):
    scene, renders = same_glands_four_cytologies
    medians = []
    for rgb, labels in renders:
        nuclei = (_haematoxylin(rgb, scene.stain) > 0.25) & (labels >= 2)
        _, _, stats, _ = cv2.connectedComponentsWithStats(nuclei.astype(np.uint8))
        medians.append(np.median(stats[1:, cv2.CC_STAT_AREA]))
    assert medians == sorted(medians)
    assert medians[3] > 1.5 * medians[0]


def test_cytology_is_averaged_away_at_5x(same_glands_four_cytologies):
    """8x area downsampling (40x -> 5x) leaves the same colours whatever the cytology."""
    _, renders = same_glands_four_cytologies
    at5x = [cv2.resize(rgb, (SIZE // 8, SIZE // 8), interpolation=cv2.INTER_AREA).reshape(-1, 3) for rgb, _ in renders]
    for g in range(1, 4):
        assert np.abs(at5x[g].mean(0) - at5x[0].mean(0)).max() < 3  # grey levels
        assert np.abs(at5x[g].std(0) - at5x[0].std(0)).max() < 0.25 * at5x[0].std(0).min()


def test_architecture_differs_between_grades_at_5x():
    """Grade-typical architecture: lumen (white) area falls and epithelium gets solid from benign to G5."""
    lumen_share = []
    for grade in range(4):
        scene = single_grade_scene(5, grade, SIZE, DEFAULT_PARAMS, architecture=grade)
        rgb, labels = _render(scene)
        small = cv2.resize(rgb, (SIZE // 8, SIZE // 8), interpolation=cv2.INTER_AREA)
        lumen_share.append((small.min(axis=2) > 215).mean())
    assert lumen_share[0] > lumen_share[2] > lumen_share[3]
    assert lumen_share[3] < 0.01


@pytest.mark.parametrize("overlap", [0.0, 0.4])
def test_architecture_overlap_mixes_only_neighbouring_grades(overlap):
    params = dataclasses.replace(DEFAULT_PARAMS, architecture_overlap=overlap)
    pairs = []
    for seed in range(4):
        scene = build_scene(seed, 3072, 2304, params)
        for arch, area in scene.zones:
            region = max(scene.regions, key=lambda r: r.polygon.intersection(area).area)
            pairs.append((region.grade, arch))
    grades, archs = np.array(pairs).T
    assert np.all(np.abs(grades - archs) <= 1)
    assert np.mean(grades != archs) == pytest.approx(overlap, abs=0.1)


def test_h_and_e_colours():
    scene = single_grade_scene(0, 2, SIZE, DEFAULT_PARAMS, architecture=2)
    rgb, labels = _render(scene)
    h = _haematoxylin(rgb, scene.stain)
    nuclei, stroma = rgb[(h > 0.6) & (labels >= 2)].mean(0), rgb[(labels == 1) & (h < 0.1)].mean(0)
    assert nuclei[2] > nuclei[0] > nuclei[1]  # haematoxylin: blue-purple
    assert stroma[0] > stroma[2] > stroma[1]  # eosin: pink
    assert nuclei.mean() < stroma.mean() - 60


def test_stain_varies_between_slides():
    stains = [build_scene(s, 1024, 768, DEFAULT_PARAMS).stain for s in range(6)]
    hues = np.array([s.eosin for s in stains])
    assert hues.std(0).max() > 0.01 and len({round(s.h_strength, 3) for s in stains}) == 6


def test_every_default_slide_holds_its_planned_grades():
    for slide in plan_cohort(10, 0):
        scene = build_scene(slide.seed, 3072, 2304, DEFAULT_PARAMS)
        assert {r.grade for r in scene.regions} == set(slide_grades(slide.seed))


def test_structures_stay_inside_their_region():
    scene = build_scene(1, 3072, 2304, DEFAULT_PARAMS)
    tissue = [r.polygon.buffer(1e-6) for r in scene.regions]
    from shapely.geometry import Polygon

    for outline in scene.outlines[::7]:
        gland = Polygon(outline)
        assert max(t.intersection(gland).area for t in tissue) == pytest.approx(gland.area, rel=1e-6)


def test_artefacts_occur_across_the_cohort():
    scenes = [build_scene(s, 1536, 1024, DEFAULT_PARAMS) for s in range(12)]
    assert sum(bool(s.folds) for s in scenes) >= 3
    assert sum(bool(s.pens) for s in scenes) >= 3
    assert sum(bool(s.blurs) for s in scenes) >= 3
    assert all(len(s.dust) >= DEFAULT_PARAMS.dust_count[0] for s in scenes)


def test_pen_ink_is_not_h_and_e_coloured():
    scene = next(s for seed in range(20) if (s := build_scene(seed, 1024, 768, DEFAULT_PARAMS)).pens)
    rgb, labels = _render(scene)
    from wsidistill.demo.render import _fill_geometry

    ink = np.zeros(labels.shape, np.uint8)
    for area, _, _ in scene.pens:
        _fill_geometry(ink, area, 1.0, 0)
    on_glass = rgb[(cv2.erode(ink, np.ones((5, 5))) > 0) & (labels == 0)].astype(float)
    assert len(on_glass) > 50
    # H&E absorbs green most; marker ink (green, blue, black) does not
    assert np.median(on_glass[:, 1] - np.minimum(on_glass[:, 0], on_glass[:, 2])) > -5


def test_strips_match_a_whole_render():
    """Halo rendering: any strip partition gives exactly the pixels of the whole image."""
    scene = build_scene(2, 1024, 1024, DEFAULT_PARAMS)
    whole, whole_labels = render_strip(scene, DEFAULT_PARAMS, 0, 1024, 1024, 1024, 1.0)
    for y0 in (256, 512):
        part, labels = render_strip(scene, DEFAULT_PARAMS, y0, y0 + 256, 1024, 1024, 1.0)
        assert np.array_equal(part, whole[y0 : y0 + 256])
        assert np.array_equal(labels, whole_labels[y0 : y0 + 256])
