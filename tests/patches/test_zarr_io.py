"""Each direct writer/reader of zarr's formats against plain zarr: written by ours, read by ``zarr.open``, and back."""

import imagecodecs
import numpy as np
import pytest
import zarr

from wsidistill.patches.extract import create_image_arrays
from wsidistill.patches.jpeg import SlideJpegCodec
from wsidistill.patches.zarr_io import (
    ChunkFiles,
    PatchWriter,
    RowChunkWriter,
    chunk_files,
    encode_shard,
    read_source_tiles,
)
from wsidistill.training.teacher_cache import COMPRESSOR

TILE = 16


def files_of(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_patch_writer_round_trips_through_plain_zarr(tmp_path):
    """Blosc patch chunks: what PatchWriter writes, zarr reads; and they are the bytes zarr itself writes."""
    rng = np.random.default_rng(0)
    patches = {"20x": rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8),
               "10x": rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)}
    for how in ("ours", "zarr"):
        root = zarr.open_group(str(tmp_path / f"{how}.zarr"), mode="w", zarr_format=3)
        images = create_image_arrays(root, 9, {"20x": 64, "10x": 32})
        if how == "ours":
            with PatchWriter(images, tmp_path / "ours.zarr") as writer:
                writer.append(patches)
        else:
            for name, array in images.items():
                array[:] = patches[name]
    for name, expected in patches.items():
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours.zarr" / name / "images"), mode="r")[:],
                                      expected)
    assert files_of(tmp_path / "ours.zarr") == files_of(tmp_path / "zarr.zarr")


def test_row_chunk_writer_and_chunk_files_round_trip_through_plain_zarr(tmp_path):
    """Teacher-cache arrays (8, N, ...) chunked (1, r, ...): ours -> zarr, and zarr -> ChunkFiles, row for row."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(8, 11, 3, 2, 2)).astype(np.float32)
    values[2] = 0  # chunks of fill values: zarr leaves them out, the direct reader fills them in
    arrays = {}
    for how in ("ours", "zarr"):
        root = zarr.open_group(str(tmp_path / f"{how}.zarr"), mode="w", zarr_format=3)
        arrays[how] = root.create_array("x", shape=values.shape, chunks=(1, 4, 3, 2, 2), dtype="float32",
                                        compressors=COMPRESSOR)
    for element in range(8):
        writer = RowChunkWriter(arrays["ours"], tmp_path / "ours.zarr", element)
        for start in range(0, 11, 3):  # batches that straddle chunks; the last chunk is partial
            writer.append(values[element, start : start + 3])
        writer.close()
    arrays["zarr"][:] = values
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours.zarr" / "x"), mode="r")[:], values)
    ours, theirs = files_of(tmp_path / "ours.zarr"), files_of(tmp_path / "zarr.zarr")
    assert {k: v for k, v in ours.items() if k in theirs} == theirs  # the same bytes where zarr writes a chunk
    files = ChunkFiles(arrays["zarr"], tmp_path / "zarr.zarr" / "x")
    np.testing.assert_array_equal(files.read_all(), values)
    assert np.array_equal(files.read(5, 9), values[5, 9]) and np.array_equal(files.read(2, 0), values[2, 0])


def test_jpeg_shards_round_trip_through_plain_zarr(tmp_path):
    """encode_shard -> zarr reads each tile decoded; zarr's own shards -> read_source_tiles reads zarr's pixels."""
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:TILE, 0:TILE] / TILE
    tiles = [np.stack([150 + 50 * np.sin(2 * np.pi * (x * a + y * b)) for a, b in rng.uniform(0.2, 0.8, (3, 2))],
                      axis=-1).astype(np.uint8) for _ in range(6)]
    jpegs = [imagecodecs.jpeg8_encode(t, level=90) for t in tiles]
    layout = dict(shape=(3, TILE, 2 * TILE, 3), chunks=(1, TILE, TILE, 3), shards=(2, TILE, 2 * TILE, 3),
                  dtype="uint8", serializer=SlideJpegCodec(), compressors=None, fill_value=255)
    ours = zarr.create_array(str(tmp_path / "ours.zarr"), **layout)
    for shard, chunks in ((0, jpegs[:4]), (1, jpegs[4:])):
        path = tmp_path / "ours.zarr" / ours.metadata.encode_chunk_key((shard, 0, 0, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_shard(chunks, (2, 1, 2, 1)))
    read = zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[:]
    decoded = np.stack([np.concatenate([imagecodecs.jpeg8_decode(j) for j in jpegs[i : i + 2]], axis=1)
                        for i in range(0, 6, 2)])
    np.testing.assert_array_equal(read, decoded)

    theirs = zarr.create_array(str(tmp_path / "zarr.zarr"), **layout)
    theirs[:2] = decoded[:2]  # the third row's shard half-written: its second row reads as fill
    np.testing.assert_array_equal(read_source_tiles(theirs, np.array([2, 0, 1, 0])), theirs[:][[2, 0, 1, 0]])


@pytest.mark.parametrize("separator", ["/", "."])
def test_chunk_files_counts_each_arrays_files(tmp_path, separator):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    encoding = {"name": "default", "separator": separator}
    root.create_array("coords", data=np.arange(10).reshape(5, 2), chunks=(2, 2), chunk_key_encoding=encoding)
    root.create_group("40x").create_array("images", data=np.ones((5, 2, 2, 3), np.uint8), chunks=(3, 2, 2, 3),
                                          chunk_key_encoding=encoding)
    root.create_array("empty", shape=(4,), dtype="int8")  # never written: no chunk file
    assert chunk_files(tmp_path / "s.zarr") == {"40x/images": 2, "coords": 3}
