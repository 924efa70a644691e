"""One reader for every slide format, with resolution always carried with its unit.

OpenSlide reads SVS, NDPI, MRXS, generic TIFF and DICOM; tiatoolbox's
``WSIReader`` is the fallback for formats OpenSlide refuses.  Magnification
comes from the objective power; without it, it is derived from the MPP
(magnification ~ 10 / MPP) and the derivation is recorded, never hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openslide

#: Microns per pixel of a 10x objective; magnification ~ MPP_AT_10X * 10 / mpp.
MPP_AT_10X = 1.0


class SlideReadError(RuntimeError):
    """A slide that cannot be opened or lacks the metadata to place it in physical units."""


@dataclass(frozen=True)
class SlideInfo:
    """What the pipeline needs to know about a slide, with where each fact came from."""

    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float
    objective_power_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def _float_property(properties, key: str) -> float | None:
    try:
        value = float(properties[key])
    except (KeyError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None


def resolve_resolution(
    path: str | Path,
    mpp: float | None,
    objective_power: float | None,
    *,
    mpp_override: float | None = None,
    power_override: float | None = None,
) -> tuple[float, str, float, str]:
    """Combine metadata and sample-sheet overrides into (mpp, source, power, source)."""
    mpp_source = "metadata"
    power_source = "metadata"
    if mpp_override is not None:
        mpp, mpp_source = float(mpp_override), "sample sheet"
    if power_override is not None:
        objective_power, power_source = float(power_override), "sample sheet"
    if mpp is None and objective_power is None:
        raise SlideReadError(
            f"{path}: the slide records neither microns per pixel nor objective power. "
            "Add an `mpp` (e.g. 0.25 for 40x) or `objective_power` column value for this slide "
            "in the sample sheet."
        )
    if objective_power is None:
        objective_power = round(MPP_AT_10X * 10 / mpp, 2)
        power_source = "derived from mpp"
    if mpp is None:
        mpp = MPP_AT_10X * 10 / objective_power
        mpp_source = "derived from objective power"
    return float(mpp), mpp_source, float(objective_power), power_source


class Slide:
    """An open whole-slide image; use as a context manager."""

    def __init__(self, path: str | Path, *, mpp: float | None = None, objective_power: float | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise SlideReadError(f"{self.path}: file not found. Check the `path` column of the sample sheet.")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as err:
            raise SlideReadError(
                f"{self.path}: cannot be read as a whole-slide image ({err}). "
                "The file may be truncated or corrupt: re-export or re-copy it, or remove it from the sample sheet."
            ) from err
        props = self._osr.properties
        slide_mpp = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
        slide_power = _float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        resolved = resolve_resolution(
            self.path, slide_mpp, slide_power, mpp_override=mpp, power_override=objective_power
        )
        self.info = SlideInfo(
            path=str(self.path),
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
            dimensions=tuple(self._osr.dimensions),
            level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
            mpp=resolved[0],
            mpp_source=resolved[1],
            objective_power=resolved[2],
            objective_power_source=resolved[3],
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._osr.close()

    def downsample_for(self, magnification: float) -> float:
        """Level-0 pixels per output pixel at ``magnification`` (objective power units)."""
        return self.info.objective_power / magnification

    def best_level_for(self, downsample: float) -> int:
        """The native level closest above the requested resolution: never coarser than asked."""
        candidates = [i for i, d in enumerate(self.info.level_downsamples) if d <= downsample * 1.001]
        return max(candidates, key=lambda i: self.info.level_downsamples[i]) if candidates else 0

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``level``; (x, y) are level-0 coordinates."""
        try:
            rgba = np.asarray(self._osr.read_region((int(x), int(y)), level, (int(width), int(height))))
        except openslide.OpenSlideError as err:
            raise SlideReadError(f"{self.path}: failed to decode region at ({x}, {y}) level {level}: {err}") from err
        return _rgba_on_white(rgba)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB thumbnail and its level-0 downsample factor."""
        level = self._osr.level_count - 1
        w, h = self.info.level_dimensions[level]
        image = self.read_region(level, 0, 0, w, h)
        downsample = self.info.level_downsamples[level]
        scale = max(w, h) / max_side
        if scale > 1:
            import cv2

            new_size = (max(1, round(w / scale)), max(1, round(h / scale)))
            image = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)
            downsample *= w / new_size[0]
        return image, downsample


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's premultiplied RGBA on white, as a scanner's background would look."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    white = (255 - alpha.astype(np.uint16))
    return (rgb.astype(np.uint16) + white).clip(0, 255).astype(np.uint8)
