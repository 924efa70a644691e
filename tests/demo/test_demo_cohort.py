import csv

import openslide

from wsidistill.demo import plan_cohort, write_cohort, write_sample_sheet


def test_write_cohort_writes_every_slide_and_a_relative_sheet(tmp_path):
    sheet = write_cohort(tmp_path / "slides", 3, seed=4, width=512, height=512, workers=2)
    assert sheet == tmp_path / "slides" / "slides.tsv"
    rows = list(csv.DictReader(sheet.open(), delimiter="\t"))
    assert list(rows[0]) == ["slide_id", "path", "annotations", "patient_id", "split"]
    assert [r["slide_id"] for r in rows] == [s.slide_id for s in plan_cohort(3, 4)]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        assert not r["path"].startswith("/")
        with openslide.OpenSlide(sheet.parent / r["path"]) as slide:
            assert slide.dimensions == (512, 512)
        assert (sheet.parent / r["annotations"]).is_file()


def test_sample_sheet_paths_are_relative_to_the_sheet_directory(tmp_path):
    slides = plan_cohort(3, seed=0)
    sheet = write_sample_sheet(slides, tmp_path / "data" / "demo", tmp_path / "config" / "slides.tsv", variant="tiff")
    rows = list(csv.DictReader(sheet.open(), delimiter="\t"))
    assert rows[0]["path"] == "../data/demo/demo000.tiff"
    assert rows[0]["annotations"] == "../data/demo/demo000.geojson"
    assert [r["patient_id"] for r in rows] == [s.patient_id for s in slides]
