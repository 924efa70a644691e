"""One colour per class, used by every figure so a reader learns it once."""

from __future__ import annotations

from collections.abc import Sequence

#: Gleason-style defaults: benign green, then yellow -> orange -> red with grade.
DEFAULT_COLORS = {"NC": "#4daf4a", "G3": "#ffd92f", "G4": "#ff7f00", "G5": "#e41a1c"}
FALLBACK = ("#377eb8", "#984ea3", "#a65628", "#f781bf", "#999999", "#66c2a5")


def class_colors(classes: Sequence[str]) -> list[str]:
    fallback = iter(FALLBACK)
    return [DEFAULT_COLORS.get(c) or next(fallback) for c in classes]


def class_rgb(classes: Sequence[str]):
    import matplotlib.colors as mcolors
    import numpy as np

    return np.array([mcolors.to_rgb(c) for c in class_colors(classes)])
