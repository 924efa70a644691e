"""The direct TIFF tile path: OpenSlide's pixels, every tile decoded once, blocks on tile edges."""

import dataclasses
from collections import Counter

import numpy as np
import openslide
import pytest
import zarr

from wsidistill.demo import plan_cohort, write_slide
from wsidistill.patches.dataset import read_images
from wsidistill.patches.extract import ExtractionSettings, block_shape, create_image_arrays, extract_slide
from wsidistill.patches.zarr_io import PatchWriter
from wsidistill.slides.reader import Slide, TiffTiles

SETTINGS = ExtractionSettings(
    classes=("NC", "G3", "G4", "G5"),
    class_map={"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"},
    magnifications=(40, 20, 10, 5),
    teacher_magnification=40,
    patch_size=96,  # 96 px cells on 256 px tiles: blocks must be 8 cells (768 px = 3 tiles) to align
    block_cells=4,
)


def test_aperio_rgb_jpeg_with_shared_tables_decodes_as_openslide(openslide_fixtures):
    """small.svs: Aperio tiles are RGB-coded JPEG with JPEGTables, unlike the demo's YCbCr."""
    path = openslide_fixtures["small.svs"]
    with Slide(path) as slide, openslide.OpenSlide(str(path)) as osr:
        assert slide.info.pixel_reader == "tiff tiles"
        ours = slide.read_region(0, 0, 0, 16, 16)
        theirs = np.asarray(osr.read_region((0, 0), 0, (16, 16)))[..., :3]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    ("cell", "tile", "downsample", "block_cells", "expected"),
    [
        (256, (256, 256), 1.0, 8, (8, 8)),  # one tile per cell
        (96, (256, 256), 1.0, 4, (8, 8)),  # lcm(96, 256) = 768 px = 8 cells
        (128, (512, 256), 1.0, 8, (8, 8)),
        (128, (240, 240), 1.0, 8, (15, 15)),  # lcm 1920 px = 15 cells
        (256, (256, 256), 4.0, 8, (8, 8)),  # level-1 tiles are 1024 level-0 px: 4 cells
        (255, (256, 256), 1.0, 8, (8, 8)),  # lcm 65280 px is too large: unaligned blocks
        (256, None, 1.0, 6, (6, 6)),
    ],
)
def test_block_shape_puts_block_edges_on_tile_edges(cell, tile, downsample, block_cells, expected):
    assert block_shape(cell, tile, downsample, block_cells) == expected


def test_extraction_decodes_each_tile_under_tissue_exactly_once(tmp_path, monkeypatch):
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=1536, height=1024)
    decoded = Counter()
    tile = TiffTiles.tile

    def counting(self, column, row, **kwargs):
        decoded[(self.width, column, row)] += 1
        return tile(self, column, row, **kwargs)

    monkeypatch.setattr(TiffTiles, "tile", counting)
    # a thumbnail of 384 px comes from level 1 (1536 / 4): every level-0 decode counted is extraction's own
    settings = dataclasses.replace(SETTINGS, thumbnail_max_side=384)
    summary = extract_slide(files["slide"], tmp_path / "s.zarr", settings, slide_id="s", threads=2, progress=False)
    assert summary["block_cells"] == [8, 8] and summary["pixel_reader"] == "tiff tiles"
    level0 = {key: n for key, n in decoded.items() if key[0] == 1536}
    assert level0 and max(level0.values()) == 1
    coords = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["coords"][:]
    under_patches = {(1536, c, r) for x, y in coords
                     for c in range(x // 256, (x + 95) // 256 + 1) for r in range(y // 256, (y + 95) // 256 + 1)}
    assert set(level0) == under_patches


def test_patch_writer_chunks_are_byte_identical_to_zarrs_own(tmp_path):
    """The writer encodes whole chunks itself; zarr must read them, and write the very same bytes."""
    rng = np.random.default_rng(0)
    patches = {"40x": rng.integers(0, 256, (23, 256, 256, 3), dtype=np.uint8),
               "5x": rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)}
    stores = {}
    for how in ("writer", "zarr"):
        root = zarr.open_group(str(tmp_path / f"{how}.zarr"), mode="w", zarr_format=3)
        images = create_image_arrays(root, 23, {"40x": 256, "5x": 8})
        if how == "writer":
            with PatchWriter(images, tmp_path / f"{how}.zarr", workers=2) as writer:
                for start in range(0, 23, 7):  # batches that straddle chunks
                    writer.append({name: p[start : start + 7] for name, p in patches.items()})
                    writer.flush()
        else:
            for name, array in images.items():
                array[:] = patches[name]
        stores[how] = {p.relative_to(tmp_path / f"{how}.zarr"): p.read_bytes()
                       for p in (tmp_path / f"{how}.zarr").rglob("*") if p.is_file()}
        for name, array in images.items():
            np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{how}.zarr" / name / "images"))[:],
                                          patches[name])
    assert images["40x"].chunks[0] < 23 and stores["writer"] == stores["zarr"]


@pytest.mark.parametrize("patch_size", [256, 512])  # one tile per patch; 2 x 2 tiles per patch
def test_patches_on_whole_tiles_keep_the_slides_own_jpeg_bytes(tmp_path, patch_size):
    """Stored as the scanner's tiles, the store reads back exactly as when every patch is decoded and recompressed."""
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=3072, height=2048)
    settings = dataclasses.replace(SETTINGS, patch_size=patch_size, min_tissue_fraction=0.25)
    kept = extract_slide(files["slide"], tmp_path / "kept.zarr", settings, slide_id="s", threads=2, progress=False)
    decoded = extract_slide(files["slide"], tmp_path / "decoded.zarr", dataclasses.replace(
        settings, reuse_source_tiles=False), slide_id="s", threads=2, progress=False)
    assert kept["source_tiles"] == "40x" and decoded["source_tiles"] is None and kept["tissue_patches"] >= 4
    a, b = (zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r") for name in ("kept", "decoded"))
    assert a.attrs["source_tiles"] == "40x"
    for name in ("40x", "20x", "10x", "5x"):
        np.testing.assert_array_equal(a[name]["images"][:], b[name]["images"][:], err_msg=name)
    images = a["40x"]["images"]
    assert images.chunks == (1, 256, 256, 3) and images.shards[0] > 1
    np.testing.assert_array_equal(read_images(images, slice(1, None)), b["40x"]["images"][1:])  # the direct reader too

    # the first shard's first chunk is patch 0's top-left tile, byte for byte
    with Slide(files["slide"]) as slide:
        x, y = a["coords"][0]
        tile = slide.jpeg_tiles(0).tile_bytes(x // 256, y // 256)
    shard = (tmp_path / "kept.zarr" / "40x" / "images" / "c.0.0.0.0").read_bytes()
    chunks = int(np.prod([s // c for s, c in zip(images.shards, images.chunks)]))
    offset, length = np.frombuffer(shard[-4 - 16 * chunks : -4], "<u8").reshape(-1, 2)[0]
    assert shard[offset : offset + length] == tile


def test_patches_off_the_tile_grid_are_decoded_and_recompressed(tmp_path):
    files = write_slide(plan_cohort(6, 0)[0], tmp_path, width=1536, height=1024)
    summary = extract_slide(files["slide"], tmp_path / "s.zarr", SETTINGS, slide_id="s", progress=False)  # 96 px
    assert summary["source_tiles"] is None
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["40x"]["images"].shards is None
