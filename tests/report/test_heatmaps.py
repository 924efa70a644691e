import numpy as np
import zarr
from PIL import Image

from wsidistill.report.heatmaps import blend_on_tissue, class_overlay, comparison_panel, slide_heatmap
from wsidistill.report.palette import class_rgb

CLASSES = ["NC", "G3", "G4", "G5"]


def test_class_regions_sit_where_the_layout_puts_them():
    # A 4x3 grid of 100 px cells: left half G3, right half G5, one cell without tissue.
    grid = {"columns": 4, "rows": 3}
    coords = np.array([[x * 100, y * 100] for y in range(3) for x in range(4) if (x, y) != (3, 2)])
    layout = np.where(coords[:, 0] < 200, 1, 3)
    overlay = class_overlay(layout, coords, 100, grid, CLASSES)
    rgb = class_rgb(CLASSES)
    for (x, y), label in zip(coords, layout):
        np.testing.assert_allclose(overlay[y // 100, x // 100, :3], rgb[label])
        assert overlay[y // 100, x // 100, 3] > 0
    assert overlay[2, 3, 3] == 0  # no tissue: transparent


def one_class_predictions(store_path, out, class_index):
    store = zarr.open_group(str(store_path), mode="r")
    n = store["coords"].shape[0]
    probabilities = np.zeros((n, len(CLASSES)), np.float32)
    probabilities[:, class_index] = 1
    root = zarr.open_group(str(out), mode="w")
    root.create_group(store.attrs["slide_id"]).create_array("probabilities", data=probabilities)
    return out


def test_a_model_that_always_predicts_one_class_gives_a_single_colour_map(demo_stores, tmp_path):
    store_path = demo_stores["test"][0]
    predictions = one_class_predictions(store_path, tmp_path / "p.zarr", 2)
    store = zarr.open_group(str(store_path), mode="r")
    overlay = class_overlay(np.full(store["coords"].shape[0], 2), store["coords"][:], store.attrs["cell_level0"],
                            store.attrs["grid"], CLASSES)
    visible = overlay[overlay[..., 3] > 0, :3]
    assert len(visible) == store["coords"].shape[0]
    assert np.unique(visible, axis=0).shape[0] == 1
    slide_heatmap(store_path, predictions, tmp_path / "h.png", title="constant G4")
    comparison_panel(store_path, {"a": predictions, "b": predictions}, tmp_path / "panel.png")
    image = np.asarray(Image.open(tmp_path / "h.png").convert("RGB")).astype(int)
    # The G4 colour blended over grey tissue dominates the prediction panel: orange, red > green > blue.
    right = image[: image.shape[0] // 2, image.shape[1] // 2 :]
    orange = (right[..., 0] - right[..., 2] > 60) & (right[..., 1] > right[..., 2])
    assert orange.sum() > 0.02 * right[..., 0].size
    assert Image.open(tmp_path / "panel.png").size[0] > Image.open(tmp_path / "panel.png").size[1]


def test_blend_on_tissue_is_straight_alpha_over_the_grey_thumbnail():
    # A 4x4 thumbnail at 50 level-0 px per px: left half (R, G, B) = (30, 60, 90) -> grey 60, right half white.
    thumbnail = np.zeros((4, 4, 3), np.uint8)
    thumbnail[:, :2] = (30, 60, 90)
    thumbnail[:, 2:] = 255
    # 2x2 grid of 100 px cells: cell (0, 0) pure red at alpha 0.5, cell (1, 1) transparent, no cell beyond.
    overlay = np.zeros((2, 2, 4), np.float32)
    overlay[0, 0] = (1, 0, 0, 0.5)
    full = blend_on_tissue(thumbnail, overlay, cell=100, downsample=50, max_side=4)
    assert full.shape == (4, 4, 3) and full.dtype == np.uint8
    np.testing.assert_array_equal(full[0, 0], (np.rint(60 * 0.5 + 255 * 0.5), 30, 30))  # (158, 30, 30)
    np.testing.assert_array_equal(full[3, 0], (60, 60, 60))  # cell (1, 0): transparent, grey shows
    np.testing.assert_array_equal(full[0, 3], (255, 255, 255))
    # max_side 2: box-averaged by 2 first, and each output pixel takes the cell under its centre
    half = blend_on_tissue(thumbnail, overlay, cell=100, downsample=50, max_side=2)
    assert half.shape == (2, 2, 3)
    np.testing.assert_array_equal(half[0, 0], full[0, 0])
    np.testing.assert_array_equal(half[1, 1], (255, 255, 255))
