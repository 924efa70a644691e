import json

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from tiatoolbox.wsicore.wsireader import WSIReader

from wsidistill.demo import GRADES, write_slide

EXPECTED = {  # variant -> vendor, objective power, mpp
    "svs40": ("aperio", 40, 0.25),
    "svs20": ("aperio", 20, 0.5),
    "nometa": ("aperio", None, None),
    "tiff": ("generic-tiff", None, 0.25),
}


def _annotation_raster(path, shape):
    """Label raster (0 none, 1-4 grade+1) of the GeoJSON polygons, holes respected."""
    raster = np.zeros(shape, np.uint8)
    for feature in json.loads(path.read_text())["features"]:
        grade = GRADES.index(feature["properties"]["classification"]["name"]) + 1
        geom = feature["geometry"]
        polygons = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
        for rings in polygons:
            pts = [np.round((np.asarray(r) - 0.5) * 16).astype(np.int32) for r in rings]
            cv2.fillPoly(raster, pts[:1], grade, shift=4)
            cv2.fillPoly(raster, pts[1:], 0, shift=4) if len(pts) > 1 else None
    return raster


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_openslide_reads_vendor_levels_and_scale(written, size, variant):
    vendor, power, mpp = EXPECTED[variant]
    paths = written[variant]
    assert paths["slide"].suffix == (".tiff" if variant == "tiff" else ".svs")
    with openslide.OpenSlide(paths["slide"]) as slide:
        assert slide.properties["openslide.vendor"] == vendor
        assert slide.dimensions == size
        assert slide.level_count == 3
        assert slide.level_downsamples == pytest.approx((1, 4, 16), rel=0.01)
        got_power = slide.properties.get("openslide.objective-power")
        assert (float(got_power) if got_power else None) == power
        got_mpp = slide.properties.get("openslide.mpp-x")
        assert (pytest.approx(float(got_mpp)) if got_mpp else None) == mpp


@pytest.mark.parametrize("variant", ["svs40", "svs20", "tiff"])
def test_tiatoolbox_reports_objective_power_and_mpp(written, size, variant):
    _, power, mpp = EXPECTED[variant]
    info = WSIReader.open(written[variant]["slide"]).info
    assert info.mpp == pytest.approx([mpp, mpp])
    assert info.objective_power == pytest.approx(power if power else 40)  # tiff: inferred from MPP
    assert info.slide_dimensions == size


def test_tiatoolbox_has_no_scale_without_metadata(written):
    info = WSIReader.open(written["nometa"]["slide"]).info
    assert info.mpp is None and info.objective_power is None


@pytest.mark.parametrize("variant", ["svs40", "tiff"])
def test_regions_are_tissue_coloured_and_background_is_glass(written, variant):
    paths = written[variant]
    with openslide.OpenSlide(paths["slide"]) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")).astype(float)
    annotated = _annotation_raster(paths["annotations"], rgb.shape[:2]) > 0
    inner = cv2.erode(annotated.astype(np.uint8), np.ones((9, 9))) > 0
    glass = cv2.dilate(annotated.astype(np.uint8), np.ones((41, 41))) == 0
    tissue_rgb, glass_rgb = rgb[inner].mean(0), rgb[glass]
    # H&E: eosin and haematoxylin both absorb green most, so tissue is pink-purple and darker than glass
    assert tissue_rgb[1] < tissue_rgb[0] - 30 and tissue_rgb[1] < tissue_rgb[2] - 20
    assert np.median(glass_rgb, 0).min() > 220
    assert tissue_rgb.mean() < np.median(glass_rgb, 0).mean() - 40


def test_geojson_is_qupath_style_in_level0_pixels(written, size):
    for variant in ("svs40", "svs20"):
        data = json.loads(written[variant]["annotations"].read_text())
        assert data["type"] == "FeatureCollection" and data["features"]
        for f in data["features"]:
            assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
            assert f["properties"]["objectType"] == "annotation"
            assert f["properties"]["classification"]["name"] in GRADES
            assert len(f["properties"]["classification"]["color"]) == 3
            xy = np.concatenate([np.asarray(r).reshape(-1, 2) for r in _rings(f["geometry"])])
            assert xy.min() >= 0 and xy[:, 0].max() <= size[0] and xy[:, 1].max() <= size[1]
        names = [f["properties"]["classification"]["name"] for f in data["features"]]
        assert len(names) == len(set(names)) >= 2


def _rings(geom):
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    return [ring for poly in polys for ring in poly]


@pytest.mark.parametrize("variant", ["svs40", "svs20"])
def test_label_mask_matches_annotations_exactly(written, size, variant):
    """Every epithelial pixel of grade g lies in a region annotated g and vice versa; tissue = regions."""
    paths = written[variant]
    with tifffile.TiffFile(paths["mask"]) as tif:
        assert len(tif.pages) == 3 and tif.pages[0].is_tiled
        mask = tif.pages[0].asarray()
    assert mask.dtype == np.uint8 and mask.shape == size[::-1]
    assert set(np.unique(mask)) <= set(range(6)) and {0, 1} <= set(np.unique(mask))
    regions = _annotation_raster(paths["annotations"], mask.shape)
    epithelium = mask >= 2
    agree = regions[epithelium] == mask[epithelium] - 1
    assert agree.mean() > 0.999
    tissue, annotated = mask > 0, regions > 0
    assert (tissue & annotated).sum() / (tissue | annotated).sum() > 0.99
    with openslide.OpenSlide(paths["mask"]) as m:  # PANDA-style masks are read with OpenSlide too
        assert m.level_count == 3 and m.dimensions == size
        r = np.asarray(m.read_region((0, 0), 0, m.dimensions))[..., 0]
    assert np.array_equal(r, mask)


def test_same_seed_gives_byte_identical_files(tmp_path, cohort, written, size):
    again = write_slide(cohort[0], tmp_path, width=size[0], height=size[1], variant="svs40", label_mask=True)
    for key in ("slide", "annotations", "mask"):
        assert again[key].read_bytes() == written["svs40"][key].read_bytes(), key
    other = write_slide(cohort[1], tmp_path, width=size[0], height=size[1])
    assert other["slide"].read_bytes() != again["slide"].read_bytes()


def test_writes_are_atomic_and_leave_no_temporaries(written):
    folder = written["svs40"]["slide"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written["svs40"].values())


def test_unknown_variant_and_too_small_slides_are_rejected(tmp_path, cohort):
    with pytest.raises(ValueError):
        write_slide(cohort[0], tmp_path, variant="ndpi")
    with pytest.raises(ValueError):
        write_slide(cohort[0], tmp_path, width=200, height=1024)
