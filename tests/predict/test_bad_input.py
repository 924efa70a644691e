"""Bad input to `wsidistill predict`: one line naming the file, the other slides go on, exit status 1."""

import numpy as np
import pandas as pd
import pytest

from wsidistill.cli import main
from wsidistill.demo import plan_cohort, write_slide
from wsidistill.demo.formats import aperio_description, write_pyramid


@pytest.fixture(scope="module")
def slides(tmp_path_factory, test_slide):
    """The 40x test slide, a 20x-only scan and a blank (tissue-free) 40x SVS."""
    root = tmp_path_factory.mktemp("bad_slides")
    scan20 = write_slide(plan_cohort(6, 2)[0], root / "scan20", width=1024, height=768, variant="svs20")["slide"]
    blank = root / "blank.svs"
    white = np.full((512, 1024, 3), 243, np.uint8)
    write_pyramid(blank, ((y, white) for y in (0, 512)), 1024, 1024,
                  description=aperio_description(1024, 1024, 40, 0.25, "blank"), mpp=0.25, aperio=True)
    return {"good": test_slide["slide"], "scan20": scan20, "blank": blank}


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "wsidistill predict: error:" in line]


def test_bad_slides_are_reported_in_one_line_each_and_the_others_go_on(tmp_path, slides, make_checkpoint, capsys):
    model = make_checkpoint(tmp_path / "teacher.pt", 40)
    out = tmp_path / "out"
    status = main(["predict", str(slides["scan20"]), str(slides["good"]), str(slides["blank"]),
                   "--model", str(model), "--out", str(out)])
    assert status == 1
    errors = _error_lines(capsys)
    assert len(errors) == 3  # one per bad slide, then the run's summary of failures
    lacking, blank, summary = errors
    assert str(slides["scan20"]) in lacking and "40x" in lacking and "20x" in lacking and "upsampled" in lacking
    assert str(slides["blank"]) in blank and "no tissue" in blank
    assert "2 of 3 slides failed" in summary and slides["scan20"].stem in summary and "blank" in summary
    good = slides["good"].stem
    assert {p.name for p in out.iterdir()} >= {f"{good}.zarr", f"{good}.png", f"{good}.geojson", f"{good}.json"}
    assert not any(p.name.startswith(("blank", slides["scan20"].stem)) for p in out.iterdir())
    table = pd.read_csv(out / "summary.csv")
    assert table.status.tolist() == ["failed", "ok", "failed"]
    assert table.error.isna().tolist() == [False, True, False]


def test_a_20x_slide_is_fine_for_a_student_at_20x_or_below(tmp_path, slides, make_checkpoint):
    model = make_checkpoint(tmp_path / "student.pt", 10)
    assert main(["predict", str(slides["scan20"]), "--model", str(model), "--out", str(tmp_path / "out")]) == 0


def test_an_objective_power_override_lets_the_teacher_read_a_20x_scan(tmp_path, slides, make_checkpoint):
    """--objective-power (the predict sheet's column) replaces the slide's own metadata, as for extraction."""
    import zarr

    model = make_checkpoint(tmp_path / "teacher.pt", 40)
    out = tmp_path / "out"
    assert main(["predict", str(slides["scan20"]), "--model", str(model), "--out", str(out),
                 "--objective-power", "40"]) == 0
    attrs = zarr.open_group(str(out / f"{slides['scan20'].stem}.zarr"), mode="r").attrs
    assert attrs["objective_power"] == 40 and attrs["objective_power_source"] == "sample sheet"


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""])
def test_a_file_that_is_not_a_checkpoint(tmp_path, slides, capsys, content):
    model = tmp_path / "model.pt"
    model.write_bytes(content)
    assert main(["predict", str(slides["good"]), "--model", str(model), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(model) in err and "not a wsidistill model checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_model_metadata(tmp_path, slides, capsys):
    import torch

    model = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, model)
    assert main(["predict", str(slides["good"]), "--model", str(model), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(model) in err


def test_workflow_plans_predict_only_when_enabled(tmp_path, repo_root, run_snakemake, slides):
    import yaml

    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert "predict" not in run_snakemake(tmp_path, "-n").stdout.split("Job stats")[-1].split()  # off by default
    (tmp_path / "new.tsv").write_text(f"slide_id\tpath\tobjective_power\nnew1\t{slides['good']}\t\n"
                                      f"new2\t{slides['scan20']}\t40\n")
    config["predict"] = dict(enabled=True, samples=str(tmp_path / "new.tsv"), model="ce_5x", seed=0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n", "-p")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = {slide: line for line in (result.stdout + result.stderr).splitlines() if "wsidistill predict " in line
                for slide in ("new1", "new2") if f"--slide-id {slide} " in line}
    assert "--objective-power" not in commands["new1"] and "--objective-power 40" in commands["new2"]  # the sheet's
    for path in ("results/predict/ce_5x_seed0/new1.geojson", "results/predict/ce_5x_seed0/new2.json",
                 "results/predict/ce_5x_seed0/summary.csv", "results/models/ce_5x/seed0/model.pt"):
        assert path in result.stdout
    config["predict"]["model"] = "nosuch_5x"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n")
    assert result.returncode != 0 and "predict.model 'nosuch_5x'" in result.stdout + result.stderr
