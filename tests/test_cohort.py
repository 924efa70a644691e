"""The mixed real-world cohort end to end (issue 17, acceptance 4), on the shared tiny workflow run.

tiny_run's cohort (wsidistill.demo.mixed) has one slide per format and annotation kind. Each slide's
source (the plain demo SVS with standard-named GeoJSON, under cohort/sources) is extracted here in-process
with the run's settings: every format must give the patches and labels of its source.
"""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from wsidistill.demo.formats import draw_marker_stroke
from wsidistill.demo.mixed import KINDS, MARKER_WIDTH_PER_512, TIFF_MPP
from wsidistill.slides.annotations import context_labels, majority_labels

CLASSES = ["NC", "G3", "G4", "G5"]


@pytest.fixture(scope="module")
def cohort(tiny_run):
    workdir, config = tiny_run
    sheet = pd.read_csv(workdir / config["samples"], sep="\t", keep_default_na=False).set_index("slide_id")
    return workdir, config, sheet


@pytest.fixture(scope="module")
def sources(cohort, tmp_path_factory):
    """slide id -> the store of its source slide, extracted in-process with the run's settings."""
    from wsidistill.patches.extract import EXTRACTION_DEFAULTS, ExtractionSettings, extract_slide

    workdir, config, sheet = cohort
    settings = ExtractionSettings(
        classes=tuple(config["classes"]), class_map=config["annotation_classes"], magnifications=(40, 10),
        teacher_magnification=40, **{key: config["extraction"].get(key, EXTRACTION_DEFAULTS[key])
                                     for key in EXTRACTION_DEFAULTS})
    out = tmp_path_factory.mktemp("sources")
    source_dir = (workdir / config["samples"]).parent / "sources"
    for slide_id in sheet.index:
        extract_slide(source_dir / f"{slide_id}.svs", out / f"{slide_id}.zarr", settings, slide_id=slide_id,
                      annotations=source_dir / f"{slide_id}.geojson", progress=False)
    return {slide_id: zarr.open_group(str(out / f"{slide_id}.zarr"), mode="r") for slide_id in sheet.index}


def store(workdir, slide_id):
    return zarr.open_group(str(workdir / f"results/patches/{slide_id}.zarr"), mode="r")


def patches(group) -> dict[tuple[int, int], int]:
    """(x, y) level-0 corner -> label."""
    return {tuple(map(int, xy)): int(label) for xy, label in zip(group["coords"][:], group["labels"][:])}


def test_the_cohort_has_every_kind_in_its_split(cohort):
    workdir, _, sheet = cohort
    assert [(slide_id, row.split) for slide_id, row in sheet.iterrows()] == list(KINDS)
    assert (workdir / "cohort" / sheet.path["dicom"]).is_dir()  # the series folder, as the sheet names it
    readers = {slide_id: store(workdir, slide_id).attrs["slide"]["pixel_reader"] for slide_id in sheet.index}
    assert readers["dicom"] == "openslide" and readers["ome"] == readers["svs"] == "tiff tiles"
    for slide_id in sheet.index:
        assert (workdir / f"results/patches/{slide_id}.qc.png").stat().st_size > 1_000


@pytest.mark.parametrize("slide_id", ["svs", "ome", "own_names"])
def test_a_lossless_format_and_renamed_classes_give_the_source_patches_and_labels(cohort, sources, slide_id):
    """SVS as it is, the OME-TIFF (the SVS's pyramid losslessly, in SubIFDs) and the GeoJSON in the lab's
    own class names (mapped via annotation_classes): the very patches and labels of the source slide."""
    workdir, _, _ = cohort
    ours, theirs = patches(store(workdir, slide_id)), patches(sources[slide_id])
    assert len(ours) > 20 and ours == theirs
    assert len({label for label in ours.values() if label >= 0}) >= 1


def test_own_class_names_map_to_the_classes_including_a_derived_class(cohort, sources):
    workdir, _, _ = cohort
    summary = json.loads((workdir / "results/patches/own_names.json").read_text())
    labels = store(workdir, "own_names")["labels"][:]
    assert (labels == CLASSES.index("G4")).sum() > 20  # "GP4: Cribriform", a QuPath derived class
    assert summary["patches_per_class"]["G4"] == (labels == CLASSES.index("G4")).sum()
    features = json.loads((workdir / "cohort/own_names.geojson").read_text())["features"]
    assert {"names": ["GP4", "Cribriform"]} in [f["properties"]["classification"] for f in features]


def test_a_dicom_series_folder_gives_the_source_patches(cohort, sources):
    """Re-encoded as baseline JPEG frames: the same tissue but for a patch or two at the edge, the same labels."""
    workdir, _, _ = cohort
    ours, theirs = patches(store(workdir, "dicom")), patches(sources["dicom"])
    shared = ours.keys() & theirs.keys()
    assert len(theirs) > 20 and len(shared) >= 0.97 * max(len(ours), len(theirs))
    assert all(ours[xy] == theirs[xy] for xy in shared)


def test_a_generic_tiff_at_another_mpp_keeps_the_field_of_view(cohort, sources):
    """0.2265 um/px and no objective power: 40x derived, each 32 px patch covers 35 level-0 px (8 um)."""
    workdir, _, _ = cohort
    group, source = store(workdir, "tiff"), sources["tiff"]
    assert group.attrs["mpp"] == TIFF_MPP and group.attrs["objective_power"] == 40
    assert group.attrs["objective_power_source"].startswith("derived from mpp")
    assert group.attrs["cell_level0"] == round(32 * 0.25 / TIFF_MPP) == 35
    assert group["40x/images"].shape[1:] == (32, 32, 3)
    expected = source["coords"].shape[0] * (32 / 35) ** 2  # the same tissue area in larger cells
    assert abs(group["coords"].shape[0] - expected) <= 0.05 * expected
    # each patch's label is the label of the source's 32 px patch under its centre
    source_labels = patches(source)
    agree = [source_labels.get(((x + 17) // 32 * 32, (y + 17) // 32 * 32)) == label
             for (x, y), label in patches(group).items() if label >= 0]
    assert len(agree) > 20 and np.mean(agree) >= 0.9


def test_a_panda_label_mask_grades_the_patches_by_their_glands(cohort, sources):
    """The Radboud mask grades a patch by its glands, its stroma (`label_mask_context`) only as context
    (slides.annotations.context_labels): of the 167 patches the GeoJSON of the same slide grades G4, 101 are
    G4 from the mask (by pixel area, stroma voting NC, 11 were); the other 66 hold no gland (52 pure stroma,
    NC) or a sliver under `extraction.min_epithelium_fraction` of their tissue (14, -1). No patch gets
    another grade than the GeoJSON's."""
    workdir, _, _ = cohort
    group = store(workdir, "panda")
    assert group.attrs["label_mask"].endswith("panda_mask.tiff") and group.attrs["annotations"] is None
    fractions, context, labels = group["class_fractions"][:], group["context_fractions"][:], group["labels"][:]
    assert group.attrs["label_mask_context"] == [1] and group.attrs["min_epithelium_fraction"] == 0.05
    np.testing.assert_array_equal(labels, context_labels(fractions, context, group.attrs["min_label_fraction"],
                                                         group.attrs["min_epithelium_fraction"]))
    source = patches(sources["panda"])
    ours = patches(group)
    assert ours.keys() == source.keys()
    index = {xy: i for i, xy in enumerate(map(tuple, group["coords"][:].tolist()))}
    tumour = [(ours[xy], label, index[xy]) for xy, label in source.items() if label > 0]
    graded = [(label, geojson) for label, geojson, _ in tumour if label > 0]
    assert len(tumour) == 167 and len(graded) == 101 and all(label == geojson for label, geojson in graded)
    epithelium = (fractions - context).sum(axis=1) / np.maximum(fractions.sum(axis=1), 1e-9)
    stroma = [i for label, _, i in tumour if label == 0]
    sliver = [i for label, _, i in tumour if label == -1]
    assert len(stroma) == 52 and (epithelium[stroma] == 0).all()
    assert len(sliver) == 14 and (epithelium[sliver] > 0).all() and (epithelium[sliver] < 0.05).all()
    assert (majority_labels(fractions, group.attrs["min_label_fraction"]) > 0).sum() == 11  # stroma voting


def test_the_marker_slide_keeps_its_tissue(cohort, sources):
    """A blue stroke 48 px (12 um) wide from the glass into the tissue: the patches of the stroke-free source
    that the stroke does not cross are kept, and labelled as there."""
    workdir, _, _ = cohort
    group = store(workdir, "marker")
    width, height = group.attrs["slide"]["dimensions"]
    ink = draw_marker_stroke(np.zeros((height, width, 1), np.uint8), (255,), MARKER_WIDTH_PER_512 * height // 512)
    ink = ink[..., 0] > 0
    ours, clean = patches(group), patches(sources["marker"])
    clear = {xy for xy in clean if not ink[xy[1] : xy[1] + 32, xy[0] : xy[0] + 32].any()}
    assert len(clean) > 20 and len(clear) < len(clean)  # the stroke crosses tissue
    kept = clear & ours.keys()
    assert len(kept) >= 0.95 * len(clear)
    assert all(ours[xy] == clean[xy] for xy in kept)


def test_the_unannotated_test_slide_is_predicted_and_drawn_but_left_out_of_the_metrics(cohort, sources):
    workdir, config, _ = cohort
    group = store(workdir, "unannotated")
    assert group["coords"].shape[0] == sources["unannotated"]["coords"].shape[0] > 20
    assert (group["labels"][:] == -1).all()
    for model in ["teacher_40x", *(f"{method}_10x" for method in config["methods"])]:
        assert (workdir / f"results/heatmaps/unannotated/{model}_seed0.png").stat().st_size > 5_000
        metrics = json.loads((workdir / f"results/metrics/{model}/seed0.json").read_text())
        assert "unannotated" not in set(metrics["per_patch"]["slide"])
        assert {"own_names", "marker"} <= set(metrics["per_patch"]["slide"])
    assert (workdir / "results/heatmaps/unannotated/panel.png").stat().st_size > 10_000
    grades = pd.read_csv(workdir / "results/tables/slides.csv")
    rows = grades[grades.slide_id == "unannotated"]
    assert len(rows) == 1 + len(config["methods"]) and (rows.reference == "unlabelled").all()
    assert rows.true_grade_group.isna().all() and rows.predicted_grade_group.notna().all()
    summary = grades[grades.slide_id == "ALL"]
    assert (summary.reference == "labelled slides: 2, unlabelled left out: 1").all()
