"""SICAPv2 importer on a miniature fake SICAPv2 tree: the published file and sheet names, generated images."""

import cv2
import imagecodecs
import numpy as np
import pandas as pd
import pytest
import zarr

pytest.importorskip("openpyxl", reason="reading SICAPv2's .xlsx needs openpyxl")

from wsidistill.cli import main  # noqa: E402
from wsidistill.patches.dataset import load_patches  # noqa: E402
from wsidistill.patches.sicapv2 import SicapError, import_sicapv2  # noqa: E402

# slide -> (patient, the paper's split, one-hot class of each patch; "G4C" is cribriform G4)
SLIDES = {
    "16B0001851": ("1", "train", ["NC", "G3", "G4C"]),
    "16B0003394": ("2", "val", ["G4", "G5"]),
    "17B0019433": ("3", "test", ["NC", "G5"]),
}
SHEETS = {"train": "partition/Validation/Val1/Train.xlsx", "val": "partition/Validation/Val1/Test.xlsx",
          "test": "partition/Test/Test.xlsx"}
COLUMNS = ["image_name", "NC", "G3", "G4", "G5", "G4C"]


def patch_image(rng) -> np.ndarray:
    base = rng.integers(60, 250, (8, 8, 3)).astype(np.uint8)
    return cv2.resize(base, (512, 512), interpolation=cv2.INTER_CUBIC)


def row(name: str, grade: str) -> dict:
    values = {c: int(c == grade) for c in COLUMNS[1:]}
    values["G4"] |= values["G4C"]  # SICAPv2 marks cribriform patches as G4 too
    return {"image_name": name, **values}


@pytest.fixture
def sicap(tmp_path):
    root = tmp_path / "SICAPv2"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = {split: [] for split in SHEETS}
    images = {}
    for slide, (_, split, grades) in SLIDES.items():
        for i, grade in enumerate(grades):
            name = f"{slide}_Block_Region_1_{i}_0_xini_{512 * i + 7}_yini_{256 * i + 3}.jpg"
            images[name] = patch_image(rng)
            (root / "images" / name).write_bytes(imagecodecs.jpeg8_encode(images[name], level=95))
            rows[split].append(row(name, grade))
    for split, relative in SHEETS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows[split], columns=COLUMNS).to_excel(root / relative, index=False)
    pd.DataFrame(rows["train"] + rows["val"], columns=COLUMNS).to_excel(root / "partition/Test/Train.xlsx", index=False)
    pd.DataFrame({"slide_id": list(SLIDES), "patient_id": [int(p) for p, _, _ in SLIDES.values()],
                  "Gleason_primary": [3, 4, 5], "Gleason_secondary": [4, 5, 3]}).to_excel(root / "wsi_labels.xlsx",
                                                                                     index=False)
    return root, images


def test_import_keeps_the_papers_splits_and_the_store_layout(sicap, tmp_path):
    root, images = sicap
    sheet = pd.read_csv(import_sicapv2(root, tmp_path / "out"), sep="\t", dtype=str).set_index("slide_id")
    assert sheet.split.to_dict() == {s: split for s, (_, split, _) in SLIDES.items()}
    assert sheet.patient_id.to_dict() == {s: p for s, (p, _, _) in SLIDES.items()}
    for slide, (_, _, grades) in SLIDES.items():
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
        assert store["coords"][:].tolist() == [[512 * i + 7, 256 * i + 3] for i in range(len(grades))]
        assert store.attrs["patch_sizes"] == {"10x": 512, "5x": 256, "2.5x": 128}
        assert store.attrs["objective_power"] == 10 and store.attrs["split"] == SLIDES[slide][1]
    patches = load_patches([tmp_path / "out" / f"{s}.zarr" for s in SLIDES], [10, 2.5])
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
    val = pd.read_excel(root / SHEETS["val"])
    val.loc[0, "image_name"] = next(n for n in images if n.startswith("17B0019433")).replace("_0_0_", "_9_0_")
    val.to_excel(root / SHEETS["val"], index=False)
    with pytest.raises(SicapError, match=r"slides \['17B0019433'\] have patches in more than one split"):
        import_sicapv2(root, root / "out")
