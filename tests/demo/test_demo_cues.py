"""Cue modes of the demo cohort: `degraded` keeps grade cues above the visibility threshold at 5x (measured on
rendered tissue), `absent` is the generator as it was, pixel for pixel."""

import hashlib

import numpy as np
import pytest

from wsidistill.demo import DEFAULT_PARAMS, plan_cohort
from wsidistill.demo.cues import SURVIVES_PX, epithelium_tint, lumen_diameters, measure_lumens
from wsidistill.demo.params import cue_params
from wsidistill.demo.render import render_slide

CRIBRIFORM = (1.0, 0.0, 0.0)


def test_half_contrast_diameter_of_a_drawn_disc():
    """A bright disc of diameter 40 px in dark epithelium measures ~40, ~20 and ~5 px at 1x, 2x and 8x reduction."""
    yy, xx = np.mgrid[:128, :128]
    disc = np.hypot(xx - 64, yy - 64) < 20
    rgb = np.where(disc[..., None], 230, 100).astype(np.uint8).repeat(3, axis=2)
    labels = np.full((128, 128), 3, np.uint8)
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    outline = np.stack([64 + 20 * np.cos(theta), 64 + 20 * np.sin(theta)], 1)
    for factor in (1, 2, 8):
        assert lumen_diameters(rgb, labels, [outline], factor)[0] == pytest.approx(40 / factor, rel=0.1)


@pytest.mark.parametrize(("architecture", "g4_mix"), [(1, None), (2, CRIBRIFORM)], ids=["gleason3", "cribriform"])
def test_degraded_lumens_survive_at_5x(architecture, g4_mix):
    d5 = measure_lumens(cue_params("degraded"), architecture, g4_mix)[5]
    assert len(d5) >= 20
    assert np.median(d5) >= SURVIVES_PX
    assert np.mean(d5 == 0) <= 0.1  # lumens blurred into their epithelium


def test_cribriform_lumens_fall_below_the_threshold_at_5x_when_absent():
    d = measure_lumens(cue_params("absent"), 2, CRIBRIFORM)
    assert np.median(d[40]) >= 4 * SURVIVES_PX  # clearly there at 40x
    assert np.median(d[5]) < SURVIVES_PX


def test_epithelium_darkens_with_grade_at_5x_only_when_degraded():
    degraded, absent = epithelium_tint(cue_params("degraded"), size=384), epithelium_tint(cue_params("absent"), size=384)
    assert degraded[1:] == sorted(degraded[1:]) and degraded[3] - degraded[1] >= 2  # grey levels, G3 -> G5
    assert max(absent[1:]) - min(absent[1:]) < 1.5  # carcinoma grades alike at 5x


def test_absent_mode_is_the_unchanged_default_generator():
    """Pixel hash of a small slide rendered before the cue modes existed (commit 3b84e94)."""
    assert cue_params("absent") is DEFAULT_PARAMS
    rgb, labels, _ = render_slide(plan_cohort(12, 0)[8].seed, 640, 512, cue_params("absent"))
    digest = hashlib.sha256(rgb.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "28d320e2bd6be19f60f66f4ccafffc3072a0228e8a8fbb6e0c20925de26d6c81"


def test_unknown_cue_mode_names_the_key():
    with pytest.raises(ValueError, match="demo.cues"):
        cue_params("faint")
