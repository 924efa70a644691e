"""Slide containers: Aperio SVS, generic pyramidal TIFF, OME-TIFF, DICOM WSI, PANDA-style label masks,
QuPath GeoJSON, and a marker stroke drawn over a slide.

Files are written to a temporary name in the target directory and moved into place with os.replace,
so a crashed or parallel run never leaves a half-written slide under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import shapely
import tifffile

from .params import GRADE_COLORS, GRADES

TILE = 256
JPEG_QUALITY = 90


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it over `path`, on failure delete it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tiles(strips: Iterable[np.ndarray], width: int, fill: int) -> Iterator[np.ndarray]:
    """Cut row strips (heights multiple of TILE except the last) into row-major, edge-padded tiles."""
    for strip in strips:
        for ty in range(0, strip.shape[0], TILE):
            band = strip[ty : ty + TILE]
            for tx in range(0, width, TILE):
                tile = band[:, tx : tx + TILE]
                if tile.shape[:2] != (TILE, TILE):
                    padded = np.full((TILE, TILE) + tile.shape[2:], fill, tile.dtype)
                    padded[: tile.shape[0], : tile.shape[1]] = tile
                    tile = padded
                yield tile


class _Pyramid:
    """Collects the reduced levels while level 0 streams past as strips."""

    def __init__(self, width: int, height: int, channels: int, nearest: bool) -> None:
        self.nearest = nearest
        self.level1 = np.zeros((height // 4, width // 4) + ((channels,) if channels > 1 else ()), np.uint8)

    def add(self, y0: int, strip: np.ndarray) -> np.ndarray:
        """Record a level-0 strip (y0 and height multiples of 4 except at the bottom); pass it through."""
        h, w = self.level1.shape[:2]
        rows = min(strip.shape[0] // 4, h - y0 // 4)
        if rows > 0:
            src = strip[: rows * 4, : w * 4]
            self.level1[y0 // 4 : y0 // 4 + rows] = self._reduce(src, w, rows)
        return strip

    def _reduce(self, img: np.ndarray, w: int, h: int) -> np.ndarray:
        if self.nearest:  # labels: pick a representative pixel, never average classes
            return img[1::4, 1::4][:h, :w]
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

    def levels(self) -> list[np.ndarray]:
        h, w = self.level1.shape[:2]
        return [self.level1, self._reduce(self.level1[: h // 4 * 4, : w // 4 * 4], w // 4, h // 4)]


_RESOLUTION_TAGS = {282, 283, 296}  # XResolution, YResolution, ResolutionUnit


def drop_resolution_tags(path: Path) -> None:
    """Remove the resolution tags tifffile always writes, from every IFD, in place.

    An SVS carries its scale only in the ImageDescription. The placeholder tags (1 px per unit,
    unit NONE) would make tiatoolbox 2.1 fall back to them and fail ('Invalid units: none')
    for a slide without MPP. Entries are compacted inside each IFD; nothing else moves.
    """
    with open(path, "r+b") as fh:
        order = {b"II": "<", b"MM": ">"}[fh.read(2)]
        big = struct.unpack(order + "H", fh.read(2))[0] == 43
        count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        if big:
            fh.read(4)
        (ifd,) = struct.unpack(order + offset_fmt, fh.read(struct.calcsize(offset_fmt)))
        while ifd:
            fh.seek(ifd)
            (n,) = struct.unpack(order + count_fmt, fh.read(struct.calcsize(count_fmt)))
            entries = [fh.read(entry_size) for _ in range(n)]
            next_ifd = fh.read(struct.calcsize(offset_fmt))
            kept = [e for e in entries if struct.unpack(order + "H", e[:2])[0] not in _RESOLUTION_TAGS]
            fh.seek(ifd)
            fh.write(struct.pack(order + count_fmt, len(kept)) + b"".join(kept) + next_ifd)
            fh.write(b"\0" * (entry_size * (n - len(kept))))
            (ifd,) = struct.unpack(order + offset_fmt, next_ifd)


def aperio_description(width: int, height: int, magnification: float | None, mpp: float | None, name: str) -> str:
    """Aperio ImageDescription; OpenSlide identifies the vendor by its 'Aperio' prefix."""
    fields = [f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q={JPEG_QUALITY}"]
    if magnification is not None:
        fields.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:g}")
    fields.append(f"Filename = {name}")
    return "|".join(fields)


def write_pyramid(
    path: Path,
    strips: Iterable[tuple[int, np.ndarray]],
    width: int,
    height: int,
    *,
    description: str | None,
    mpp: float | None,
    aperio: bool,
    label: bool = False,
) -> None:
    """Write a 3-level (1, 4, 16) tiled pyramid from streamed level-0 strips.

    aperio=True gives an SVS: JPEG tiles, every level a top-level page, description on the first.
    aperio=False gives a generic BigTIFF with reduced levels flagged as such (OpenSlide 'generic-tiff';
    BigTIFF is also what tiatoolbox's TIFF reader accepts for multi-page files), MPP in the
    resolution tags. label=True stores single-channel uint8 labels losslessly.
    """
    channels = 1 if label else 3
    pyramid = _Pyramid(width, height, channels, nearest=label)
    shape = (height, width) + ((channels,) if channels > 1 else ())
    common = dict(
        tile=(TILE, TILE),
        photometric="minisblack" if label else "rgb",
        compression="zlib" if label else "jpeg",
        compressionargs={} if label else {"level": JPEG_QUALITY},
        metadata=None,
    )
    fill = 0 if label else 255
    big = not aperio or width * height * channels > 2**31
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
            level0 = (pyramid.add(y0, s) for y0, s in strips)
            tags = _page_tags(0, width, height, width, description, mpp, aperio)
            tif.write(_tiles(level0, width, fill), shape=shape, dtype=np.uint8, **common, **tags)
            for i, level in enumerate(pyramid.levels(), start=1):
                h, w = level.shape[:2]
                tags = _page_tags(i, w, h, width, description, mpp, aperio)
                tif.write(_tiles([level], w, fill), shape=level.shape, dtype=np.uint8, **common, **tags)
        if aperio:
            drop_resolution_tags(tmp)


def _page_tags(level: int, w: int, h: int, width0: int, description, mpp, aperio: bool) -> dict:
    if aperio:
        desc = description if level == 0 else description.replace(f"({TILE}x{TILE})", f"({TILE}x{TILE}) -> {w}x{h}", 1)
        return {"description": desc}
    tags = {"subfiletype": 1 if level else 0}
    if mpp is not None:
        px_per_cm = 1e4 / (mpp * width0 / w)
        tags.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    return tags


def write_geojson(path: Path, regions, scale: float, slide_id: str) -> None:
    """QuPath GeoJSON: one annotation per grade present, its exact region polygons in level-0 px."""
    features = []
    for grade, name in enumerate(GRADES):
        parts = [r.polygon for r in regions if r.grade == grade]
        if not parts:
            continue
        geom = shapely.transform(shapely.union_all(parts), lambda xy: np.round(xy / scale, 2))
        digest = hashlib.sha1(f"{slide_id}/{name}".encode()).digest()[:16]
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(bytes=digest, version=4)),
                "geometry": json.loads(shapely.to_geojson(geom)),
                "properties": {"objectType": "annotation", "classification": {"name": name, "color": GRADE_COLORS[name]}},
            }
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))


def pyramid_levels(level0: np.ndarray, count: int = 3) -> list[np.ndarray]:
    """(H, W, 3) uint8 level 0 and its area-reduced levels at downsamples 1, 4, 16, ... (`count` levels)."""
    levels = [level0]
    for _ in range(count - 1):
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA))
    return levels


def write_ome_tiff(path: Path, levels: list[np.ndarray], mpp: float) -> None:
    """OME-TIFF as bioformats2raw/raw2ometiff and QuPath write it: `levels` (RGB uint8, level 0 first) losslessly,
    level 0 a page and the reduced levels in its SubIFDs, level 0's mpp in the OME-XML (`PhysicalSizeX`, um);
    deflate tiles of 128 px. OpenSlide sees one level of such a file (issue 17, kind 6)."""
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    with atomic_path(Path(path)) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            tif.write(levels[0], subifds=len(levels) - 1, **options,
                      metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
            for level in levels[1:]:
                tif.write(level, subfiletype=1, **options)


def write_dicom_level(path: Path, image: np.ndarray, mpp: float, uids: tuple[str, str, str], instance: int) -> None:
    """One level of a DICOM WSI series (VL Whole Slide Microscopy, TILED_FULL, baseline JPEG frames of 256 px,
    white beyond the image). `uids`: the study, series and frame-of-reference UIDs the series shares."""
    import imagecodecs
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    height, width = image.shape[:2]
    frames = []
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            part = image[y : y + TILE, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            frames.append(imagecodecs.jpeg8_encode(tile, level=95))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.Modality, ds.InstanceNumber = "SM", instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = width, height, 1
    ds.Columns = ds.Rows = TILE
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * mpp / 1000, height * mpp / 1000
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [mpp / 1000, mpp / 1000], 0.001
    groups = Dataset()
    groups.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([groups])
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = Sequence([optical])
    ds.PixelData = pydicom.encaps.encapsulate(frames)
    with atomic_path(Path(path)) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_dicom_series(folder: Path, levels: list[np.ndarray], mpp: float) -> Path:
    """A DICOM WSI series as wsidicomizer writes it: one file per pyramid level (`levels`, RGB uint8, level 0
    first, each level's mpp from its width) in `folder`, sharing study, series and frame-of-reference UIDs.
    Returns the folder (what a sample sheet names)."""
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = (generate_uid(), generate_uid(), generate_uid())
    for index, image in enumerate(levels):
        downsample = levels[0].shape[1] / image.shape[1]
        write_dicom_level(folder / f"level{index}.dcm", image, mpp * downsample, uids, index + 1)
    return folder


#: Marker colours as a scanner sees them on glass (RGB).
MARKER_COLOURS = {"blue": (35, 60, 165), "green": (40, 140, 80), "black": (25, 25, 30), "dark blue": (20, 30, 110)}


def draw_marker_stroke(image: np.ndarray, colour, width: int) -> np.ndarray:
    """A copy of `image` (H, W[, C]) with a marker stroke `width` px wide from the glass at the top-right corner
    down to the centre, into the tissue (anti-aliased edge, as a scan of ink shows it)."""
    out = image.copy()
    h, w = image.shape[:2]
    cv2.line(out, (w - width, 0), (w // 2, h // 2), colour, thickness=width, lineType=cv2.LINE_AA)
    return out
