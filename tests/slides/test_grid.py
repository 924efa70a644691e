import numpy as np
import pytest

from wsidistill.slides.grid import GridError, PatchGrid, field_cell, magnification_name, patch_pixels


def test_patch_pixels_scales_field_of_view():
    assert [patch_pixels(256, m, 40) for m in (40, 20, 10, 5)] == [256, 128, 64, 32]
    assert patch_pixels(512, 1.25, 10) == 64


def test_patch_pixels_rejects_fractional_pixels_and_names_the_fix():
    with pytest.raises(GridError, match=r"9\.6 px at 3x.*`extraction.patch_size` \(--patch-size\) to a multiple of 40"):
        patch_pixels(128, 3, 40)
    with pytest.raises(GridError, match="multiple of 8"):
        patch_pixels(100, 5, 40)


def test_the_field_of_view_is_physical_and_whole_tiles_where_the_scanner_is_nominal():
    assert field_cell(256, 40, 0.25, 40) == 256
    assert field_cell(256, 40, 0.2520, 40) == 256  # Aperio 40x: within FIELD_TOLERANCE, whole 256 px tiles
    assert field_cell(256, 40, 0.2265, 40) == 283  # Hamamatsu 40x: 64 um, as on every other scanner
    assert field_cell(256, 40, 0.5, 20) == 128 and field_cell(256, 40, 0.4415, 20) == 145
    assert field_cell(128, 20, 0.25, 40) == 256


def test_magnification_name():
    assert magnification_name(40) == "40x" and magnification_name(2.5) == "2.5x"


def test_grid_covers_only_whole_cells_row_major():
    grid = PatchGrid.for_slide((1000, 530), 256)
    assert (grid.columns, grid.rows) == (3, 2)


def test_tissue_fraction_counts_mask_pixels_per_cell():
    grid = PatchGrid(cell=64, columns=2, rows=2)
    mask = np.zeros((8, 8), bool)  # downsample 16: each cell is 4x4 mask pixels
    mask[:4, :4] = True  # cell (0, 0) full
    mask[4:6, 4:8] = True  # cell (1, 1) half
    np.testing.assert_allclose(grid.tissue_fraction(mask, 16), [1, 0, 0, 0.5])


def test_extraction_grid_errors_name_the_slide_and_the_fix(tmp_path, capsys):
    from wsidistill.cli import main
    from wsidistill.demo import plan_cohort, write_slide

    slide = write_slide(plan_cohort(6, 0)[0], tmp_path, width=512, height=384)["slide"]
    assert main(["extract", str(slide), "--out", str(tmp_path / "s.zarr"), "--patch-size", "100",
                 "--magnifications", "40", "5"]) == 1
    error = capsys.readouterr().err
    assert "demo000.svs: a 100 px field at 40x is 12.5 px at 5x" in error and "multiple of 8" in error
