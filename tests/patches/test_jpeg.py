"""The slide-JPEG codec and hand-written shards: what zarr reads back is each tile decoded as the reader does."""

import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
import zarr

from wsidistill.patches.dataset import read_images
from wsidistill.patches.jpeg import SlideJpegCodec, source_tile_codec
from wsidistill.patches.zarr_io import encode_shard, read_source_tiles

TILE = 32


def tissue_like(seed: int) -> np.ndarray:
    """A smooth (TILE, TILE, 3) image: JPEG keeps it within a few grey levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:TILE, 0:TILE] / TILE
    channels = [160 + 40 * np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in rng.uniform(0.2, 0.8, (3, 3))]
    return np.stack(channels, axis=-1).astype(np.uint8)


def split_tables(jpeg: bytes) -> tuple[bytes, bytes]:
    """(tables-only stream, abbreviated image stream) of a full JPEG, as TIFF's JPEGTables tag and a tile hold them."""
    tables, image, i = [b"\xff\xd8"], [b"\xff\xd8"], 2
    while True:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        segment = jpeg[i : i + 2 + length]
        if marker == 0xDA:  # start of scan: the entropy-coded data follows to the end
            image.append(jpeg[i:])
            break
        (tables if marker in (0xDB, 0xC4) else image).append(segment)
        i += 2 + length
    return b"".join(tables) + b"\xff\xd9", b"".join(image)


def sharded_array(path, codec: SlideJpegCodec, patches: int, side: int) -> zarr.Array:
    return zarr.create_array(str(path), shape=(patches, side, side, 3), chunks=(1, TILE, TILE, 3),
                             shards=(patches, side, side, 3), dtype="uint8", serializer=codec, compressors=None,
                             fill_value=255)


def write_shard(array_path, shard: bytes) -> None:
    """The array's only shard, under zarr's default chunk key c/0/0/0/0."""
    folder = array_path / "c" / "0" / "0" / "0"
    folder.mkdir(parents=True)
    (folder / "0").write_bytes(shard)


def test_split_tables_are_what_a_tiff_tile_needs():
    full = imagecodecs.jpeg8_encode(tissue_like(0), level=90)
    tables, image = split_tables(full)
    assert b"\xff\xdb" not in image and len(tables) + len(image) == len(full) + 4  # one SOI and one EOI more
    np.testing.assert_array_equal(imagecodecs.jpeg8_decode(image, tables=tables), imagecodecs.jpeg8_decode(full))


@pytest.mark.parametrize("rgb", [False, True])
def test_a_shard_of_tile_bytes_reads_back_as_each_tile_decoded(tmp_path, rgb):
    """Two patches of 2x2 tiles, one tile absent (a tile the scanner left out): it reads back as the fill value."""
    colorspace = imagecodecs.JPEG8.CS.RGB if rgb else None
    pieces = [split_tables(imagecodecs.jpeg8_encode(tissue_like(i), level=90, colorspace=imagecodecs.JPEG8.CS.RGB,
                                                    outcolorspace=colorspace)) for i in range(8)]
    tables = pieces[0][0]
    assert all(t == tables for t, _ in pieces)  # one quality: the slide's shared tables
    tiles = [image for _, image in pieces]
    tiles[5] = b""
    array = sharded_array(tmp_path / "a.zarr", SlideJpegCodec(tables=tables, rgb=rgb), 2, 2 * TILE)
    write_shard(tmp_path / "a.zarr", encode_shard(tiles, (2, 2, 2, 1)))

    stored = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]
    for i, tile in enumerate(tiles):
        patch, row, column = divmod(i, 4)[0], divmod(i % 4, 2)[0], i % 2
        got = stored[patch, row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
        expected = (imagecodecs.jpeg8_decode(tile, tables=tables, colorspace=colorspace) if tile
                    else np.full((TILE, TILE, 3), 255, np.uint8))
        np.testing.assert_array_equal(got, expected)
    assert np.abs(stored[0, :TILE, :TILE].astype(int) - tissue_like(0)).mean() < 2  # and they are the images
    assert array.shards == (2, 2 * TILE, 2 * TILE, 3)


def test_zarr_checks_the_shard_index_checksum(tmp_path):
    tables, tile = split_tables(imagecodecs.jpeg8_encode(tissue_like(0), level=90))
    sharded_array(tmp_path / "a.zarr", SlideJpegCodec(tables=tables), 1, TILE)
    shard = bytearray(encode_shard([tile], (1, 1, 1, 1)))
    shard[-10] ^= 0xFF  # a bit flip in the index
    write_shard(tmp_path / "a.zarr", bytes(shard))
    with pytest.raises(Exception, match="checksum|crc"):
        zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]


@pytest.mark.parametrize("rgb", [False, True])
def test_writing_through_zarr_encodes_jpeg_that_reads_back_close(tmp_path, rgb):
    images = np.stack([np.tile(tissue_like(i), (2, 2, 1)) for i in range(3)])
    array = sharded_array(tmp_path / "a.zarr", SlideJpegCodec(rgb=rgb), 3, 2 * TILE)
    array[:] = images
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]
    assert np.abs(back.astype(int) - images).mean() < 3  # quality 90, chroma subsampled when YCbCr


def test_plain_zarr_finds_the_codec_through_its_entry_point(tmp_path):
    """A reader that never imports wsidistill still opens the store: zarr loads the codec by name."""
    array = sharded_array(tmp_path / "a.zarr", SlideJpegCodec(), 1, TILE)
    array[:] = tissue_like(0)[None]
    script = (f"import sys, zarr; a = zarr.open_array({str(tmp_path / 'a.zarr')!r}, mode='r')[:]; "
              "print(int(a.sum()), 'wsidistill.patches.jpeg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(int(array[:].sum())), "True"]


@pytest.mark.parametrize("rows", [slice(0, 5), slice(1, 4), slice(3, 5), slice(3, 9), [4, 0, 2, 2], []])
def test_the_direct_reader_reads_what_zarr_reads(tmp_path, rows):
    """Shards of 2 patches of 2x2 tiles: a full one with an absent tile, a partial one, and one never written."""
    tables = split_tables(imagecodecs.jpeg8_encode(tissue_like(0), level=90))[0]
    tiles = [split_tables(imagecodecs.jpeg8_encode(tissue_like(i), level=90))[1] for i in range(12)]
    tiles[5] = b""
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(5, 2 * TILE, 2 * TILE, 3), chunks=(1, TILE, TILE, 3),
                              shards=(2, 2 * TILE, 2 * TILE, 3), dtype="uint8", serializer=SlideJpegCodec(tables=tables),
                              compressors=None, fill_value=255)
    for shard, chunks in ((0, tiles[:8]), (1, tiles[8:])):  # patches 0-1, then patch 2 alone; 3-4 never written
        folder = tmp_path / "a.zarr" / "c" / str(shard) / "0" / "0"
        folder.mkdir(parents=True)
        (folder / "0").write_bytes(encode_shard(chunks, (2, 2, 2, 1)))
    assert source_tile_codec(array) is not None
    expected = array[:][rows]
    np.testing.assert_array_equal(read_source_tiles(array, np.arange(5)[rows]), expected)
    np.testing.assert_array_equal(read_images(array, rows if isinstance(rows, slice) else np.array(rows, int)), expected)


def test_the_direct_reader_checks_the_shard_index(tmp_path):
    tables, tile = split_tables(imagecodecs.jpeg8_encode(tissue_like(0), level=90))
    array = sharded_array(tmp_path / "a.zarr", SlideJpegCodec(tables=tables), 1, TILE)
    shard = bytearray(encode_shard([tile], (1, 1, 1, 1)))
    shard[-10] ^= 0xFF
    write_shard(tmp_path / "a.zarr", bytes(shard))
    with pytest.raises(ValueError, match="a.zarr/c/0/0/0/0: the shard index fails its checksum"):
        read_source_tiles(array, np.array([0]))


def test_other_arrays_are_read_by_zarr(tmp_path):
    array = zarr.create_array(str(tmp_path / "b.zarr"), shape=(3, 8, 8, 3), chunks=(2, 8, 8, 3), dtype="uint8")
    array[:] = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    assert source_tile_codec(array) is None
    np.testing.assert_array_equal(read_images(array, slice(1, 9)), array[1:3])
    np.testing.assert_array_equal(read_images(array, np.array([2, 0])), array[:][[2, 0]])
