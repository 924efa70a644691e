"""The patch grid: one set of level-0 rectangles shared by every magnification.

The field of view is ``patch_size`` pixels at the Teacher's magnification, in
microns (:func:`field_cell`), so on a 40x slide with a 40x Teacher and 128 px
patches each cell is 128 level-0 pixels wide; at 5x the same cell is 16 pixels.  Patch *i* covers exactly the
same level-0 rectangle at every magnification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import InputError

#: Microns per pixel of a 10x objective; magnification ~ MPP_AT_10X * 10 / mpp.
MPP_AT_10X = 1.0

#: Objective powers a derived power snaps to: tiatoolbox's ``mpp2common_objective_power`` list.
STANDARD_POWERS = (1, 1.25, 2, 2.5, 4, 5, 10, 20, 40, 60, 90, 100)

#: Relative difference between a slide's MPP and its objective's nominal MPP kept as whole nominal pixels.
FIELD_TOLERANCE = 0.03


class GridError(InputError, ValueError):
    """A requested geometry that does not map to whole pixels."""


def magnification_name(magnification: float) -> str:
    """Group name for a magnification: 40 -> '40x', 2.5 -> '2.5x'."""
    return f"{magnification:g}x"


def standard_power(mpp: float) -> float:
    """The standard objective nearest (on a log scale) to ``MPP_AT_10X * 10 / mpp``, as tiatoolbox snaps it."""
    power = MPP_AT_10X * 10 / mpp
    return min(STANDARD_POWERS, key=lambda p: abs(math.log(power / p)))


def patch_pixels(patch_size: int, magnification: float, teacher_magnification: float) -> int:
    """Side in pixels at ``magnification`` of a field of view ``patch_size`` px at the Teacher's."""
    side = patch_size * magnification / teacher_magnification
    if abs(side - round(side)) > 1e-6 or round(side) < 1:
        step = Fraction(magnification / teacher_magnification).limit_denominator(1000).denominator
        raise GridError(
            f"a {patch_size} px field at {teacher_magnification:g}x is {side:g} px at {magnification:g}x, not a "
            f"whole number: set `extraction.patch_size` (--patch-size) to a multiple of {step}, or drop "
            f"{magnification:g}x from `magnifications`"
        )
    return int(round(side))


def field_cell(patch_size: int, teacher_magnification: float, mpp: float, objective_power: float) -> int:
    """Level-0 px side of the field of view: ``patch_size`` px at the Teacher's magnification, in physical units.

    The field is ``patch_size * MPP_AT_10X * 10 / teacher_magnification`` um
    wide on every slide (64 um for 256 px at 40x), so patches cover the same
    tissue whatever the scanner: a 0.2265 um/px scan reads 283 px cells and
    resamples them to 256.  Where the slide's MPP is within
    FIELD_TOLERANCE of its power's nominal MPP the cell is the whole nominal
    side (patch_size * power / teacher), so patches stay whole file tiles.
    """

    nominal = patch_size * objective_power / teacher_magnification
    physical = patch_size * MPP_AT_10X * 10 / teacher_magnification / mpp
    if abs(physical / nominal - 1) <= FIELD_TOLERANCE and abs(nominal - round(nominal)) < 1e-6:
        return int(round(nominal))
    return max(1, int(round(physical)))


@dataclass(frozen=True)
class PatchGrid:
    """Level-0 top-left corners of square cells of side ``cell``."""

    cell: int
    columns: int
    rows: int

    @classmethod
    def for_slide(cls, dimensions: tuple[int, int], cell: int) -> PatchGrid:
        width, height = dimensions
        return cls(cell=cell, columns=width // cell, rows=height // cell)

    def tissue_fraction(self, tissue_mask: np.ndarray, mask_downsample: float) -> np.ndarray:
        """Fraction of each cell covered by tissue, from a mask at ``mask_downsample``."""
        integral = np.pad(tissue_mask.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        mask_h, mask_w = tissue_mask.shape
        edges_x = np.clip(np.round(np.arange(self.columns + 1) * self.cell / mask_downsample), 0, mask_w).astype(int)
        edges_y = np.clip(np.round(np.arange(self.rows + 1) * self.cell / mask_downsample), 0, mask_h).astype(int)
        x0, x1 = edges_x[:-1][None, :], edges_x[1:][None, :]
        y0, y1 = edges_y[:-1][:, None], edges_y[1:][:, None]
        area = (x1 - x0) * (y1 - y0)
        covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        return np.where(area > 0, covered / np.maximum(area, 1), 0.0).ravel()
