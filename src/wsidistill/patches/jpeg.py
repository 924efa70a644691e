"""A Zarr v3 codec whose chunks are a slide's own JPEG tiles, and its shards written and read directly.

When patches sit exactly on a slide's JPEG tiles at the native level, the
store can keep the scanner's bytes instead of decoding and recompressing
them: no generation loss, a fraction of the size, and no encoding cost.  The
codec decodes a chunk as the slide reader does (the page's shared JPEG tables,
Aperio's RGB-coded components), so the pixels read back are the reader's.

The codec is registered with zarr-python under :data:`CODEC_NAME` on import
and through the ``zarr.codecs`` entry point, so any process with wsidistill
installed opens such stores with plain ``zarr.open``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import imagecodecs
import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import ShardingCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

CODEC_NAME = "wsidistill.slide_jpeg"

#: Index entry of a chunk absent from its shard (zarr's sharding_indexed specification).
EMPTY = np.iinfo(np.uint64).max


@dataclass(frozen=True)
class SlideJpegCodec(ArrayBytesCodec):
    """One chunk = one (1, tile_height, tile_width, 3) uint8 tile, JPEG-coded.

    ``tables``: the slide page's abbreviated JPEGTables stream (or None when
    each tile carries its own); ``rgb``: the components are RGB, not YCbCr.
    Encoding (for writes through zarr-python) makes a self-contained JPEG of
    quality ``level`` in the same colourspace, which decodes with the same
    settings.
    """

    is_fixed_size = False

    tables: bytes | None = None
    rgb: bool = False
    level: int = 90

    @classmethod
    def from_dict(cls, data: dict) -> SlideJpegCodec:
        _, config = parse_named_configuration(data, CODEC_NAME)
        tables = config.get("tables")
        return cls(tables=base64.b64decode(tables) if tables else None, rgb=bool(config.get("rgb", False)),
                   level=int(config.get("level", 90)))

    def to_dict(self) -> dict:
        tables = base64.b64encode(self.tables).decode("ascii") if self.tables else None
        return {"name": CODEC_NAME, "configuration": {"tables": tables, "rgb": self.rgb, "level": self.level}}

    @property
    def colorspace(self):
        """What to tell libjpeg the components are: RGB, or None for its default (YCbCr unless marked)."""
        return imagecodecs.JPEG8.CS.RGB if self.rgb else None

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{CODEC_NAME} stores (n, height, width, 3) uint8 images, not {shape} {dtype}")

    def _decode_sync(self, chunk_bytes, chunk_spec):
        image = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes(), tables=self.tables, colorspace=self.colorspace)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(image.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array, chunk_spec):
        image = np.ascontiguousarray(chunk_array.as_numpy_array().reshape(chunk_spec.shape[1:]))
        data = imagecodecs.jpeg8_encode(image, level=self.level, colorspace=imagecodecs.JPEG8.CS.RGB,
                                        outcolorspace=self.colorspace)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array, chunk_spec):
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError("JPEG chunks vary in size")


register_codec(CODEC_NAME, SlideJpegCodec)


def encode_shard(chunks: list[bytes], chunks_per_shard: tuple[int, ...]) -> bytes:
    """A ``sharding_indexed`` shard (index at the end, then bytes and crc32c index codecs) of encoded chunks.

    ``chunks`` are in C order of the shard's chunk grid, ``b""`` for a chunk
    that is absent (read back as the fill value); missing trailing ones are absent too.
    """
    index = np.full((int(np.prod(chunks_per_shard)), 2), EMPTY, dtype="<u8")
    offset = 0
    for i, chunk in enumerate(chunks):
        if chunk:
            index[i] = offset, len(chunk)
            offset += len(chunk)
    index_bytes = index.tobytes()
    return b"".join([*chunks, index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")])


def source_tile_codec(array: zarr.Array) -> SlideJpegCodec | None:
    """The codec of an array whose shards hold slide JPEG tiles, else None."""
    codecs = array.metadata.codecs
    if not (isinstance(codecs[0], ShardingCodec) and isinstance(codecs[0].codecs[0], SlideJpegCodec)):
        return None
    return codecs[0].codecs[0]


def read_source_tiles(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (indices) of a source-tile array in a local directory, decoded straight from its shard files.

    Only the tiles of those rows are decoded.  The same pixels zarr-python
    reads (tested), without its 0.4 ms of work per chunk on top of the decode
    (more than the decode itself).  Shard indexes are checked against their
    CRC-32C.
    """
    codec = source_tile_codec(array)
    rows = np.asarray(rows, dtype=np.int64)
    rows_per_shard = array.shards[0]
    _, tile_h, tile_w, _ = array.chunks
    across, down = array.shape[2] // tile_w, array.shape[1] // tile_h
    tiles_per_shard = rows_per_shard * across * down
    out = np.empty((len(rows), *array.shape[1:]), np.uint8)
    directory = Path(array.store_path.store.root) / array.path
    shards = rows // rows_per_shard
    order = np.argsort(shards, kind="stable")
    for positions in np.split(order, np.flatnonzero(np.diff(shards[order])) + 1) if len(rows) else []:
        path = directory / array.metadata.encode_chunk_key((int(shards[positions[0]]), 0, 0, 0))
        if not path.exists():  # a shard never written reads as the fill value, as in zarr
            out[positions] = array.fill_value
            continue
        data = path.read_bytes()
        index_bytes = data[-4 - 16 * tiles_per_shard : -4]
        if google_crc32c.value(index_bytes).to_bytes(4, "little") != data[-4:]:
            raise ValueError(f"{path}: the shard index fails its checksum; extract the slide again")
        index = np.frombuffer(index_bytes, "<u8").reshape(rows_per_shard, down * across, 2)
        for position in positions:
            for k, (offset, length) in enumerate(index[rows[position] % rows_per_shard]):
                r, c = divmod(k, across)
                pixels = out[position, r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w]
                if offset == EMPTY:
                    pixels[:] = array.fill_value
                elif across == down == 1:
                    imagecodecs.jpeg8_decode(data[offset : offset + length], tables=codec.tables,
                                             colorspace=codec.colorspace, out=pixels)
                else:
                    pixels[:] = imagecodecs.jpeg8_decode(data[offset : offset + length], tables=codec.tables,
                                                         colorspace=codec.colorspace)
    return out
