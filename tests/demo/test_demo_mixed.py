"""`wsidistill demo-mixed`: the mixed real-world cohort's files, sheet and config overlay (the workflow run on
it is tests/test_cohort.py)."""

import json

import yaml

from wsidistill.cli import main
from wsidistill.demo.mixed import KINDS
from wsidistill.slides.geojson import check_annotation_classes
from wsidistill.slides.reader import Slide
from wsidistill.slides.samples import load_sample_sheet


def test_demo_mixed_writes_a_sheet_the_preflight_accepts_and_an_overlay(tmp_path, capsys):
    assert main(["demo-mixed", "--out", str(tmp_path / "cohort"), "--width", "256", "--height", "256"]) == 0
    overlay_path = tmp_path / "cohort" / "config.yaml"
    assert capsys.readouterr().out.strip() == str(overlay_path)
    overlay = yaml.safe_load(overlay_path.read_text())
    assert overlay["demo"] == {"enabled": False} and overlay["samples"] == str(tmp_path / "cohort" / "slides.tsv")
    assert overlay["annotation_classes"]["Gleason 4"] == "G4" and overlay["annotation_classes"]["Pen mark"] is None
    sheet = load_sample_sheet(overlay["samples"])  # every path exists
    assert list(zip(sheet.slide_id, sheet.split)) == list(KINDS)
    check_annotation_classes([p for p in sheet.annotations if p], overlay["annotation_classes"])  # the pre-flight
    assert sheet.annotations["panda"] == sheet.annotations["unannotated"] == ""
    assert sheet.label_mask["panda"].endswith("panda_mask.tiff")
    vendors = {}
    for row in sheet.itertuples():
        with Slide(row.path) as slide:
            assert slide.info.dimensions == (256, 256) and slide.info.objective_power == 40
            vendors[row.slide_id] = slide.info.vendor
    assert vendors["svs"] == "aperio" and vendors["dicom"] == "dicom"
    own = [f["properties"]["classification"] for f in
           json.loads((tmp_path / "cohort" / "own_names.geojson").read_text())["features"]]
    assert own[-1] == {"name": "Pen mark"} and len(own) >= 2
    assert all(c in ("Benign glands", "GP3", "GP5", {"names": ["GP4", "Cribriform"]}) for c in own[:-1])
