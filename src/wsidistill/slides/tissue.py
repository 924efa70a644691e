"""Tissue detection on a low-resolution thumbnail.

Default method ``hsv-otsu``: stained tissue is saturated and background glass is
not, so Otsu's threshold on HSV saturation separates them.  Ink (green and blue
pen) is saturated too, so hues far from the H&E pink-purple range are removed,
then morphology closes gaps and drops dust specks smaller than
``min_object_fraction`` of the thumbnail.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

METHODS = ("hsv-otsu", "tiatoolbox-otsu", "tiatoolbox-morphological")


def detect_tissue(
    thumbnail: np.ndarray, method: str = "hsv-otsu", *, min_object_fraction: float = 5e-4
) -> np.ndarray:
    """Boolean tissue mask with the thumbnail's shape."""
    if method == "hsv-otsu":
        return _hsv_otsu(thumbnail, min_object_fraction)
    if method in ("tiatoolbox-otsu", "tiatoolbox-morphological"):
        from tiatoolbox.tools import tissuemask

        masker = tissuemask.OtsuTissueMasker() if method == "tiatoolbox-otsu" else tissuemask.MorphologicalMasker()
        return np.asarray(masker.fit_transform([thumbnail])[0]).astype(bool)
    raise ValueError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")


def _hsv_otsu(thumbnail: np.ndarray, min_object_fraction: float) -> np.ndarray:
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    hue, saturation, value = hsv[..., 0].astype(int), hsv[..., 1], hsv[..., 2]
    if saturation.max() - saturation.min() < 10:
        return np.zeros(saturation.shape, dtype=bool)
    threshold, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(threshold, 15)) & (value > 30)
    # OpenCV hue is 0..179: H&E is pink to purple (about 120..179 and 0..15); ink is green/blue.
    ink = (hue > 35) & (hue < 118)
    mask &= ~ink
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(sizes >= min_object_fraction * mask.size) + 1
        mask = np.isin(labels, keep)
    return mask
