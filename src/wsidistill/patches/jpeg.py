"""A Zarr v3 codec whose chunks are a slide's own JPEG tiles, and its shards written and read directly.

When patches sit exactly on a slide's JPEG tiles at the native level, the
store can keep the scanner's bytes instead of decoding and recompressing
them: no generation loss, a fraction of the size, and no encoding cost.  The
codec decodes a chunk as the slide reader does (the page's shared JPEG tables,
Aperio's RGB-coded components), so the pixels read back are the reader's.

The codec is registered with zarr-python under :data:`CODEC_NAME` on import
and through the ``zarr.codecs`` entry point, so any process with wsidistill
installed opens such stores with plain ``zarr.open``.  Its shards are written and
read directly by :mod:`.zarr_io` (``encode_shard``, ``read_source_tiles``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import imagecodecs
import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import ShardingCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

CODEC_NAME = "wsidistill.slide_jpeg"

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


def source_tile_codec(array: zarr.Array) -> SlideJpegCodec | None:
    """The codec of an array whose shards hold slide JPEG tiles, else None."""
    codecs = array.metadata.codecs
    if not (isinstance(codecs[0], ShardingCodec) and isinstance(codecs[0].codecs[0], SlideJpegCodec)):
        return None
    return codecs[0].codecs[0]
