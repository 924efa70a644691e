"""`wsidistill predict` on a demo slide: agreement with `evaluate`, the QuPath GeoJSON, the per-slide outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import shapely
import zarr

from wsidistill.device import InferenceSettings
from wsidistill.evaluation.evaluate import evaluate_model
from wsidistill.patches.store import PredictionAttributes, read_attributes
from wsidistill.predict import predict_slides
from wsidistill.report.palette import class_rgb

CLASSES = ("NC", "G3", "G4", "G5")


def _matched(evaluated: zarr.Group, predicted: zarr.Group) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the patches both hold, matched by level-0 corner."""
    rows = {tuple(c): i for i, c in enumerate(evaluated["coords"][:].tolist())}
    pairs = [(rows[tuple(c)], j) for j, c in enumerate(predicted["coords"][:].tolist()) if tuple(c) in rows]
    mine, theirs = map(np.array, zip(*pairs))
    return evaluated["probabilities"][:][mine], predicted["probabilities"][:][theirs]


#: Full-batch training steps per magnification: each model fits the tiny store (>= 95% of its labels, every class).
FIT_STEPS = {40: 10, 20: 30, 5: 100}


@pytest.mark.parametrize("magnification", [40, 20, 5])
def test_predict_on_the_slide_agrees_with_evaluate_on_its_store(tmp_path, test_slide, make_checkpoint,
                                                                 magnification):
    model = make_checkpoint(tmp_path / "model.pt", magnification, fit_on=test_slide["store"],
                            steps=FIT_STEPS[magnification])
    evaluate_model(model, [str(test_slide["store"])], tmp_path / "evaluated.zarr", tmp_path / "metrics.json",
                   settings=InferenceSettings(progress=False))
    predict_slides([test_slide["slide"]], model, tmp_path / "out", progress=False)
    evaluated = zarr.open_group(str(tmp_path / "evaluated.zarr"), mode="r")[test_slide["slide_id"]]
    predicted = zarr.open_group(str(tmp_path / "out" / f"{test_slide['slide_id']}.zarr"), mode="r")
    assert predicted["coords"].shape[0] == evaluated["coords"].shape[0] > 30  # the same tissue patches
    theirs, mine = _matched(evaluated, predicted)
    assert len(mine) == evaluated["coords"].shape[0]
    assert len(np.unique(mine.argmax(1))) >= 3  # a trained model: several classes, not one everywhere
    assert (mine.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    if magnification >= 20:  # both read the 40x level and area-downsample it: the same pixels, the same numbers
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    # 5x: predict reads the slide's own 10x level (JPEG Q90, 2.2 grey levels from extraction's 5x pixels, which
    # are averaged from the 40x level every magnification of the store shares): the class agrees, not every digit
    attrs = predicted.attrs
    assert attrs["magnification"] == magnification and attrs["classes"] == list(CLASSES)
    assert attrs["mpp"] == pytest.approx(attrs["slide_mpp"] * 40 / magnification)
    assert attrs["read_level"] == (0 if magnification > 10 else 1)  # 40x, 10x level: never upsampled
    typed = PredictionAttributes.from_dict(dict(attrs))  # every attribute is a declared one, in write order
    assert typed.extra == {} and list(typed.to_dict().items()) == list(dict(attrs).items())
    assert typed.geometry() == read_attributes(predicted).geometry()  # read as a patch store is, by heatmaps


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, test_slide, make_checkpoint):
    out = tmp_path_factory.mktemp("predicted")
    model = make_checkpoint(out / "model.pt", 5, seed=1)
    records = predict_slides([test_slide["slide"]], model, out / "out", progress=False)
    return out / "out", records[0], test_slide


def test_geojson_follows_qupath_conventions(predicted):
    out, record, slide = predicted
    collection = json.loads((out / f"{slide['slide_id']}.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    store = zarr.open_group(str(out / f"{slide['slide_id']}.zarr"), mode="r")
    assert len(features) == record["tissue_patches"] == store["coords"].shape[0]
    width, height = store.attrs["slide"]["dimensions"]
    bounds = shapely.box(0, 0, width, height)
    colors = dict(zip(CLASSES, (np.round(class_rgb(CLASSES) * 255).astype(int).tolist())))
    ids = set()
    for feature, (x, y), probabilities in zip(features, store["coords"][:], store["probabilities"][:]):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5  # closed
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and bounds.contains(polygon)
        assert polygon.bounds == (x, y, x + store.attrs["cell_level0"], y + store.attrs["cell_level0"])
        properties = feature["properties"]
        assert properties["objectType"] in ("tile", "detection")
        classification = properties["classification"]
        assert classification["name"] == CLASSES[int(np.argmax(probabilities))]
        color = classification["color"]
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        assert color == colors[classification["name"]]
        measured = properties["measurements"]
        assert list(measured) == [f"P({c})" for c in CLASSES]
        assert sum(measured.values()) == pytest.approx(1, abs=1e-4)
        np.testing.assert_allclose(list(measured.values()), probabilities, atol=1e-6)
        ids.add(feature["id"])
    assert len(ids) == len(features)


def test_per_slide_grade_json_heatmap_and_summary(predicted, tmp_path):
    from wsidistill.evaluation.grading import grade_from_patch_labels

    out, record, slide = predicted
    store = zarr.open_group(str(out / f"{slide['slide_id']}.zarr"), mode="r")
    grade = grade_from_patch_labels(store["probabilities"][:].argmax(1), CLASSES)
    saved = json.loads((out / f"{slide['slide_id']}.json").read_text())
    assert saved["grade_group"] == grade.grade_group and saved["gleason_score"] == grade.score
    assert saved["tissue_patches"] == sum(saved["patches_per_class"].values())
    assert (out / f"{slide['slide_id']}.png").stat().st_size > 10_000
    # predict draws the heatmap from the arrays in memory: the same pixels as drawn from the store it wrote
    from PIL import Image

    from wsidistill.report.heatmaps import prediction_heatmap

    title = f"{saved['method']} {saved['magnification']}"
    prediction_heatmap(out / f"{slide['slide_id']}.zarr", tmp_path / "from_store.png", title=title)
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{slide['slide_id']}.png")),
                                  np.asarray(Image.open(tmp_path / "from_store.png")))
    summary = pd.read_csv(out / "summary.csv")
    assert summary.slide_id.tolist() == [slide["slide_id"]] and summary.status.tolist() == ["ok"]
    assert summary.grade_group.tolist() == [grade.grade_group]
