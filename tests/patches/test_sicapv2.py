"""SICAPv2 importer on a miniature fake SICAPv2 tree (fixture ``sicap`` in conftest.py)."""

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import zarr

from wsidistill.cli import main
from wsidistill.patches.dataset import load_patches
from wsidistill.patches.sicapv2 import SPLIT_SHEETS, SicapError, heatmap_cell, import_sicapv2


def test_import_keeps_the_papers_splits_and_the_store_layout(sicap, sicap_slides, tmp_path):
    root, images = sicap
    sheet = pd.read_csv(import_sicapv2(root, tmp_path / "out"), sep="\t", dtype=str).set_index("slide_id")
    assert sheet.split.to_dict() == {s: split for s, (_, split, _) in sicap_slides.items()}
    assert sheet.patient_id.to_dict() == {s: p for s, (p, _, _) in sicap_slides.items()}
    for slide, (_, _, grades) in sicap_slides.items():
        store = zarr.open_group(str(tmp_path / "out" / f"{slide}.zarr"), mode="r")
        names = [n for n in images if n.startswith(slide)]
        assert store["10x/images"].shape == (len(names), 512, 512, 3)
        for i, name in enumerate(names):  # names are in (y, x) order already
            decoded = imagecodecs.jpeg8_decode((root / "images" / name).read_bytes())
            np.testing.assert_array_equal(store["10x/images"][i], decoded)
            for magnification, side in (("5x", 256), ("2.5x", 128)):
                expected = decoded.reshape(side, 512 // side, side, 512 // side, 3).mean(axis=(1, 3))
                assert np.abs(store[f"{magnification}/images"][i] - expected).max() <= 1
        expected_labels = [("NC", "G3", "G4", "G5").index("G4" if g == "G4C" else g) for g in grades]
        assert store["labels"][:].tolist() == expected_labels
        assert store["coords"][:].tolist() == [[256 * i + 7, 256 * (i // 2) + 3] for i in range(len(grades))]
        assert store.attrs["patch_sizes"] == {"10x": 512, "5x": 256, "2.5x": 128}
        assert store.attrs["objective_power"] == 10 and store.attrs["split"] == sicap_slides[slide][1]
        # Overlapping patches (origins 256 px apart) each get a heatmap cell of their own.
        coords = store["coords"][:]
        assert store.attrs["cell_level0"] == 256 and store.attrs["thumbnail_downsample"] == 256
        cells = coords // store.attrs["cell_level0"]  # (column, row) of each patch's heatmap cell
        assert len({tuple(c) for c in cells.tolist()}) == len(coords)
        assert (cells < (store.attrs["grid"]["columns"], store.attrs["grid"]["rows"])).all()
        assert store["thumbnail"].shape[:2] == (store.attrs["grid"]["rows"], store.attrs["grid"]["columns"])
    patches = load_patches([tmp_path / "out" / f"{s}.zarr" for s in sicap_slides], [10, 2.5])
    assert len(patches) == 7 and patches.images["2.5x"].shape[1:] == (128, 128, 3)


def test_the_command_line_imports_and_names_missing_images(sicap, tmp_path, capsys):
    root, images = sicap
    assert main(["import-sicapv2", str(root), "--out", str(tmp_path / "out"), "--threads", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("slides.tsv")
    (root / "images" / next(iter(images))).unlink()
    assert main(["import-sicapv2", str(root), "--out", str(tmp_path / "again")]) == 1
    assert "images: 1 images listed in the partition sheets are missing" in capsys.readouterr().err


def test_a_slide_in_two_splits_is_refused(sicap):
    root, images = sicap
    val = pd.read_excel(root / SPLIT_SHEETS["val"])
    val.loc[0, "image_name"] = next(n for n in images if n.startswith("17B0019433")).replace("_0_0_", "_9_0_")
    val.to_excel(root / SPLIT_SHEETS["val"], index=False)
    with pytest.raises(SicapError, match=r"slides \['17B0019433'\] have patches in more than one split"):
        import_sicapv2(root, root / "out")


def test_slides_are_planned_from_the_sheets_and_imported_one_by_one(sicap, sicap_slides, tmp_path, capsys):
    from wsidistill.patches.sicapv2 import read_slides

    root, _ = sicap
    slides = read_slides(root).set_index("slide_id")
    assert slides.split.to_dict() == {s: split for s, (_, split, _) in sicap_slides.items()}
    assert slides.patient_id.to_dict() == {s: p for s, (p, _, _) in sicap_slides.items()}
    assert slides.patches.to_dict() == {s: len(grades) for s, (_, _, grades) in sicap_slides.items()}
    assert main(["import-sicapv2", str(root), "--out", str(tmp_path / "one"), "--slide", "16B0003394",
                 "--magnifications", "10", "1.25"]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["16B0003394.json", "16B0003394.zarr"]
    assert zarr.open_group(str(tmp_path / "one/16B0003394.zarr"), mode="r")["1.25x/images"].shape == (2, 64, 64, 3)
    capsys.readouterr()
    assert main(["import-sicapv2", str(root), "--out", str(tmp_path / "two"), "--slide", "99B0000000"]) == 1
    assert "slides ['99B0000000'] are in none of the partition sheets" in capsys.readouterr().err


def test_the_heatmap_cell_is_the_step_between_patch_origins():
    assert heatmap_cell(np.array([[7, 3], [263, 3], [519, 259]])) == 256  # half-overlapping, as SICAPv2
    assert heatmap_cell(np.array([[0, 0], [512, 0], [1024, 512]])) == 512  # adjacent patches
    assert heatmap_cell(np.array([[0, 0]])) == 512  # a single patch
    assert heatmap_cell(np.array([[0, 0], [1, 0]])) == 64  # irregular origins: bounded grid
