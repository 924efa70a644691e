import json

import numpy as np
import pytest

from wsidistill.slides.annotations import AnnotationError, class_fractions, majority_labels, read_geojson

CLASSES = ["NC", "G3", "G4", "G5"]
CLASS_MAP = {"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"}


def feature(name, geometry):
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture
def geojson(tmp_path):
    features = [
        # G4 square 0..200 with a 50x50 hole at 25..75: area 40000 - 2500.
        feature("Gleason 4", {"type": "Polygon", "coordinates": [square(0, 0, 200, 200), square(25, 25, 75, 75)]}),
        # G3 multipolygon: two 100x100 squares in the second column of cells.
        feature("Gleason 3", {"type": "MultiPolygon", "coordinates": [[square(200, 0, 300, 100)],
                                                                      [square(300, 100, 400, 200)]]}),
    ]
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_class_fractions_match_hand_computed_areas_with_hole(geojson):
    regions = read_geojson(geojson, CLASS_MAP, CLASSES, (400, 200))
    assert regions["G4"].area == pytest.approx(40000 - 2500)
    coords = np.array([[0, 0], [100, 0], [0, 100], [200, 0], [300, 100], [300, 0]])
    fractions = class_fractions(regions, coords, 100)
    expected = np.zeros((6, 4))
    expected[0, 2] = (10000 - 2500) / 10000  # the hole lies inside cell (0, 0) ... all of it
    expected[1, 2] = 1.0
    expected[2, 2] = 1.0
    expected[3, 1] = 1.0
    expected[4, 1] = 1.0
    np.testing.assert_allclose(fractions, expected)
    labels = majority_labels(fractions, 0.8)
    assert labels.tolist() == [-1, 2, 2, 1, 1, -1]


def test_hole_straddling_cells_splits_its_area(tmp_path):
    path = tmp_path / "a.geojson"
    hole = square(50, 50, 150, 150)  # 100x100 hole centred on the corner shared by 4 cells
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature("Gleason 5", {"type": "Polygon", "coordinates": [square(0, 0, 200, 200), hole]})]}))
    regions = read_geojson(path, CLASS_MAP, CLASSES)
    fractions = class_fractions(regions, np.array([[0, 0], [100, 0], [0, 100], [100, 100]]), 100)
    np.testing.assert_allclose(fractions[:, 3], [0.75] * 4)


def test_unknown_class_names_the_file_and_the_config_key(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [feature("Tumour", {"type": "Polygon", "coordinates": [square(0, 0, 9, 9)]})]}))
    with pytest.raises(AnnotationError, match=r"bad\.geojson.*'Tumour'.*annotation_classes"):
        read_geojson(path, CLASS_MAP, CLASSES)


def test_annotations_outside_the_slide_are_clipped_with_a_warning(tmp_path):
    path = tmp_path / "out.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature("Benign", {"type": "Polygon", "coordinates": [square(-50, 0, 100, 100)]})]}))
    with pytest.warns(UserWarning, match="clipped"):
        regions = read_geojson(path, CLASS_MAP, CLASSES, (1000, 1000))
    assert regions["NC"].area == pytest.approx(100 * 100)
