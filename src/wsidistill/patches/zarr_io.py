"""Zarr v3 chunk files written and read directly, bypassing zarr-python where it costs more than the work.

Three fast paths, each producing or reading exactly the bytes zarr-python does
(each has a round-trip test against plain ``zarr.open``, tests/patches/test_zarr_io.py):

- :class:`PatchWriter`, :func:`chunk_encoder`: whole chunks (Blosc, or shards of a
  slide's JPEG tiles) encoded here and written as files.  zarr-python's own write
  path (a fresh fill-value buffer and a copy per chunk, a hop to its event loop and
  on to a thread) costs four times the compression itself (docs/performance.md).
  :class:`RowChunkWriter` does the same for the Teacher-target cache, in the
  calling thread, so that nothing is still writing once a write fails.
- :func:`encode_shard` / :func:`read_source_tiles`: ``sharding_indexed`` shards of
  a slide's own JPEG tiles (:mod:`.jpeg`).  The direct reader decodes only the
  tiles of the rows asked for, without zarr-python's 0.4 ms of work per chunk on
  top of the decode (more than the decode itself).
- :class:`ChunkFiles`: rows of an unsharded Blosc/Zstd array read straight from
  its chunk files.  Zarr's reader spends ~0.5 ms of Python per chunk; a batch of 32
  one-row chunks read here costs the file reads and the decompression only (~9 ms
  for 32 rows of 256 KiB on the 2-core dev machine).

:func:`chunk_files` counts each array's chunk files with one directory walk: the
stores' completeness record (:mod:`.store`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import imagecodecs
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec

from .jpeg import source_tile_codec

#: Index entry of a chunk absent from its shard (zarr's sharding_indexed specification).
EMPTY = np.iinfo(np.uint64).max

_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


# --- JPEG shards ---------------------------------------------------------------------------------------------------

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


def read_source_tiles(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (indices) of a source-tile array in a local directory, decoded straight from its shard files.

    Returns (len(rows), P, P, 3) uint8.  Only the tiles of those rows are
    decoded: the same pixels zarr-python reads (tested).  Shard indexes are
    checked against their CRC-32C (ValueError naming the shard file).
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


# --- whole chunks written directly ---------------------------------------------------------------------------------

def chunk_encoder(array: zarr.Array) -> Callable[[np.ndarray | list], bytes]:
    """``block -> bytes`` of one whole chunk or shard file exactly as ``array``'s metadata declares.

    Plain arrays (``bytes`` codec, little-endian, then at most Blosc) take a
    block of at most one chunk's shape, padded here with the fill value as
    zarr stores edge chunks; source-tile arrays take each row's tile bytes.
    ValueError for any other layout.
    """
    if source_tile_codec(array) is not None:
        chunks_per_shard = tuple(s // c for s, c in zip(array.shards, array.chunks))
        return lambda rows: encode_shard([tile for row in rows for tile in row], chunks_per_shard)
    codecs = array.metadata.codecs
    little = array.dtype.itemsize == 1 or (isinstance(codecs[0], BytesCodec) and codecs[0].endian is not None
                                           and codecs[0].endian.value == "little")
    if not (array.order == "C" and isinstance(codecs[0], BytesCodec) and little and len(codecs) <= 2
            and (len(codecs) == 1 or isinstance(codecs[1], BloscCodec))):
        raise ValueError(f"{array.path}: direct chunk writes take Blosc or uncompressed arrays, not {codecs}")
    compress = bytes
    if len(codecs) == 2:
        blosc = codecs[1]
        compress = numcodecs.Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=_SHUFFLE[blosc.shuffle.value],
                                   typesize=blosc.typesize, blocksize=blosc.blocksize).encode
    shape, dtype, fill = tuple(array.chunks), array.dtype, array.fill_value

    def encode(block: np.ndarray) -> bytes:
        if block.shape != shape:
            padded = np.full(shape, fill, dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        return compress(np.ascontiguousarray(block, dtype=dtype).view(np.uint8).reshape(-1))

    return encode


def chunk_path(directory: str | Path, array: zarr.Array, index: tuple[int, ...]) -> Path:
    """The file of chunk (or shard) ``index`` of ``array`` in a store at ``directory``."""
    return Path(directory) / array.path / array.metadata.encode_chunk_key(index)


def _rows_per_file(array: zarr.Array) -> int:
    return (array.shards or array.chunks)[0]


def _take_rows(pieces: list, count: int) -> tuple[np.ndarray | list, list]:
    """The first ``count`` rows of ``pieces`` (arrays or lists; a view when one piece holds them all) and the rest."""
    head, rest = [], list(pieces)
    while count:
        piece = rest.pop(0)
        if len(piece) > count:
            head.append(piece[:count])
            rest.insert(0, piece[count:])
            count = 0
        else:
            head.append(piece)
            count -= len(piece)
    if len(head) == 1:
        return head[0], rest
    return (np.concatenate(head) if isinstance(head[0], np.ndarray) else [row for piece in head for row in piece]), rest


class PatchWriter:
    """Appends patches to each magnification's array; writer threads store whole chunks meanwhile.

    Chunks (or shards) are encoded here (:func:`chunk_encoder`) and written as
    files in ``directory`` (where the store lives) under the keys the array's
    metadata gives.  At most one batch is in flight, so memory is bounded by
    two batches.  On leaving the ``with`` block, even by an exception, every
    writer thread is joined: nothing writes into ``directory`` afterwards.
    """

    def __init__(self, images: dict[str, zarr.Array], directory: str | Path, *, workers: int = 1):
        self.images = images
        self.directory = Path(directory)
        self._encoders = {name: chunk_encoder(array) for name, array in images.items()}
        self._pending = {name: [] for name in images}
        self._written = dict.fromkeys(images, 0)
        self._pool = ThreadPoolExecutor(max(1, workers))
        self._in_flight = []

    def append(self, patches: dict[str, np.ndarray]) -> None:
        for name in self.images:
            self._pending[name].append(patches[name])

    def flush(self, *, final: bool = False) -> None:
        """Hand every whole chunk (and, when final, the last partial one) to the writer threads."""
        jobs = []
        for name, array in self.images.items():
            pieces, per_chunk = self._pending[name], _rows_per_file(array)
            rows = sum(len(piece) for piece in pieces)
            while rows >= per_chunk or (final and rows):
                chunk, pieces = _take_rows(pieces, min(rows, per_chunk))
                jobs.append((name, self._written[name], chunk))
                self._written[name] += len(chunk)
                rows -= len(chunk)
            self._pending[name] = pieces
        self._wait()
        self._in_flight = [self._pool.submit(self._store, *job) for job in jobs]
        if final:
            self._wait()

    def _store(self, name: str, start: int, patches: np.ndarray | list) -> None:
        array = self.images[name]
        path = chunk_path(self.directory, array, (start // _rows_per_file(array),) + (0,) * (array.ndim - 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._encoders[name](patches))

    def _wait(self) -> None:
        for future in self._in_flight:
            future.result()
        self._in_flight = []

    def __enter__(self) -> PatchWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.flush(final=True)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


class RowChunkWriter:
    """Appends rows (axis 1) of one index of axis 0 to an unsharded array; writes whole chunks only.

    For arrays chunked ``(1, r, ...)`` such as the Teacher-target cache's; chunk files are encoded
    (:func:`chunk_encoder`) and written in the calling thread, into the store at ``directory``.
    """

    def __init__(self, array: zarr.Array, directory: str | Path, element: int) -> None:
        if array.chunks[0] != 1 or array.shards is not None:
            raise ValueError(f"{array.path}: RowChunkWriter writes unsharded arrays chunked (1, rows, ...)")
        self.array, self.directory, self.element, self.start = array, Path(directory), element, 0
        self.rows = array.chunks[1]
        self.encode = chunk_encoder(array)
        self.parts: list[np.ndarray] = []

    def append(self, block: np.ndarray) -> None:
        self.parts.append(block)
        pending = sum(len(p) for p in self.parts)
        whole = pending // self.rows * self.rows
        if whole:
            self._write(whole)

    def close(self) -> None:
        pending = sum(len(p) for p in self.parts)
        if pending:
            self._write(pending)

    def _write(self, count: int) -> None:
        data = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        tail = (0,) * (self.array.ndim - 2)
        for start in range(0, count, self.rows):
            path = chunk_path(self.directory, self.array, (self.element, (self.start + start) // self.rows, *tail))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.encode(data[None, start : min(start + self.rows, count)]))
        self.start += count
        self.parts = [data[count:]] if count < len(data) else []


# --- whole chunks read directly ------------------------------------------------------------------------------------

class ChunkFiles:
    """Rows of one (E, N, ...) array read straight from its chunk files in a local store.

    Used for plain arrays (no sharding), chunked ``(1, r, ...)``, whose codecs are ``bytes`` then at
    most one of ``blosc``/``zstd``; NotImplementedError for others (read those through zarr).
    """

    def __init__(self, array: zarr.Array, path: Path) -> None:
        from numcodecs import Blosc, Zstd
        from zarr.codecs import ZstdCodec

        codecs = list(array.metadata.codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
            raise NotImplementedError(f"codecs {codecs}")
        if array.dtype.itemsize > 1 and codecs[0].endian is not None and codecs[0].endian.value != "little":
            raise NotImplementedError("big-endian chunks")
        self.decompressor = None
        if len(codecs) == 2:
            if isinstance(codecs[1], BloscCodec):
                self.decompressor = Blosc()
            elif isinstance(codecs[1], ZstdCodec):
                self.decompressor = Zstd()
            else:
                raise NotImplementedError(f"codec {codecs[1]}")
        self.path, self.encoding = path, array.metadata.chunk_key_encoding
        self.shape, self.chunk_shape = tuple(array.shape), tuple(array.chunks)
        self.dtype = array.dtype.newbyteorder("<")
        self.fill_value = array.metadata.fill_value

    def chunk(self, element: int, index: int) -> np.ndarray:
        """Chunk ``index`` along the rows of element ``element`` (axis 0): ``chunk_shape[1:]``."""
        return self.block((element, index))[0]

    def block(self, index: Sequence[int]) -> np.ndarray:
        """The chunk at grid position ``index`` on the leading axes (0 on the others): ``chunk_shape``."""
        key = self.encoding.encode_chunk_key(tuple(index) + (0,) * (len(self.chunk_shape) - len(index)))
        try:
            data = (self.path / key).read_bytes()
        except FileNotFoundError:  # never written: every value is the fill value
            return np.full(self.chunk_shape, self.fill_value, self.dtype)
        if self.decompressor is not None:
            data = self.decompressor.decode(data)
        return np.frombuffer(data, self.dtype).reshape(self.chunk_shape)

    def read(self, element: int, row: int) -> np.ndarray:
        rows = self.chunk_shape[1]
        return self.chunk(element, row // rows)[row % rows]

    def read_all(self) -> np.ndarray:
        """The whole array, each chunk read once."""
        out = np.empty(self.shape, self.dtype)
        rows = self.chunk_shape[1]
        for element in range(self.shape[0]):
            for start in range(0, self.shape[1], rows):
                stop = min(start + rows, self.shape[1])
                out[element, start:stop] = self.chunk(element, start // rows)[: stop - start]
        return out


# --- what a store holds --------------------------------------------------------------------------------------------

def _is_chunk_key_start(part: str) -> bool:
    """``c`` (default encoding, "/" separator) or ``c.0.1`` ("." separator): where a chunk key begins."""
    return part == "c" or (part.startswith("c.") and part[2:].replace(".", "").isdigit())


def chunk_files(directory: str | Path) -> dict[str, int]:
    """``{array path: number of chunk (or shard) files}`` of the Zarr v3 store at ``directory``.

    One directory walk, no file read; arrays without a chunk file are left out.
    """
    directory = Path(directory)
    counts: dict[str, int] = {}
    for folder, subfolders, files in os.walk(directory):
        parts = Path(folder).relative_to(directory).parts
        start = next((i for i, part in enumerate(parts) if _is_chunk_key_start(part)), None)
        if start is not None:  # inside an array's chunk folders: every file is a chunk
            array = "/".join(parts[:start])
            counts[array] = counts.get(array, 0) + len(files)
            continue
        chunks = [f for f in files if _is_chunk_key_start(f)]
        if chunks:
            array = "/".join(parts)
            counts[array] = counts.get(array, 0) + len(chunks)
    return dict(sorted(counts.items()))
