"""One reader for every slide format, with resolution always carried with its unit.

OpenSlide opens SVS, NDPI, MRXS, generic tiled TIFF and DICOM (a file of the
series, or its folder) and supplies the metadata.  TIFFs are read as they are
stored: a pyramid OpenSlide does not see (an OME-TIFF's levels in SubIFDs) and
TIFFs OpenSlide refuses (stripped, untiled) are read through tifffile's series
levels, with the MPP from the resolution tags or the OME-XML.  tiatoolbox's
``WSIReader`` is the fallback for other files OpenSlide does not recognise
(JPEG 2000, plain images).  Magnification comes from the objective power;
without it, it is derived from the MPP and snapped to the nearest standard
objective, and the derivation is recorded, never hidden
(:func:`resolve_resolution`).  Transparent pixels are composited on white the
same way whatever the reader (:func:`composite_on_white`).

Pixels of Aperio SVS and generic tiled TIFF slides are read straight from the
file (:class:`TiffTiles`): each tile's bytes with one ``pread``, decoded once by
libjpeg-turbo with the file's JPEG tables and colourspace.  That is the same
decode OpenSlide does, without its per-region ARGB compositing and tile cache,
and it is where extraction spends most of its time.  Every other format is read
through OpenSlide (or tifffile, or tiatoolbox).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import cv2
import imagecodecs
import numpy as np
import openslide
import tifffile

from ..errors import InputError
from .grid import MPP_AT_10X, STANDARD_POWERS, standard_power  # noqa: F401 (STANDARD_POWERS: re-exported)

#: Largest ratio between 10 / mpp and the recorded objective power read as agreement (Hamamatsu 40x: 0.2265 um/px).
CONSISTENT_RATIO = 1.3

#: MPPs outside this range (um/px) are placeholders (72 dpi, 1 px per unit), not a scanner's.
PLAUSIBLE_MPP = (0.05, 20.0)

#: Relative difference between x and y MPP still read as square pixels.
SQUARE_TOLERANCE = 0.01

#: OpenSlide vendors whose TIFF tile grid is the image itself (no overlaps, offsets or stitching).
DIRECT_VENDORS = ("aperio", "generic-tiff")

#: TIFF compressions :class:`TiffTiles` decodes; tiles in any other go through OpenSlide.
DIRECT_COMPRESSIONS = frozenset(
    tifffile.COMPRESSION[name]
    for name in ("NONE", "LZW", "JPEG", "ADOBE_DEFLATE", "DEFLATE", "ZSTD", "PACKBITS")
)

#: Suffixes OpenSlide does not read but tiatoolbox does; other unrecognised files are errors.
TIATOOLBOX_SUFFIXES = (".jp2", ".j2k")

#: Plain images read whole by OpenCV, alpha kept (tiatoolbox drops it, leaving transparent pixels' colour).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: Suffixes read through tifffile when OpenSlide refuses them or misses their pyramid.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")

#: Rows of the coarsest level read at once for the thumbnail: memory stays bounded on slides without a pyramid.
THUMBNAIL_STRIP_PIXELS = 16 << 20


class SlideReadError(InputError, RuntimeError):
    """A slide that cannot be opened or lacks the metadata to place it in physical units."""


@dataclass(frozen=True)
class SlideInfo:
    """What the pipeline needs to know about a slide, with where each fact came from."""

    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float
    objective_power_source: str
    pixel_reader: str

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(value) -> float | None:
    """``value`` as a positive finite float, or None for anything a scanner might leave instead."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None


class Resolution(NamedTuple):
    """A slide's resolution: level-0 microns per pixel and (equivalent) objective power, each with its source."""

    mpp: float
    mpp_source: str
    objective_power: float
    objective_power_source: str
    warnings: tuple[str, ...] = ()


def resolve_resolution(
    path: str | Path,
    mpp: float | None,
    objective_power: float | None,
    *,
    mpp_y: float | None = None,
    mpp_override: float | None = None,
    power_override: float | None = None,
) -> Resolution:
    """Combine metadata and the sample sheet's ``mpp`` / ``objective_power`` overrides into one Resolution.

    The MPP is the physical measurement and wins over a disagreeing objective
    power from the file (a 20x objective behind a 2x camera adapter is 40x
    pixels); a sample-sheet value wins over the file.  A missing power is
    derived from the MPP and snapped to the nearest standard objective
    (0.2520 um/px -> 40x, 0.2265 -> 40x), a missing MPP from the power
    (10 / power).  Raises SlideReadError naming the slide, the values and the
    sheet column for missing or non-square resolution; disagreements and
    implausible values are returned as warnings naming the same.
    """
    notes = []
    fix = ("Set the `mpp` or `objective_power` column for this slide in the sample sheet (--mpp / --objective-power "
           "on the command line) to override.")
    mpp_source = power_source = "metadata"
    if mpp is not None and not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        notes.append(f"{path}: the file's mpp {mpp:g} um/px is outside the range of slide scanners "
                     f"({PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g}), a placeholder resolution; ignored. {fix}")
        mpp = mpp_y = None
    if mpp_override is not None:
        mpp, mpp_y, mpp_source = float(mpp_override), None, "sample sheet"
    if power_override is not None:
        objective_power, power_source = float(power_override), "sample sheet"
    if mpp is not None and mpp_y is not None and abs(mpp_y / mpp - 1) > SQUARE_TOLERANCE:
        raise SlideReadError(f"{path}: the pixels are not square ({mpp:g} x {mpp_y:g} um): patches would be "
                             "stretched. Resample the slide to square pixels, or, if the metadata is wrong, set "
                             "the `mpp` column for this slide in the sample sheet (--mpp).")
    if mpp is None and objective_power is None:
        raise SlideReadError(
            f"{path}: the slide records neither microns per pixel nor objective power. "
            "Add an `mpp` (e.g. 0.25 for 40x) or `objective_power` column value for this slide "
            "in the sample sheet (--mpp / --objective-power on the command line)."
        )
    if objective_power is None:
        objective_power = standard_power(mpp)
        power_source = (f"derived from mpp ({MPP_AT_10X * 10 / mpp:.2f}x, nearest standard objective)"
                        if mpp_source == "metadata" else f"derived from mpp ({mpp_source})")
    elif mpp is None:
        mpp = MPP_AT_10X * 10 / objective_power
        mpp_source = "derived from objective power" + ("" if power_source == "metadata" else f" ({power_source})")
    elif abs(math.log(MPP_AT_10X * 10 / mpp / objective_power)) > math.log(CONSISTENT_RATIO):
        said = f"objective power {objective_power:g}x ({power_source}) and mpp {mpp:g} um/px ({mpp_source}, " \
               f"{MPP_AT_10X * 10 / mpp:.1f}x) disagree"
        if power_source == "sample sheet" and mpp_source == "metadata":
            mpp, mpp_source = MPP_AT_10X * 10 / objective_power, f"derived from objective power (sample sheet; {said})"
        elif mpp_source == "sample sheet" and power_source == "metadata":
            objective_power, power_source = standard_power(mpp), f"derived from mpp (sample sheet; {said})"
        else:
            notes.append(f"{path}: {said}; using {standard_power(mpp):g}x from the mpp. {fix}")
            objective_power, power_source = standard_power(mpp), f"derived from mpp ({said})"
    return Resolution(float(mpp), mpp_source, float(objective_power), power_source, tuple(notes))


class TiffTiles:
    """One level of a tiled TIFF, decoded tile by tile straight from the file.

    ``fill`` is what lies outside the image and in tiles a scanner left empty
    (white for slides, 0 = background for label masks).  Reads are thread-safe:
    ``os.pread`` has no file position and the decoders hold no state.
    """

    def __init__(self, path: Path, fd: int, page: tifffile.TiffPage, fill: int):
        self.path = path
        self._fd = fd
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_width, self.tile_height = int(page.tilewidth), int(page.tilelength)
        self.samples = int(page.samplesperpixel)
        self.fill = fill
        self.premultiplied = associated_alpha(page)
        self._across = -(-self.width // self.tile_width)
        self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self._bytecounts = np.asarray(page.databytecounts, dtype=np.int64)
        #: (JPEGTables, RGB-coded) of a 3-sample JPEG level, whose tiles a store can keep as they are; else None.
        self.jpeg: tuple[bytes | None, bool] | None = None
        if page.compression == tifffile.COMPRESSION.JPEG:
            # Aperio writes RGB (not YCbCr) JPEG tiles and says so only in the TIFF tag; without
            # a JFIF marker libjpeg would assume YCbCr and shift every colour.
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and not page.is_jfif
            self._decode = partial(imagecodecs.jpeg8_decode, tables=page.jpegtables,
                                   colorspace=imagecodecs.JPEG8.CS.RGB if rgb else None)
            self._decodes_into = self.samples == 3
            if self.samples == 3:
                self.jpeg = (page.jpegtables or None, rgb)
        else:
            decode = page.decode
            self._decode = lambda data: decode(data, 0)[0][0]
            self._decodes_into = False

    @staticmethod
    def readable(page: tifffile.TiffPage, samples: tuple[int, ...]) -> bool:
        return (page.is_tiled and page.compression in DIRECT_COMPRESSIONS and page.dtype == np.uint8
                and page.samplesperpixel in samples and page.imagedepth == 1
                and page.planarconfig == tifffile.PLANARCONFIG.CONTIG)

    def tile_bytes(self, column: int, row: int) -> bytes:
        """The tile's bytes as stored in the file; empty for a tile the scanner left out."""
        index = row * self._across + column
        count = int(self._bytecounts[index])
        data = os.pread(self._fd, count, int(self._offsets[index])) if count else b""
        if len(data) < count:
            raise SlideReadError(f"{self.path}: the file is truncated (tile {column},{row} ends past its end). "
                                 "Re-copy or re-export it.")
        return data

    def tile(self, column: int, row: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """One decoded tile (tile_height, tile_width, samples), into ``out`` if given; None for an empty one."""
        data = self.tile_bytes(column, row)
        return self.decode(data, column, row, out) if data else None

    def decode(self, data: bytes, column: int, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tile (column, row)'s ``data`` decoded, into ``out`` if given (a whole tile, C-contiguous)."""
        try:
            tile = self._decode(data, out=out) if out is not None else self._decode(data)
        except Exception as err:  # imagecodecs raises one error class per codec
            raise SlideReadError(f"{self.path}: tile {column},{row} cannot be decoded ({err}). The file is corrupt: "
                                 "re-export or re-copy it, or remove it from the sample sheet.") from err
        return tile.reshape(tile.shape[0], tile.shape[1], -1)

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, samples) pixels from (x, y) in this level's pixels."""
        return self.read_rectangles(np.array([[x, y]]), width, height)[0]

    def read_rectangles(self, corners: np.ndarray, width: int, height: int | None = None,
                        out: np.ndarray | None = None) -> np.ndarray:
        """(n, height, width, samples): the rectangles at ``corners`` (n, 2), in this level's pixels, into ``out``.

        Every tile under any rectangle is decoded once, however many
        rectangles it feeds; tiles under none are not decoded at all.
        """
        height = width if height is None else height
        corners = np.asarray(corners, dtype=np.int64)
        tw, th = self.tile_width, self.tile_height
        if out is None:
            out = np.empty((len(corners), height, width, self.samples), np.uint8)
        feeds = {}  # (column, row) -> rectangles it covers
        for i, (x, y) in enumerate(corners):
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + width, self.width), min(y + height, self.height)
            if (x0, y0, x1, y1) != (x, y, x + width, y + height):
                out[i] = self.fill  # partly outside the image
            for row in range(y0 // th, -(-y1 // th)):
                for column in range(x0 // tw, -(-x1 // tw)):
                    feeds.setdefault((column, row), []).append(i)
        whole = width == tw and height == th and self._decodes_into
        for (column, row), rectangles in feeds.items():
            tx, ty = column * tw, row * th
            if whole and len(rectangles) == 1 and tuple(corners[rectangles[0]]) == (tx, ty) \
                    and tx + tw <= self.width and ty + th <= self.height:
                if self.tile(column, row, out=out[rectangles[0]]) is None:  # a rectangle that is the tile
                    out[rectangles[0]] = self.fill
                continue
            tile = self.tile(column, row)
            for i in rectangles:
                x, y = corners[i]
                sx0, sy0 = max(x, tx, 0), max(y, ty, 0)
                sx1, sy1 = min(x + width, tx + tw, self.width), min(y + height, ty + th, self.height)
                target = out[i, sy0 - y : sy1 - y, sx0 - x : sx1 - x]
                target[:] = self.fill if tile is None else tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out


def tiff_levels(path: Path, fd: int, level_dimensions, *, samples=(3,), fill=255) -> list[TiffTiles] | None:
    """A :class:`TiffTiles` per level whose page tifffile finds and can decode, else None."""
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages) + [level.keyframe for series in tif.series for level in series.levels]
            by_size = {}
            for page in pages:
                if isinstance(page, tifffile.TiffPage) and TiffTiles.readable(page, samples):
                    by_size.setdefault((int(page.imagewidth), int(page.imagelength)), page)
            if not all(tuple(d) in by_size for d in level_dimensions):
                return None
            return [TiffTiles(path, fd, by_size[tuple(d)], fill) for d in level_dimensions]
    except (tifffile.TiffFileError, ValueError, OSError):
        return None


class RasterLevel:
    """One level of any raster tifffile or OpenCV decodes (stripped TIFF, a SubIFD level, PNG): TiffTiles' reads.

    ``array`` is (height, width[, samples]), a NumPy array or tifffile's lazy
    Zarr view, which decodes only the strips under a read.
    """

    def __init__(self, path: Path, array, fill: int, *, premultiplied: bool = False, store=None):
        self.path = path
        self._array = array
        self._store = store  # tifffile's ZarrTiffStore behind ``array``: it holds the file open until closed
        self.height, self.width = int(array.shape[0]), int(array.shape[1])
        self.samples = int(array.shape[2]) if len(array.shape) == 3 else 1
        self.fill = fill
        self.premultiplied = premultiplied  # colour samples already multiplied by alpha (TIFF associated alpha)
        self.jpeg = None

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, samples) pixels from (x, y) in this level's pixels, ``fill`` outside the image."""
        return self.read_rectangles(np.array([[x, y]]), width, height)[0]

    def read_rectangles(self, corners: np.ndarray, width: int, height: int | None = None,
                        out: np.ndarray | None = None) -> np.ndarray:
        height = width if height is None else height
        corners = np.asarray(corners, dtype=np.int64)
        if out is None:
            out = np.empty((len(corners), height, width, self.samples), np.uint8)
        for target, (x, y) in zip(out, corners):
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + width, self.width), min(y + height, self.height)
            if (x0, y0, x1, y1) != (x, y, x + width, y + height):
                target[:] = self.fill
            if x1 > x0 and y1 > y0:
                try:
                    pixels = np.asarray(self._array[y0:y1, x0:x1])
                except Exception as err:  # noqa: BLE001 - each codec raises its own error class
                    raise SlideReadError(f"{self.path}: pixels at ({x0}, {y0}) cannot be decoded ({err}). The file "
                                         "is corrupt: re-export or re-copy it.") from err
                target[y0 - y : y1 - y, x0 - x : x1 - x] = pixels.reshape(y1 - y0, x1 - x0, -1)
        return out

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def close_levels(levels) -> None:
    """Close the file handles a list of levels holds (:class:`RasterLevel`'s tifffile stores); None is fine."""
    for level in levels or ():
        if isinstance(level, RasterLevel):
            level.close()


def tifffile_levels(path: Path, fd: int, *, fill: int = 255) -> list | None:
    """Every level of the TIFF's first image series, largest first (an OME-TIFF's SubIFDs included), else None.

    Tiled 8-bit levels are read tile by tile (:class:`TiffTiles`), others
    through tifffile's lazy Zarr view (:class:`RasterLevel`).
    """
    import zarr

    levels: list = []
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            for index, level in enumerate(series.levels):
                axes, page = level.axes, level.keyframe
                if page.dtype != np.uint8 or not set(axes) <= {"Y", "X", "S", "C", "Z", "T", "Q"}:
                    close_levels(levels)
                    return None
                if TiffTiles.readable(page, (1, 3, 4)) and axes.replace("S", "").strip("ZTQC") == "YX":
                    levels.append(TiffTiles(path, fd, page, fill))
                    continue
                core = axes.lstrip("ZTQ")
                if core not in ("YX", "YXS", "YXC", "CYX", "SYX") or math.prod(level.shape[: len(axes) - len(core)]) != 1:
                    close_levels(levels)
                    return None
                store = tifffile.imread(path, aszarr=True, series=0, level=index)
                levels.append(RasterLevel(path, _View(zarr.open(store, mode="r"), len(axes) - len(core), core[0] in "CS"),
                                          fill, premultiplied=associated_alpha(page), store=store))
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError):
        close_levels(levels)
        return None
    return levels or None


class _View:
    """A level array read as (height, width[, samples]): leading length-1 axes dropped, planar samples moved last."""

    def __init__(self, array, lead: int, planar: bool):
        self._array, self._lead, self._planar = array, lead, planar
        shape = array.shape[lead:]
        self.shape = (*shape[1:], shape[0]) if planar else shape

    def __getitem__(self, key):
        pixels = np.asarray(self._array[(0,) * self._lead + ((slice(None),) if self._planar else ()) + key])
        return np.moveaxis(pixels, 0, -1) if self._planar else pixels


def tiff_resolution(path: Path) -> tuple[float | None, float | None, float | None]:
    """(mpp x, mpp y, objective power) from a TIFF's OME-XML or resolution tags; None where it has none."""
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                return _ome_resolution(tif.ome_metadata)
            page = tif.pages[0]
            unit = {tifffile.RESUNIT.CENTIMETER: 1e4, tifffile.RESUNIT.INCH: 25400}.get(page.resolutionunit)
            x, y = page.get_resolution()
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError, TypeError):
        return None, None, None
    if unit is None:
        return None, None, None
    return _positive(unit / x) if _positive(x) else None, _positive(unit / y) if _positive(y) else None, None


def _ome_resolution(xml: str) -> tuple[float | None, float | None, float | None]:
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None, None, None
    to_um = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    mpp = [None, None]
    power = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp == [None, None]:
            for i, axis in enumerate("XY"):
                size = _positive(element.get(f"PhysicalSize{axis}"))
                scale = to_um.get(element.get(f"PhysicalSize{axis}Unit", "µm"))
                mpp[i] = size * scale if size and scale else None
        elif tag == "Objective" and power is None:
            power = _positive(element.get("NominalMagnification"))
    return mpp[0], mpp[1], power


class TiffPyramid:
    """Every decodable level of a TIFF, largest first: label and tissue masks.

    Tiled levels are read tile by tile; a TIFF without them (stripped, one
    page) through tifffile, strips decoded as read.  Masks are read by value,
    so only their first sample counts (PANDA stores its labels in the red
    channel of an RGB TIFF).  Raises ValueError naming the file when it holds
    no 8-bit image.
    """

    def __init__(self, path: str | Path, *, fill: int = 0):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            with tifffile.TiffFile(self.path) as tif:
                pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
                pages += [level.keyframe for series in tif.series for level in series.levels]
                readable = {(int(p.imagewidth), int(p.imagelength)): p for p in reversed(pages)
                            if TiffTiles.readable(p, (1, 3, 4))}
        except (tifffile.TiffFileError, OSError) as err:
            os.close(self._fd)
            raise ValueError(f"{self.path}: not a readable TIFF ({err})") from err
        if readable:
            self.levels = [TiffTiles(self.path, self._fd, readable[size], fill)
                           for size in sorted(readable, key=lambda s: s[0] * s[1], reverse=True)]
        else:  # stripped or otherwise untiled: tifffile's levels, decoding only the strips read
            self.levels = tifffile_levels(self.path, self._fd, fill=fill)
            if not self.levels:
                os.close(self._fd)
                raise ValueError(f"{self.path}: no 8-bit image this reader decodes (a mask holds one 8-bit value "
                                 "per pixel, or PANDA's RGB with the value in red). Re-export it as 8-bit.")

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    def __enter__(self) -> TiffPyramid:
        return self

    def __exit__(self, *exc) -> None:
        close_levels(self.levels)
        os.close(self._fd)


def _dicom_file(folder: Path) -> Path:
    """A file of the DICOM WSI series in ``folder`` that OpenSlide opens (it finds the rest of the series beside it)."""
    for candidate in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            if openslide.OpenSlide.detect_format(str(candidate)) == "dicom":
                openslide.OpenSlide(str(candidate)).close()
                return candidate
        except (openslide.OpenSlideError, OSError):
            continue
    raise SlideReadError(f"{folder}: a folder without a DICOM whole-slide image OpenSlide reads. Give a DICOM WSI "
                         "series' folder or one of its .dcm files (or a slide file) in the `path` column.")


class Slide:
    """An open whole-slide image; use as a context manager.

    ``path`` is a slide file, or a DICOM WSI series' folder.  ``mpp`` and
    ``objective_power`` override the file's metadata (the sample sheet's
    columns); ``warnings`` lists what :func:`resolve_resolution` found odd.
    """

    def __init__(self, path: str | Path, *, mpp: float | None = None, objective_power: float | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise SlideReadError(f"{self.path}: file not found. Check the `path` column of the sample sheet.")
        if self.path.is_dir():
            self.path = _dicom_file(self.path)
        self._osr = self._tia = None
        self._tia_lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDONLY)
        self._tiles = None
        try:
            self._open(mpp, objective_power)
        except BaseException:
            self.close()
            raise

    def _open(self, mpp: float | None, objective_power: float | None) -> None:
        tiff = self.path.name.lower().endswith(TIFF_SUFFIXES)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            self._tiles = tifffile_levels(self.path, self._fd) if tiff else self._image_level()
            if self._tiles is None:
                self._tia = self._open_with_tiatoolbox(err)
        except (openslide.OpenSlideError, OSError) as err:
            raise SlideReadError(
                f"{self.path}: cannot be read as a whole-slide image ({err}). "
                "The file may be truncated or corrupt: re-export or re-copy it, or remove it from the sample sheet."
            ) from err
        grey_alpha = self._osr is not None and tiff and grey_with_alpha(self.path)
        if self._osr is not None and tiff and (self._osr.level_count == 1 or grey_alpha):
            # OpenSlide sees one level of a TIFF whose pyramid lies elsewhere (an OME-TIFF's SubIFDs), or would
            # composite grey + alpha wrongly (grey_with_alpha)
            levels = tifffile_levels(self.path, self._fd)
            if levels is not None and (len(levels) > 1 or grey_alpha):
                self._osr.close()
                self._osr, self._tiles = None, levels
            else:
                close_levels(levels)
        if self._osr is not None:
            props = self._osr.properties
            vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
            mpp_xy = (_positive(props.get(openslide.PROPERTY_NAME_MPP_X)),
                      _positive(props.get(openslide.PROPERTY_NAME_MPP_Y)))
            slide_power = _positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
            level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
            level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            if vendor in DIRECT_VENDORS:
                self._tiles = tiff_levels(self.path, self._fd, level_dimensions)
        elif self._tiles is not None:
            vendor = "tifffile" if tiff else "image"
            *mpp_xy, slide_power = tiff_resolution(self.path) if tiff else (None, None, None)
            level_dimensions = tuple((level.width, level.height) for level in self._tiles)
            level_downsamples = tuple(level_dimensions[0][0] / w for w, _ in level_dimensions)
        else:
            info = self._tia.info
            vendor = f"tiatoolbox {type(self._tia).__name__}"
            mpp_xy = tuple(_positive(v) for v in info.mpp) if info.mpp is not None else (None, None)
            slide_power = _positive(info.objective_power)
            level_dimensions = tuple(tuple(int(v) for v in d) for d in info.level_dimensions)
            level_downsamples = tuple(float(d) for d in info.level_downsamples)
        resolved = resolve_resolution(self.path, mpp_xy[0], slide_power, mpp_y=mpp_xy[1], mpp_override=mpp,
                                      power_override=objective_power)
        self.warnings = resolved.warnings
        direct = self._tiles is not None and all(isinstance(level, TiffTiles) for level in self._tiles)
        self.info = SlideInfo(
            path=str(self.path),
            vendor=vendor,
            dimensions=level_dimensions[0],
            level_dimensions=level_dimensions,
            level_downsamples=level_downsamples,
            mpp=resolved.mpp,
            mpp_source=resolved.mpp_source,
            objective_power=resolved.objective_power,
            objective_power_source=resolved.objective_power_source,
            pixel_reader="tiff tiles" if direct else vendor if self._tiles else (
                "openslide" if self._osr is not None else "tiatoolbox"),
        )

    def _image_level(self) -> list[RasterLevel] | None:
        """A plain image (PNG, JPEG) as one level read whole, alpha kept; None for other files."""
        if not self.path.name.lower().endswith(IMAGE_SUFFIXES):
            return None
        image = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8:
            raise SlideReadError(f"{self.path}: not a readable 8-bit image. Re-export it, or remove it from the "
                                 "sample sheet.")
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        return [RasterLevel(self.path, image, 255)]

    def _open_with_tiatoolbox(self, openslide_error: Exception):
        name = self.path.name.lower()
        if not name.endswith(TIATOOLBOX_SUFFIXES):
            raise SlideReadError(
                f"{self.path}: not a slide format OpenSlide reads ({openslide_error}). The file may be truncated or "
                "corrupt: re-export or re-copy it, or remove it from the sample sheet."
            )
        from tiatoolbox.wsicore.wsireader import WSIReader

        try:
            return WSIReader.open(self.path)
        except Exception as err:  # tiatoolbox raises many unrelated types for unreadable files
            raise SlideReadError(
                f"{self.path}: neither OpenSlide ({openslide_error}) nor tiatoolbox ({err}) can read it. "
                "Convert it to a pyramidal TIFF or SVS, or remove it from the sample sheet."
            ) from err

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        close_levels(self._tiles)
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # A slide dropped unclosed (e.g. evicted from extraction's open_slide cache while predict walks hundreds of
        # slides) closes its handles when collected: the raw descriptor would otherwise stay open for the process.
        if getattr(self, "_fd", None) is not None:
            self.close()

    def best_level_for(self, downsample: float) -> int:
        """The native level closest above the requested resolution: never coarser than asked."""
        candidates = [i for i, d in enumerate(self.info.level_downsamples) if d <= downsample * 1.001]
        return max(candidates, key=lambda i: self.info.level_downsamples[i]) if candidates else 0

    def tile_size(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the file's tiles at ``level`` in that level's pixels, when known."""
        if self._tiles:
            tiles = self._tiles[level]
            return (tiles.tile_width, tiles.tile_height) if isinstance(tiles, TiffTiles) else None
        if self._osr is not None:
            props = self._osr.properties
            width = _positive(props.get(f"openslide.level[{level}].tile-width"))
            height = _positive(props.get(f"openslide.level[{level}].tile-height"))
            if width and height:
                return int(width), int(height)
        return None

    def jpeg_tiles(self, level: int) -> TiffTiles | None:
        """``level``'s tiles when they are colour JPEG read straight from the file, else None."""
        tiles = self._tiles[level] if self._tiles else None
        return tiles if tiles is not None and tiles.jpeg is not None else None

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``level``; (x, y) are level-0 coordinates."""
        return self.read_rectangles(level, np.array([[x, y]]), width, height)[0]

    def read_rectangles(self, level: int, corners: np.ndarray, width: int, height: int | None = None,
                        out: np.ndarray | None = None) -> np.ndarray:
        """RGB uint8 (n, height, width, 3) at ``level``: rectangles whose top-left ``corners`` are level-0 (x, y).

        Straight from the TIFF each tile is decoded once for all rectangles
        (into ``out`` when given); otherwise their bounding region is read once and cut.
        """
        height = width if height is None else height
        downsample = self.info.level_downsamples[level]
        corners = np.asarray(corners, dtype=np.int64)
        if self._tiles:
            reader = self._tiles[level]
            pixels = reader.read_rectangles(np.round(corners / downsample).astype(np.int64), width, height,
                                            out=out if reader.samples == 3 else None)
            if reader.samples == 3:
                return pixels
            if out is None:
                return composite_on_white(pixels, premultiplied=reader.premultiplied)
            out[:] = composite_on_white(pixels, premultiplied=reader.premultiplied)
            return out
        x0, y0 = corners.min(axis=0)
        offsets = np.round((corners - (x0, y0)) / downsample).astype(np.int64)
        region_w, region_h = offsets.max(axis=0) + (width, height)
        region = self._read_region(level, int(x0), int(y0), int(region_w), int(region_h))
        if out is None:
            out = np.empty((len(corners), height, width, 3), np.uint8)
        for target, (ox, oy) in zip(out, offsets):
            target[:] = region[oy : oy + height, ox : ox + width]
        return out

    def _read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        if self._tia is not None:
            with self._tia_lock:
                image = self._tia.read_rect((x, y), (width, height), resolution=level, units="level")
            return composite_on_white(image)
        try:
            rgba = np.asarray(self._osr.read_region((x, y), level, (width, height)))
        except openslide.OpenSlideError as err:
            raise SlideReadError(f"{self.path}: failed to decode region at ({x}, {y}) level {level}: {err}") from err
        return composite_on_white(rgba)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB thumbnail and its level-0 downsample factor, read in strips so memory stays bounded."""
        # the coarsest level still max_side px wide (else level 0): the mask's resolution is not the file's layout's
        level = max((i for i, d in enumerate(self.info.level_dimensions) if max(d) >= max_side), default=0)
        width, height = self.info.level_dimensions[level]
        scale = max(1.0, max(width, height) / max_side)
        out_w, out_h = max(1, round(width / scale)), max(1, round(height / scale))
        rows_per_strip = max(1, int(THUMBNAIL_STRIP_PIXELS // (3 * width * scale)))  # output rows per strip
        strips = []
        downsample = self.info.level_downsamples[level]
        for out_y in range(0, out_h, rows_per_strip):
            out_rows = min(rows_per_strip, out_h - out_y)
            y0, y1 = round(out_y * height / out_h), round((out_y + out_rows) * height / out_h)
            strip = self.read_region(level, 0, round(y0 * downsample), width, y1 - y0)
            strips.append(strip if scale == 1 else cv2.resize(strip, (out_w, out_rows), interpolation=cv2.INTER_AREA))
        return np.concatenate(strips), downsample * width / out_w


def composite_on_white(image: np.ndarray, *, premultiplied: bool = False) -> np.ndarray:
    """RGB uint8 (..., 3) of RGB or straight-alpha RGBA (..., 4) pixels laid on white, as glass looks.

    ``rgb * a + 255 * (1 - a)`` with a = alpha / 255: OpenSlide's Python
    binding un-premultiplies its ARGB, and TIFF's unassociated alpha is
    straight, so every reader composites the same way; alpha 0 is white
    whatever colour the transparent pixels hold.  ``premultiplied``: the
    colour is already ``rgb * a`` (a TIFF's associated alpha, ExtraSamples 1),
    so only ``255 * (1 - a)`` is added.
    """
    if image.shape[-1] in (1, 2):  # grey, grey + alpha
        image = np.concatenate([np.repeat(image[..., :1], 3, axis=-1), image[..., 1:]], axis=-1)
    if image.shape[-1] == 3:
        return np.ascontiguousarray(image)
    rgb, alpha = image[..., :3], image[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    alpha = alpha.astype(np.uint32)
    if premultiplied:
        return np.minimum(rgb + (255 - alpha), 255).astype(np.uint8)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def associated_alpha(page: tifffile.TiffPage) -> bool:
    """Whether the page's extra sample is associated (premultiplied) alpha."""
    return tifffile.EXTRASAMPLE.ASSOCALPHA in tuple(page.extrasamples or ())


def grey_with_alpha(path: Path) -> bool:
    """Whether the TIFF's first page is grey + alpha, which libtiff hands OpenSlide un-premultiplied (so
    OpenSlide's binding, un-premultiplying it again, would lighten every translucent pixel)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.samplesperpixel == 2
    except (tifffile.TiffFileError, ValueError, OSError):
        return False
