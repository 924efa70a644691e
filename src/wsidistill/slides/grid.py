"""The patch grid: one set of level-0 rectangles shared by every magnification.

The field of view is ``patch_size`` pixels at the Teacher's magnification, so on
a 40x slide with a 40x Teacher and 128 px patches each cell is 128 level-0
pixels wide; at 5x the same cell is 16 pixels.  Patch *i* covers exactly the
same level-0 rectangle at every magnification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


class GridError(InputError, ValueError):
    """A requested geometry that does not map to whole pixels."""


def magnification_name(magnification: float) -> str:
    """Group name for a magnification: 40 -> '40x', 2.5 -> '2.5x'."""
    return f"{magnification:g}x"


def patch_pixels(patch_size: int, magnification: float, teacher_magnification: float) -> int:
    """Side in pixels at ``magnification`` of a field of view ``patch_size`` px at the Teacher's."""
    side = patch_size * magnification / teacher_magnification
    if abs(side - round(side)) > 1e-6 or round(side) < 1:
        raise GridError(
            f"a {patch_size} px field at {teacher_magnification:g}x is {side:g} px at {magnification:g}x; "
            "choose magnifications that divide the field into whole pixels"
        )
    return int(round(side))


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
