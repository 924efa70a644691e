import numpy as np
import openslide
import pytest
import tifffile
import zarr

from wsidistill.demo import plan_cohort, write_slide
from wsidistill.demo.formats import pyramid_levels, write_dicom_series, write_ome_tiff, write_pyramid
from wsidistill.slides import reader
from wsidistill.slides.reader import Slide, SlideReadError, resolve_resolution


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    out = tmp_path_factory.mktemp("reader")
    plan = plan_cohort(6, 0)[0]
    return {variant: write_slide(plan, out / variant, width=1024, height=768, variant=variant)["slide"]
            for variant in ("svs40", "svs20", "nometa", "tiff")}


def openslide_rgb(path, level, x, y, width, height):
    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(osr.read_region((x, y), level, (width, height)))[..., :3]


@pytest.mark.parametrize("variant", ["svs40", "tiff"])
def test_direct_tiles_decode_as_openslide_does(slides, variant):
    """The fast path (tiles straight from the TIFF) gives OpenSlide's pixels, at every level and odd offsets."""
    with Slide(slides[variant]) as slide:
        assert slide.info.pixel_reader == "tiff tiles"
        assert slide.tile_size(0) == (256, 256)
        rng = np.random.default_rng(0)
        for level, downsample in enumerate(slide.info.level_downsamples):
            width, height = slide.info.level_dimensions[level]
            w, h = min(300, width), min(200, height)
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            ours = slide.read_region(level, round(x * downsample), round(y * downsample), w, h)
            theirs = openslide_rgb(slides[variant], level, round(x * downsample), round(y * downsample), w, h)
            differing = (np.abs(ours.astype(int) - theirs) > 0).any(-1).mean()
            assert differing <= 0.01, f"level {level}: {differing:.2%} of pixels differ from OpenSlide's"


def test_rectangles_sharing_tiles_decode_each_tile_once(slides, monkeypatch):
    with Slide(slides["svs40"]) as slide:
        full = slide.read_region(0, 0, 0, 1024, 768)
        decoded = []
        tile = reader.TiffTiles.tile
        monkeypatch.setattr(reader.TiffTiles, "tile",
                            lambda self, c, r, **kw: decoded.append((c, r)) or tile(self, c, r, **kw))
        corners = np.array([[0, 0], [100, 50], [300, 0], [900, 700]])  # the last one runs off the image
        rectangles = slide.read_rectangles(0, corners, 200, 100)
    assert sorted(decoded) == [(0, 0), (1, 0), (3, 2)]  # 256 px tiles, each once, only those under a rectangle
    for (x, y), rectangle in zip(corners[:3], rectangles):
        np.testing.assert_array_equal(rectangle, full[y : y + 100, x : x + 200])
    np.testing.assert_array_equal(rectangles[3][:68, :124], full[700:, 900:])
    assert (rectangles[3][68:] == 255).all() and (rectangles[3][:, 124:] == 255).all()


def test_native_magnification_comes_from_metadata_or_is_derived_and_recorded(slides):
    with Slide(slides["svs20"]) as slide:
        assert (slide.info.objective_power, slide.info.objective_power_source) == (20, "metadata")
        assert slide.best_level_for(slide.info.objective_power / 40) == 0  # never coarser than asked
    with Slide(slides["tiff"]) as slide:  # generic TIFF: MPP only
        assert slide.info.objective_power == 40 and slide.info.objective_power_source.startswith("derived from mpp")
    with pytest.raises(SlideReadError, match=r"nometa.*neither microns per pixel nor objective power.*`mpp`"):
        Slide(slides["nometa"])
    with Slide(slides["nometa"], mpp=0.5) as slide:
        assert (slide.info.mpp, slide.info.mpp_source) == (0.5, "sample sheet")
        assert (slide.info.objective_power, slide.info.objective_power_source) == (20, "derived from mpp (sample sheet)")


def test_overrides_win_over_metadata():
    assert resolve_resolution("s.svs", 0.25, 40, mpp_override=0.5)[:4] == (0.5, "sample sheet", 20, "derived from mpp "
                                                                             "(sample sheet; objective power 40x "
                                                                             "(metadata) and mpp 0.5 um/px (sample "
                                                                             "sheet, 20.0x) disagree)")
    resolution = resolve_resolution("s.svs", 0.25, 40, power_override=20)
    assert resolution[:3] == (0.5, resolution.mpp_source, 20) and "sample sheet" in resolution.mpp_source
    assert resolution.warnings == ()
    assert resolve_resolution("s.svs", 0.25, 40, power_override=40, mpp_override=0.2265)[:4] == (
        0.2265, "sample sheet", 40, "sample sheet")


@pytest.mark.parametrize(("mpp", "power", "expected"), [
    (0.2520, None, 40), (0.2265, None, 40), (0.2527, None, 40), (0.5040, None, 20), (0.4415, None, 20),
    (0.9972, None, 10), (0.1725, None, 60), (None, 20, 20), (0.2265, 40, 40), (0.243, 20, 40),
])
def test_derived_powers_snap_to_the_nearest_standard_objective(mpp, power, expected):
    resolution = resolve_resolution("s.svs", mpp, power)
    assert resolution.objective_power == expected
    if power is None:
        assert resolution.objective_power_source.startswith("derived from mpp (")


def test_every_disagreement_is_handled_or_named(tmp_path):
    # AppMag 20 but 0.243 um/px (a 20x objective behind a 2x adapter): the pixels are 40x; a warning names all
    resolution = resolve_resolution("p250.mrxs", 0.243, 20)
    assert (resolution.objective_power, resolution.mpp) == (40, 0.243)
    assert len(resolution.warnings) == 1 and all(s in resolution.warnings[0] for s in (
        "p250.mrxs", "20x", "0.243", "`objective_power`", "`mpp`"))
    # a placeholder resolution (72 dpi) is ignored, and without a power the slide cannot be placed
    with pytest.raises(SlideReadError, match=r"dpi\.tif: the slide records neither.*`mpp`.*--mpp / --objective-power"):
        resolve_resolution("dpi.tif", 352.8, None)
    resolution = resolve_resolution("dpi.tif", 352.8, 20)
    assert resolution[:3] == (0.5, "derived from objective power", 20) and "352.8" in resolution.warnings[0]
    with pytest.raises(SlideReadError, match=r"wide\.svs: the pixels are not square \(0\.25 x 0\.5 um\).*`mpp`"):
        resolve_resolution("wide.svs", 0.25, 40, mpp_y=0.5)
    assert resolve_resolution("wide.svs", 0.25, 40, mpp_y=0.5, mpp_override=0.25).mpp == 0.25


def test_a_slide_at_an_odd_mpp_extracts_the_same_physical_field(tmp_path):
    """A 0.2265 um/px TIFF with no power: 40x, 283 px cells resampled to 256, no grid error."""
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    level0 = tifffile.imread(write_slide(plan_cohort(6, 0)[0], tmp_path, width=1024, height=768)["slide"], level=0)
    path = tmp_path / "odd.tif"
    write_pyramid(path, [(0, level0)], 1024, 768, description=None, mpp=0.2265, aperio=False)
    settings = ExtractionSettings(classes=("NC", "G3"), class_map={}, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=256, min_tissue_fraction=0)
    summary = extract_slide(path, tmp_path / "s.zarr", settings, slide_id="s", progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root.attrs["objective_power"] == 40 and root.attrs["objective_power_source"].startswith("derived from mpp")
    assert root.attrs["cell_level0"] == 283 and summary["tissue_patches"] == 3 * 2
    assert root["40x/images"].shape == (6, 256, 256, 3) and root["10x/images"].shape == (6, 64, 64, 3)


def test_thumbnail_read_in_strips_matches_one_read(slides, monkeypatch):
    with Slide(slides["svs40"]) as slide:
        whole, downsample = slide.thumbnail(16)
        monkeypatch.setattr(reader, "THUMBNAIL_STRIP_PIXELS", 64 * 3 * 4 * 2)  # two output rows per strip
        strips, strip_downsample = slide.thumbnail(16)
    assert whole.shape == (12, 16, 3) and downsample == strip_downsample == 64
    np.testing.assert_array_equal(strips, whole)


def test_missing_and_unrecognised_files_name_themselves(tmp_path):
    with pytest.raises(SlideReadError, match=r"absent\.svs: file not found"):
        Slide(tmp_path / "absent.svs")
    bogus = tmp_path / "bogus.svs"
    bogus.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(SlideReadError, match=r"bogus\.svs: not a slide format OpenSlide reads.*corrupt"):
        Slide(bogus)


def test_plain_images_open_once_their_resolution_is_given(tmp_path):
    """A plain PNG (no pyramid, no metadata) opens as one level once its resolution is given."""
    import cv2

    image = np.full((300, 400, 3), 255, np.uint8)
    image[50:250, 100:300] = (200, 100, 180)
    cv2.imwrite(str(tmp_path / "field.png"), image[..., ::-1])
    with Slide(tmp_path / "field.png", mpp=0.5) as slide:
        assert slide.info.pixel_reader == "image" and slide.info.dimensions == (400, 300)
        assert slide.info.objective_power == 20
        np.testing.assert_array_equal(slide.read_region(0, 90, 40, 30, 20), image[40:60, 90:120])


# --- transparent areas (issue 17, kind 5) --------------------------------------------------------------------------

def rgba_field() -> np.ndarray:
    """Opaque tissue colour, the same colour at alpha 128, and unscanned glass at alpha 0 holding black."""
    rgba = np.zeros((512, 512, 4), np.uint8)
    rgba[:, :256] = (200, 100, 50, 255)
    rgba[:, 256:384] = (200, 100, 50, 128)
    rgba[:, 384:] = (0, 0, 0, 0)
    return rgba


#: Straight alpha on white: rgb * a + 255 * (1 - a), a = 128 / 255.
HALF = [round(v * 128 / 255 + 255 * 127 / 255) for v in (200, 100, 50)]


def test_every_reader_composites_transparent_pixels_on_white_the_same_way(tmp_path):
    import cv2

    rgba = rgba_field()
    tags = dict(photometric="rgb", extrasamples=["unassalpha"], resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "tiled.tif", rgba, tile=(256, 256), **tags)
    tifffile.imwrite(tmp_path / "stripped.tif", rgba, rowsperstrip=64, **tags)
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    readers = {}
    for name in ("tiled.tif", "stripped.tif", "field.png"):
        with Slide(tmp_path / name, mpp=0.25) as slide:
            readers[slide.info.pixel_reader] = slide.read_region(0, 0, 0, 512, 8)
    assert sorted(readers) == ["image", "openslide", "tifffile"]
    for name, pixels in readers.items():
        assert pixels[0, 100].tolist() == [200, 100, 50], name
        assert np.abs(pixels[0, 300].astype(int) - HALF).max() <= 1, (name, pixels[0, 300])
        assert (pixels[:, 384:] == 255).all(), name


def test_premultiplied_and_grey_alpha_tiffs_composite_as_straight_rgba_does(tmp_path):
    """Associated (premultiplied) alpha and grey + alpha, tiled (OpenSlide would read it) and stripped (tifffile):
    the same colours as the straight RGBA field, on every path."""
    rgba = rgba_field()
    alpha = rgba[..., 3:].astype(np.float64) / 255
    premultiplied = np.concatenate([np.round(rgba[..., :3] * alpha).astype(np.uint8), rgba[..., 3:]], axis=-1)
    grey = np.stack([np.full(rgba.shape[:2], 120, np.uint8), rgba[..., 3]], axis=-1)
    common = dict(resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    for name, pixels, photometric, extra, opaque, half in (
            ("assoc", premultiplied, "rgb", "assocalpha", [200, 100, 50], HALF),
            ("grey", grey, "minisblack", "unassalpha", [120] * 3, [round(120 * 128 / 255 + 255 * 127 / 255)] * 3)):
        for layout in (dict(tile=(256, 256)), dict(rowsperstrip=64)):
            path = tmp_path / f"{name}_{'tiled' if 'tile' in layout else 'stripped'}.tif"
            tifffile.imwrite(path, pixels, photometric=photometric, extrasamples=[extra], **layout, **common)
            with Slide(path, mpp=0.25) as slide:
                read = slide.read_region(0, 0, 0, 512, 8)
            assert read[0, 100].tolist() == opaque, path.name
            assert np.abs(read[0, 300].astype(int) - half).max() <= 1, (path.name, read[0, 300])
            assert (read[:, 384:] == 255).all(), path.name


def test_a_closed_slide_leaves_no_file_open(tmp_path):
    """tifffile's lazy levels (stripped, grey + alpha) hold the file open until the slide is closed: no
    ResourceWarning when the file is collected, as a run over hundreds of slides would otherwise leak one per level."""
    import gc
    import warnings

    common = dict(resolution=(4e4, 4e4), resolutionunit="CENTIMETER", rowsperstrip=64)
    tifffile.imwrite(tmp_path / "stripped.tif", rgba_field(), photometric="rgb", extrasamples=["unassalpha"], **common)
    grey = np.stack([np.full((512, 512), 120, np.uint8), rgba_field()[..., 3]], axis=-1)
    tifffile.imwrite(tmp_path / "grey.tif", grey, photometric="minisblack", extrasamples=["unassalpha"], **common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for name in ("stripped.tif", "grey.tif"):
            with Slide(tmp_path / name, mpp=0.25) as slide:
                assert slide.info.pixel_reader == "tifffile"
                slide.read_region(0, 0, 0, 512, 8)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_a_slide_dropped_unclosed_closes_its_files(tmp_path):
    """Slides evicted from extraction's and predict's open-slide cache are never closed explicitly: collected, they
    must close their files, or a run over a thousand slides ends in "too many open files"."""
    import gc
    import os

    from wsidistill.patches.extract import open_slide

    common = dict(photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    paths = [tmp_path / f"slide{i}.tif" for i in range(12)]  # more than the cache holds
    for path in paths:
        tifffile.imwrite(path, rgba_field()[..., :3], tile=(256, 256), **common)
    open_slide.cache_clear()  # slides earlier tests left in the cache
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for path in paths:
        open_slide(str(path), 0.25, None).read_region(0, 0, 0, 64, 64)
    held = open_slide.cache_info().currsize
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before <= 2 * held  # the cached slides' files only, not all twelve
    open_slide.cache_clear()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_stripped_rgba_slide_extracts_white_where_it_is_transparent(tmp_path):
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    tifffile.imwrite(tmp_path / "stripped.tif", rgba_field(), rowsperstrip=64, photometric="rgb",
                     extrasamples=["unassalpha"], resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    settings = ExtractionSettings(classes=("NC", "G3"), class_map={}, magnifications=(40, 20),
                                  teacher_magnification=40, patch_size=128, min_tissue_fraction=0)
    extract_slide(tmp_path / "stripped.tif", tmp_path / "s.zarr", settings, slide_id="s", progress=False)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root.attrs["slide"]["pixel_reader"] == "tifffile" and root.attrs["mpp"] == 0.25
    patches, coords = root["40x/images"][:], root["coords"][:]
    assert (patches[coords[:, 0] >= 384] == 255).all()  # unscanned, alpha 0: white, not black
    assert (patches[coords[:, 0] < 256] == (200, 100, 50)).all()


def test_composite_on_white_is_straight_alpha():
    pixels = reader.composite_on_white(np.array([[[200, 100, 50, 128], [9, 9, 9, 0], [1, 2, 3, 255]]], np.uint8))
    assert pixels.tolist() == [[HALF, [255, 255, 255], [1, 2, 3]]]


# --- formats read as stored (issue 17, kind 6) ---------------------------------------------------------------------

def test_an_ome_tiff_pyramid_in_subifds_is_used(slides, tmp_path):
    levels = pyramid_levels(tifffile.imread(slides["svs40"], level=0))
    path = tmp_path / "slide.ome.tif"
    write_ome_tiff(path, levels, 0.25)
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.level_count == 1  # what OpenSlide sees
    with Slide(path) as slide:
        assert slide.info.level_dimensions == ((1024, 768), (256, 192), (64, 48))
        assert slide.info.pixel_reader == "tiff tiles" and slide.info.mpp == 0.25 and slide.info.objective_power == 40
        thumbnail, downsample = slide.thumbnail(64)  # the coarsest level at least 64 px wide: the SubIFD pyramid's last
        assert downsample == 16
        np.testing.assert_array_equal(thumbnail, levels[2])
        np.testing.assert_array_equal(slide.read_region(1, 400, 200, 50, 30), levels[1][50:80, 100:150])


def test_a_folder_without_a_dicom_series_names_itself_and_the_fix(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    with pytest.raises(SlideReadError, match=r"series: a folder without a DICOM whole-slide image.*`path` column"):
        Slide(tmp_path / "series")


def test_a_dicom_series_given_as_its_folder_opens_as_its_first_file_would(slides, tmp_path):
    series = write_dicom_series(tmp_path / "series", pyramid_levels(tifffile.imread(slides["svs40"], level=0), 2), 0.25)
    (series / "DICOMDIR.txt").write_text("not DICOM")  # other files beside the series are passed over
    with Slide(series) as from_folder, Slide(series / "level0.dcm") as from_file:
        assert from_folder.info.vendor == "dicom" and from_folder.info.level_dimensions == ((1024, 768), (256, 192))
        assert (from_folder.info.mpp, from_folder.info.objective_power) == (0.25, 40)
        np.testing.assert_array_equal(from_folder.read_region(1, 0, 0, 256, 192), from_file.read_region(1, 0, 0, 256, 192))


def test_a_disagreement_in_the_file_reaches_the_extraction_summary(slides, tmp_path):
    from wsidistill.demo.formats import aperio_description
    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    level0 = tifffile.imread(slides["svs40"], level=0)
    path = tmp_path / "adapter.svs"  # AppMag 20 on 0.25 um/px pixels
    write_pyramid(path, [(0, level0)], 1024, 768, description=aperio_description(1024, 768, 20, 0.25, "adapter"),
                  mpp=0.25, aperio=True)
    settings = ExtractionSettings(classes=("NC", "G3"), class_map={}, magnifications=(40, 10),
                                  teacher_magnification=40, patch_size=256, min_tissue_fraction=0)
    with pytest.warns(UserWarning, match=r"adapter\.svs: objective power 20x"):
        summary = extract_slide(path, tmp_path / "s.zarr", settings, slide_id="s", progress=False)
    assert summary["magnifications"] == ["40x", "10x"] and summary["tissue_patches"] == 4 * 3
    assert any("using 40x from the mpp" in w and "`objective_power`" in w for w in summary["warnings"])


def test_the_thumbnail_does_not_depend_on_the_files_pyramid_layout(slides, tmp_path):
    """Same pixels, pyramids of 1/4/16 and 1/4 (OME-TIFF SubIFDs): one thumbnail, so one tissue mask. It comes from
    the coarsest level still ``max_side`` px wide (level 0 here), not the file's coarsest level (64 or 256 px)."""
    level0 = tifffile.imread(slides["svs40"], level=0)
    thumbnails = []
    for count in (3, 2):
        path = tmp_path / f"levels{count}.ome.tif"
        write_ome_tiff(path, pyramid_levels(level0, count), 0.25)
        with Slide(path) as slide:
            thumbnail, downsample = slide.thumbnail(512)
        assert thumbnail.shape == (384, 512, 3) and downsample == 2
        thumbnails.append(thumbnail)
    np.testing.assert_array_equal(*thumbnails)
