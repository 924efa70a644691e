"""Issue 17, kinds 7 and 8: an unlabelled test slide is predicted and drawn but left out of every metric;
a class absent from the training or test split is warned about, in the metrics JSON and in comparison.md."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from wsidistill.cli import main
from wsidistill.device import InferenceSettings
from wsidistill.evaluation.evaluate import evaluate_model
from wsidistill.evaluation.metrics import quadratic_kappa
from wsidistill.evaluation.splits import class_counts
from wsidistill.models import build_model
from wsidistill.models.checkpoint import ModelMeta, save_model
from wsidistill.report.heatmaps import comparison_panel, slide_heatmap
from wsidistill.report.slides import slide_grades
from wsidistill.report.tables import comparison_cells, comparison_frame, comparison_markdown, evaluation_warnings

CLASSES = ["NC", "G3", "G4", "G5"]
CLASS_MAP = {"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"}
SETTINGS = InferenceSettings(device="cpu", progress=False)


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory):
    """A demo test slide extracted without its annotations, as a sheet row with an empty `annotations` is."""
    from wsidistill.demo import plan_cohort, write_slide
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    root = tmp_path_factory.mktemp("unlabelled")
    slide = next(s for s in plan_cohort(6, 3) if s.split == "test")
    files = write_slide(slide, root, width=768, height=512)
    store = root / "no-labels.zarr"
    settings = ExtractionSettings(classes=tuple(CLASSES), class_map=CLASS_MAP, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=32)
    extract_slide(files["slide"], store, settings, slide_id="no-labels", progress=False)
    return store


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained 40x smallcnn whose metadata says G5 had no training patch."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "teacher" / "seed0" / "model.pt"
    path.parent.mkdir(parents=True)
    meta = ModelMeta(arch="smallcnn", num_classes=4, classes=CLASSES, magnification=40, teacher_magnification=40,
                     output_stride=8, patch_side=32, method="teacher", seed=0,
                     train_patches_per_class={"NC": 50, "G3": 20, "G4": 10, "G5": 0})
    save_model(path, build_model("smallcnn", 4, output_stride=8).state_dict(), meta)
    return path


def test_an_unlabelled_test_slide_is_predicted_and_left_out_of_the_metrics(demo_stores, unlabelled_store, model,
                                                                           tmp_path):
    labelled = demo_stores["test"][0]
    assert not (zarr.open_group(str(unlabelled_store), mode="r")["labels"][:] >= 0).any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluate_model(model, [str(labelled), str(unlabelled_store)], tmp_path / "p.zarr",
                                 tmp_path / "m.json", settings=SETTINGS)
    predictions = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    patches = zarr.open_group(str(unlabelled_store), mode="r")["coords"].shape[0]
    assert predictions["no-labels"]["probabilities"].shape == (patches, 4) and patches > 20
    assert predictions["no-labels"].attrs["labelled"] is False
    # The metrics are those of the labelled slide alone.
    slide_id = labelled.stem
    truth = zarr.open_group(str(labelled), mode="r")["labels"][:]
    predicted = predictions[slide_id]["probabilities"][:].argmax(1)[truth >= 0]
    assert metrics["unlabelled_slides"] == ["no-labels"] and metrics["test_slides"] == 2
    assert metrics["test_patches"] == int((truth >= 0).sum())
    assert set(metrics["per_patch"]["slide"]) == {slide_id}
    assert metrics["quadratic_kappa"] == pytest.approx(quadratic_kappa(truth[truth >= 0], predicted, 4))
    # Kind 8: G5 had no training patch (the checkpoint says so); warned in the log and kept in the JSON.
    assert metrics["absent_classes"]["train"] == ["G5"]
    assert any("'G5' has no labelled patch in the train split" in str(w.message) for w in caught)
    assert any("no-labels (unlabelled)" in str(w.message) for w in caught)
    assert json.loads((tmp_path / "m.json").read_text())["warnings"] == metrics["warnings"]

    # Heatmaps are drawn for it, the annotation panel saying it is unlabelled.
    slide_heatmap(unlabelled_store, tmp_path / "p.zarr", tmp_path / "h.png", title="teacher")
    comparison_panel(unlabelled_store, {"teacher": tmp_path / "p.zarr"}, tmp_path / "panel.png")
    assert (tmp_path / "h.png").stat().st_size > 1000 and (tmp_path / "panel.png").stat().st_size > 1000

    # Slide grades: the unlabelled slide is listed with its predicted grade, and left out of the summary.
    frame = slide_grades({"teacher": tmp_path / "p.zarr"}, [labelled, unlabelled_store])
    row = frame[frame.slide_id == "no-labels"].iloc[0]
    assert row.reference == "unlabelled" and pd.isna(row.true_grade_group) and pd.notna(row.predicted_grade_group)
    summary = frame[frame.slide_id == "ALL"].iloc[0]
    kept = frame[frame.slide_id == slide_id].iloc[0]
    assert summary.grade_group_accuracy == float(kept.true_grade_group == kept.predicted_grade_group)
    assert summary.reference == "1 labelled slides, 1 unlabelled left out"


def test_only_unlabelled_test_slides_give_predictions_and_no_metrics(unlabelled_store, model, tmp_path, capsys):
    out = tmp_path / "m.json"
    status = main(["evaluate", "--model", str(model), "--stores", str(unlabelled_store), "--predictions",
                   str(tmp_path / "p.zarr"), "--metrics", str(out), "--confusion-csv", str(tmp_path / "c.csv"),
                   "--device", "cpu"])
    assert status == 0
    assert "no labelled test patch on 1 test slides" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["quadratic_kappa"] is None and metrics["n"] == 0 and metrics["ci95"]["quadratic_kappa"] is None
    assert zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["no-labels"]["probabilities"].shape[0] > 20
    frame = slide_grades({"teacher": tmp_path / "p.zarr"}, [unlabelled_store])
    assert frame.iloc[-1].slide_id == "ALL" and pd.isna(frame.iloc[-1].grade_group_kappa)
    table = comparison_frame([metrics], n_boot=10)
    assert comparison_cells(table, "kappa") == (["method", "40x"], [["teacher", "n/a"]])


def _result(method, seed, truth, predicted, warnings_=()):
    from wsidistill.evaluation.metrics import summarise

    return {"method": method, "magnification": 10, "seed": seed, "classes": CLASSES,
            **summarise(np.array(truth), np.array(predicted), 4), "warnings": list(warnings_),
            "per_patch": {"truth": truth, "predicted": predicted, "slide": [f"s{i % 3}" for i in range(len(truth))]}}


def test_comparison_md_lists_each_split_warning_once_with_its_models():
    truth = [0, 1, 2, 0, 1, 2]  # G5 absent from the test split
    line = "class 'G5' has no labelled patch in the test split: ..."
    results = [_result("ce", 0, truth, truth, [line]), _result("ce", 1, truth, truth, [line]),
               _result("fm", 0, truth, truth, [line, "only fm's"])]
    notes = evaluation_warnings(results)
    assert notes == [f"{line} (every model)", "only fm's (fm 10x seed 0)"]
    markdown = comparison_markdown(comparison_frame(results, n_boot=10), warnings=notes)
    assert markdown.split("### Warnings")[1].strip().splitlines() == [f"- {note}" for note in notes]
    assert class_counts(np.array(truth + [-1]), CLASSES) == {"NC": 2, "G3": 2, "G4": 2, "G5": 0}
