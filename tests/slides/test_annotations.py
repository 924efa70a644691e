import json
import warnings

import numpy as np
import pytest

from wsidistill.slides.annotations import AnnotationError, class_fractions, majority_labels, read_annotations


def read_geojson(*args, **kwargs):
    return read_annotations(*args, **kwargs).regions

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


# --- every form QuPath and other tools write (issue 17, kind 1) ---------------------------------------------------

def write(tmp_path, data, name="a.geojson"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def polygon(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [square(x0, y0, x1, y1)]}


@pytest.mark.parametrize(("properties", "name"), [
    ({"classification": {"name": "Gleason 3", "color": [255, 200, 0]}}, "Gleason 3"),
    ({"classification": {"names": ["Gleason 3", "Positive"], "color": [1, 2, 3]}}, "Gleason 3: Positive"),
    ({"classification": "Gleason 3"}, "Gleason 3"),
    ({"name": "Gleason 3"}, "Gleason 3"),
    ({}, "<unnamed>"),
    ({"classification": None}, "<unnamed>"),
    ({"classification": {"color": [1, 2, 3]}}, "<unnamed>"),
])
def test_every_classification_form_is_read_as_qupath_displays_it(tmp_path, properties, name):
    path = write(tmp_path, {"type": "Feature", "geometry": polygon(0, 0, 10, 10), "properties": properties})
    regions = read_geojson(path, {name: "G3"}, CLASSES)
    assert regions["G3"].area == pytest.approx(100)


def test_feature_list_geometry_collection_and_multipolygon_with_holes(tmp_path):
    features = [
        {"type": "Feature", "properties": {"classification": "Benign"},
         "geometry": {"type": "GeometryCollection", "geometries": [
             polygon(0, 0, 10, 10), {"type": "LineString", "coordinates": [[0, 0], [50, 50]]}]}},
        {"type": "Feature", "properties": {"classification": "Gleason 5"},
         "geometry": {"type": "MultiPolygon", "coordinates": [[square(20, 0, 40, 20), square(25, 5, 35, 15)],
                                                              [square(50, 0, 60, 10)]]}},
    ]
    regions = read_geojson(write(tmp_path, features), CLASS_MAP, CLASSES)  # a bare list, as some tools export
    assert regions["NC"].area == pytest.approx(100)
    assert regions["G5"].area == pytest.approx(400 - 100 + 100)


def test_nested_feature_collections_and_bare_geometries_are_read(tmp_path):
    """Merged exports nest FeatureCollections in `features`; some tools write bare geometries (no Feature)."""
    nested = {"type": "FeatureCollection", "features": [
        {"type": "FeatureCollection", "features": [feature("Gleason 3", polygon(0, 0, 10, 10))]},
        feature("Gleason 5", polygon(20, 0, 30, 10))]}
    regions = read_geojson(write(tmp_path, nested), CLASS_MAP, CLASSES)
    assert regions["G3"].area == pytest.approx(100) and regions["G5"].area == pytest.approx(100)
    for data in (polygon(0, 0, 10, 20), [polygon(0, 0, 10, 10), polygon(0, 10, 10, 20)]):
        path = write(tmp_path, data, name="bare.geojson")
        with pytest.raises(AnnotationError, match=r"bare\.geojson: \['<unnamed>'\]"):
            read_geojson(path, CLASS_MAP, CLASSES)
        assert read_geojson(path, {"<unnamed>": "G4"}, CLASSES)["G4"].area == pytest.approx(200)


@pytest.mark.parametrize(("data", "class_map"), [
    ({"type": "FeatureCollection", "features": []}, CLASS_MAP),  # QuPath's export of a slide without annotations
    ([feature("Gleason 3", polygon(0, 0, 10, 10))], {"Gleason 3": None}),  # its only class mapped to null
    ([feature("Gleason 3", {"type": "MultiPolygon", "coordinates": [square(0, 0, 9, 9)]}),  # one nesting level short
      feature("Gleason 3", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]})], CLASS_MAP),
], ids=["empty", "all-null", "none-usable"])
def test_a_file_with_no_usable_annotation_gives_empty_regions(tmp_path, data, class_map):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = read_annotations(write(tmp_path, data), class_map, CLASSES)
    assert set(result.regions) == set(CLASSES) and all(g.is_empty for g in result.regions.values())
    assert result.undecided.is_empty and result.overlap_pairs == {}


def test_a_class_mapped_to_null_is_ignored(tmp_path):
    path = write(tmp_path, [feature("Gleason 3", polygon(0, 0, 10, 10)),
                            {"type": "Feature", "geometry": polygon(20, 0, 30, 10), "properties": {}},
                            feature("Tumor", polygon(40, 0, 50, 10))])
    regions = read_geojson(path, {**CLASS_MAP, "<unnamed>": None, "Tumor": None}, CLASSES)
    assert regions["G3"].area == pytest.approx(100) and sum(g.area for g in regions.values()) == pytest.approx(100)


def test_unusable_features_are_skipped_with_one_warning_counting_them(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}  # repairable
    path = write(tmp_path, {"type": "FeatureCollection", "features": [
        feature("Gleason 4", bowtie),
        feature("Gleason 4", None),
        feature("Gleason 4", {"type": "Point", "coordinates": [5, 5]}),
        feature("Gleason 4", {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
        feature("Gleason 4", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]}),  # no area
        feature("Gleason 4", {"type": "Polygon", "coordinates": "nonsense"}),
        "not a feature",
    ]})
    with pytest.warns(UserWarning) as caught:
        regions = read_geojson(path, CLASS_MAP, CLASSES)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "a.geojson: skipped 6 feature(s)" in messages[0], messages
    assert regions["G4"].area == pytest.approx(50)  # the bow-tie, repaired into its two triangles


MALFORMED = [
    "{not json",
    "",
    '"a string"',
    "42",
    "null",
    {"type": "FeatureCollection", "features": {"a": 1}},
    {"type": "FeatureCollection"},
    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0, 0, 9, 9)]},
     "properties": {"classification": 42}},
    [{"type": "Feature", "geometry": None, "properties": {"classification": ["Gleason 3"]}}],
    [{"type": "Feature", "geometry": None, "properties": {"classification": {"name": 7}}}],
    [{"type": "Feature", "geometry": None, "properties": {"classification": {"names": "Gleason 3"}}}],
    [{"type": "Feature", "geometry": None, "properties": {"classification": {"names": []}}}],
    [{"type": "Feature", "geometry": None, "properties": "Gleason 3"}],
    [{"type": "Feature", "geometry": polygon(0, 0, 9, 9), "properties": {"classification": "Tumour"}, "id": "abc"}],
]


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    from wsidistill.demo import plan_cohort, write_slide

    return write_slide(plan_cohort(6, 0)[0], tmp_path_factory.mktemp("slide"), width=512, height=384)["slide"]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_annotations_give_one_line_naming_the_file_never_a_traceback(tmp_path, data, small_slide, capsys):
    """Through the reader, the workflow's pre-flight check and the CLI: one AnnotationError line naming the file."""
    from wsidistill.cli import main
    from wsidistill.slides.annotations import check_annotation_classes

    path = write(tmp_path, data, name="bad.geojson")
    for check in (lambda: read_geojson(path, CLASS_MAP, CLASSES), lambda: check_annotation_classes([path], CLASS_MAP)):
        with pytest.raises(AnnotationError) as caught:
            check()
        assert "bad.geojson" in str(caught.value) and "\n" not in str(caught.value) and ".. " not in str(caught.value)
    capsys.readouterr()
    assert main(["extract", str(small_slide), "--out", str(tmp_path / "s.zarr"), "--annotations", str(path),
                 "--patch-size", "64", "--magnifications", "40", "10"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("wsidistill extract: error: ") and "bad.geojson" in error and error.count("\n") == 1
    assert not (tmp_path / "s.zarr").exists()


def test_errors_name_the_feature(tmp_path):
    path = write(tmp_path, [feature("Benign", polygon(0, 0, 9, 9)),
                            {**feature("Tumour", polygon(0, 0, 9, 9)), "id": "f-17"}])
    with pytest.raises(AnnotationError, match=r"a\.geojson: \['Tumour'\] \('Tumour' in feature 1 \(id f-17\)\)"):
        read_geojson(path, CLASS_MAP, CLASSES)
    path = write(tmp_path, [feature("Benign", polygon(0, 0, 9, 9)),
                            {"type": "Feature", "geometry": None, "properties": {"classification": 3}}])
    with pytest.raises(AnnotationError, match=r"a\.geojson: feature 1: classification 3 is neither"):
        read_geojson(path, CLASS_MAP, CLASSES)


# --- overlapping annotations of different classes (issue 17, kind 2) -----------------------------------------------

def nest_in_benign(tmp_path):
    """A Gleason 4 nest (cells 1..2 x 1..2) drawn inside a Benign region (cells 0..3), with no hole cut."""
    return write(tmp_path, [feature("Benign", polygon(0, 0, 400, 400)), feature("Gleason 4", polygon(100, 100, 300, 300))])


def cells(n=4, cell=100):
    ys, xs = np.mgrid[0:n, 0:n]
    return np.stack([xs.ravel(), ys.ravel()], 1) * cell


def test_a_nest_drawn_inside_a_larger_region_labels_its_patches_with_its_own_class(tmp_path):
    annotations = read_annotations(nest_in_benign(tmp_path), CLASS_MAP, CLASSES)
    fractions = class_fractions(annotations.regions, cells(), 100)
    labels = majority_labels(fractions, 0.5).reshape(4, 4)
    expected = np.zeros((4, 4), int)
    expected[1:3, 1:3] = 2  # G4
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(fractions.sum(1), 1)  # the nest's area is counted once
    assert annotations.overlap_pairs == {"NC/G4": 1} and annotations.overlaps["NC/G4"].area == pytest.approx(40000)


@pytest.mark.parametrize(("rule", "centre"), [("innermost", 2), ("smallest_area", 2), ("highest_class", 2),
                                             ("undecided", -1)])
def test_overlap_rules(tmp_path, rule, centre):
    annotations = read_annotations(nest_in_benign(tmp_path), CLASS_MAP, CLASSES, overlap=rule)
    coords = cells()
    fractions = class_fractions(annotations.regions, coords, 100)
    undecided = class_fractions({"u": annotations.undecided}, coords, 100)[:, 0]
    labels = majority_labels(fractions, 0.5, undecided).reshape(4, 4)
    assert labels[1, 1] == centre and labels[0, 0] == 0


def test_partial_overlap_is_undecided_under_innermost_and_the_patch_gets_minus_1(tmp_path):
    path = write(tmp_path, [feature("Gleason 3", polygon(0, 0, 200, 100)), feature("Gleason 5", polygon(100, 0, 300, 100))])
    annotations = read_annotations(path, CLASS_MAP, CLASSES)
    coords = np.array([[0, 0], [100, 0], [200, 0]])
    fractions = class_fractions(annotations.regions, coords, 100)
    undecided = class_fractions({"u": annotations.undecided}, coords, 100)[:, 0]
    assert majority_labels(fractions, 0.5, undecided).tolist() == [1, -1, 3]
    highest = read_annotations(path, CLASS_MAP, CLASSES, overlap="highest_class")
    assert majority_labels(class_fractions(highest.regions, coords, 100), 0.5).tolist() == [1, 3, 3]


def test_unknown_overlap_rule_names_the_config_key(tmp_path):
    with pytest.raises(AnnotationError, match="extraction.annotation_overlap"):
        read_geojson(nest_in_benign(tmp_path), CLASS_MAP, CLASSES, overlap="biggest")


def test_extraction_labels_a_nest_inside_benign_g4_and_counts_the_overlap(tmp_path, small_slide):
    import zarr

    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    path = write(tmp_path, [feature("Benign", polygon(0, 0, 512, 384)), feature("Gleason 4", polygon(128, 128, 320, 256))])
    settings = ExtractionSettings(classes=tuple(CLASSES), class_map=CLASS_MAP, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=64, min_tissue_fraction=0)
    summary = extract_slide(small_slide, tmp_path / "s.zarr", settings, slide_id="s", annotations=path, progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    coords, labels = root["coords"][:], root["labels"][:]
    inside = (coords[:, 0] >= 128) & (coords[:, 0] < 320) & (coords[:, 1] >= 128) & (coords[:, 1] < 256)
    assert inside.sum() == 6 and (labels[inside] == 2).all() and (labels[~inside] == 0).all()
    assert summary["patches_per_class"] == {"NC": 42, "G3": 0, "G4": 6, "G5": 0, "unlabelled": 0}
    assert summary["annotation_overlaps"] == {"NC/G4": {"annotation_pairs": 1, "patches": 6, "undecided_patches": 0}}
    assert summary["warnings"] == []


def test_three_nested_classes_each_win_inside_and_identical_shapes_of_two_classes_are_unlabelled_with_a_warning(
        tmp_path, small_slide):
    import zarr

    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    settings = ExtractionSettings(classes=tuple(CLASSES), class_map=CLASS_MAP, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=64, min_tissue_fraction=0)
    nested = write(tmp_path, [feature("Benign", polygon(0, 0, 512, 384)), feature("Gleason 3", polygon(64, 64, 448, 320)),
                              feature("Gleason 4", polygon(128, 128, 320, 256))], name="nested.geojson")
    summary = extract_slide(small_slide, tmp_path / "n.zarr", settings, slide_id="n", annotations=nested, progress=False)
    assert summary["patches_per_class"] == {"NC": 48 - 24, "G3": 24 - 6, "G4": 6, "G5": 0, "unlabelled": 0}
    assert summary["warnings"] == []
    twins = write(tmp_path, [feature("Gleason 3", polygon(64, 64, 448, 320)), feature("Gleason 4", polygon(64, 64, 448, 320))],
                  name="twins.geojson")
    with pytest.warns(UserWarning, match="twins.geojson: 24 patch"):
        summary = extract_slide(small_slide, tmp_path / "t.zarr", settings, slide_id="t", annotations=twins,
                                progress=False)
    labels = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["labels"][:]
    assert (labels == -1).all() and summary["annotation_overlaps"]["G3/G4"]["undecided_patches"] == 24
    assert len(summary["warnings"]) == 1 and "`extraction.annotation_overlap`" in summary["warnings"][0]
