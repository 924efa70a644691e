"""Tissue detection on a low-resolution thumbnail.

Default method ``hsv-otsu``: stained tissue is saturated and background glass is
not, so Otsu's threshold on HSV saturation separates them.  Marker ink is
saturated too, and often more than tissue: it is found first (:func:`ink_mask`)
and left out of the pixels Otsu's threshold is computed on, so a pen stroke
beside the tissue neither pulls the threshold above the tissue nor counts as
tissue.  Morphology then closes gaps and drops specks smaller than
``min_object_fraction`` of the thumbnail.

Ink colours (OpenCV hue 0..179, saturation and value 0..255):

- green and blue marker: hue 36..117 with saturation >= 40 (blue marker on
  glass scans at about 110..117).  H&E lies outside: eosin is pink-red
  (hue >= 150 or <= 15), haematoxylin blue-purple (118..150; a pure, bluer
  hue would take very blue haematoxylin with it);
- black marker: value < 60 (darker than any H&E tissue at thumbnail scale);
- red marker is **not** removed: its hue is eosin's, and a saturation cut that
  caught red ink would also cut densely eosinophilic stroma.  Slides with red
  marker need a tissue mask (``--tissue-mask``).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

METHODS = ("hsv-otsu", "tiatoolbox-otsu", "tiatoolbox-morphological")

#: OpenCV hue range of green and blue marker, and the least saturation that counts as ink (not grey glass).
INK_HUES = (36, 117)
INK_MIN_SATURATION = 40

#: Value below which a pixel is black marker (or the slide's dark edge), never tissue.
BLACK_INK_VALUE = 60


def detect_tissue(
    thumbnail: np.ndarray, method: str = "hsv-otsu", *, min_object_fraction: float = 5e-4
) -> np.ndarray:
    """Boolean (h, w) tissue mask of an RGB uint8 (h, w, 3) thumbnail."""
    if method == "hsv-otsu":
        return _hsv_otsu(thumbnail, min_object_fraction)
    if method in ("tiatoolbox-otsu", "tiatoolbox-morphological"):
        from tiatoolbox.tools import tissuemask

        masker = tissuemask.OtsuTissueMasker() if method == "tiatoolbox-otsu" else tissuemask.MorphologicalMasker()
        return np.asarray(masker.fit_transform([thumbnail])[0]).astype(bool)
    raise ValueError(f"unknown tissue method {method!r}; choose one of {', '.join(METHODS)}")


def ink_mask(hsv: np.ndarray) -> np.ndarray:
    """Boolean (h, w): green, blue and black marker in an OpenCV HSV image (see the module docstring)."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (hue >= INK_HUES[0]) & (hue <= INK_HUES[1]) & (saturation >= INK_MIN_SATURATION)
    ink = coloured | (value < BLACK_INK_VALUE)
    # a stroke's soft edge: the ring of pixels around it that are still more saturated than glass
    return ink | (ndimage.binary_dilation(ink, iterations=1) & (saturation >= INK_MIN_SATURATION // 2) & ~(
        (hue > INK_HUES[1]) | (hue <= 15)))


def _hsv_otsu(thumbnail: np.ndarray, min_object_fraction: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(thumbnail), cv2.COLOR_RGB2HSV)
    saturation = hsv[..., 1]
    ink = ink_mask(hsv)
    clean = saturation[~ink]
    if clean.size == 0 or int(clean.max()) - int(clean.min()) < 10:
        return np.zeros(saturation.shape, dtype=bool)
    threshold, _ = cv2.threshold(clean.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(threshold, 15)) & ~ink
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask) & ~ink  # a stroke closed into a ring around glass is not tissue
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(sizes >= min_object_fraction * mask.size) + 1
        mask = np.isin(labels, keep)
    return mask
