"""Slide geometry: needle cores split into single-grade regions, filled with grade-specific glands.

Everything here is vector geometry in scene pixels (level-0 px of a 40x scan) decided once per slide
from its seed; `render.py` rasterises it strip by strip. Regions are the ground truth: the GeoJSON
annotations are exactly these polygons, and every structure is placed strictly inside its region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPoint, Polygon, box

from .params import GeneratorParams
from .stain import INKS, StainModel

_MARGIN = 3.0  # px kept between a structure and its region border, so rasterisation never crosses it
_MAX_EDGE = 8.0  # px; cv2 re-rasterises polygon edges clipped by a strip border, so edges are kept short
# enough that any such difference stays inside the strip halo


def _rasterisable(geom):
    """The polygonal part of a geometry (set operations may leave slivers of lines or points), with
    edges no longer than _MAX_EDGE (same shape, more vertices)."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0]
    return shapely.segmentize(shapely.union_all(parts), _MAX_EDGE)


def slide_grades(seed: int) -> tuple[int, ...]:
    """Grades (0 Benign .. 3 Gleason 5) a slide is planned to contain; 2-4 of them, all four frequent."""
    rng = np.random.default_rng([seed, 0x6A])
    k = rng.choice([2, 3, 4], p=[0.3, 0.45, 0.25])
    return tuple(sorted(int(g) for g in rng.choice(4, size=k, replace=False, p=[0.3, 0.25, 0.25, 0.2])))


@dataclass
class Region:
    grade: int
    polygon: shapely.Geometry


@dataclass
class Scene:
    """All vector content of one slide, in scene px."""

    width: float
    height: float
    key: int  # noise key of this slide
    stain: StainModel
    fibre_angle: float  # dominant collagen/smooth-muscle direction (along the cores)
    fragments: list[shapely.Geometry]
    regions: list[Region]
    zones: list[tuple[int, shapely.Geometry]]  # (architecture grade, area)
    structures: _Drawing  # glands, nests, cords, cells with their lumens, clefts, necrosis, corpora
    folds: list[shapely.Geometry] = field(default_factory=list)
    pens: list[tuple[shapely.Geometry, np.ndarray, float]] = field(default_factory=list)  # area, ink OD, strength
    blurs: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)  # cx cy rx ry angle sigma
    dust: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x y radius od
    lint: list[shapely.Geometry] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = self.structures
        self.outlines, self.lumens, self.clefts, self.necrosis = d.outlines, d.lumens, d.clefts, d.necrosis
        self.corpora = np.array(d.corpora).reshape(-1, 3)  # x, y, radius
        self.outline_bounds, self.lumen_bounds = _bounds(self.outlines), _bounds(self.lumens)
        self.cleft_bounds, self.necrosis_bounds = _bounds(self.clefts), _bounds(self.necrosis)


def _bounds(polys: list[np.ndarray]) -> np.ndarray:
    if not polys:
        return np.zeros((0, 2))
    return np.array([(p[:, 1].min(), p[:, 1].max()) for p in polys])


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size=None):
    return rng.uniform(lo_hi[0], lo_hi[1], size)


# ---------------------------------------------------------------- tissue fragments and regions


def _ragged(poly: Polygon, rng: np.random.Generator, amplitude: float) -> Polygon:
    """Displace a smooth outline along its normals by band-limited noise: a knife-cut, torn edge."""
    ring = shapely.segmentize(poly.exterior, 6.0)
    xy = np.asarray(ring.coords)[:-1]
    seg = np.linalg.norm(np.diff(np.vstack([xy, xy[:1]]), axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)[:-1]])
    perimeter = seg.sum()
    d = np.zeros(len(xy))
    for wavelength in rng.uniform(25.0, 400.0, 10):  # random, periodic along the perimeter: no visible rhythm
        n = max(1, round(perimeter / wavelength))
        d += amplitude * 0.45 * (wavelength / 400.0) ** 0.7 * np.sin(2 * np.pi * n * s / perimeter + rng.uniform(0, 2 * np.pi))
    tangent = np.roll(xy, -1, axis=0) - np.roll(xy, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    if not ring.is_ccw:
        normal = -normal
    out = shapely.make_valid(Polygon(xy + normal * d[:, None]))
    return max(getattr(out, "geoms", [out]), key=lambda g: g.area) if out.geom_type != "Polygon" else out


@dataclass
class _Core:
    polygon: Polygon
    origin: np.ndarray  # start of the straight axis (chord) of the core
    direction: np.ndarray  # unit vector along the axis
    width: float
    length: float
    bow: float  # largest distance of the curved centre line from the chord

    @property
    def reach(self) -> float:
        """Half-length of a cut line that surely crosses the whole core."""
        return self.width / 2 + abs(self.bow) + 30.0


def _needle_core(rng, x0: float, length: float, yc: float, band: float, p: GeneratorParams) -> _Core:
    """A needle core: a gently bowed, slightly tilted capsule with a ragged edge."""
    width = min(_uniform(rng, p.core_width), 0.8 * band)
    bow = rng.uniform(-0.03, 0.03) * length
    max_tilt = np.arcsin(np.clip((0.9 * band - width - 2 * abs(bow)) / length, 0, 0.12))
    angle = rng.uniform(-max_tilt, max_tilt)
    axis = max(length - width, 1.0)  # the rounded ends add width/2 on each side
    t = np.linspace(0, 1, 40)
    local = np.stack([t * axis, 4 * bow * t * (1 - t)], axis=1)
    c, s = np.cos(angle), np.sin(angle)
    pts = (local - [axis / 2, 0]) @ np.array([[c, s], [-s, c]]) + [x0 + length / 2, yc]
    polygon = LineString(pts).buffer(width / 2, quad_segs=16)
    for end, sign in ((pts[0], -1), (pts[-1], 1)):  # most cores end in a break, not a rounded tip
        if rng.random() < 0.6:
            cut_angle = angle + rng.uniform(-0.6, 0.6)
            normal = np.array([np.cos(cut_angle), np.sin(cut_angle)]) * sign
            at = end + normal * rng.uniform(-0.1, 0.3) * width
            tangent = np.array([-normal[1], normal[0]]) * 2 * width
            polygon = polygon.difference(Polygon([at - tangent, at + tangent, at + tangent + 2 * width * normal, at - tangent + 2 * width * normal]))
    polygon = _ragged(polygon, rng, p.edge_roughness)
    return _Core(polygon, pts[0], np.array([c, s]), width, axis, bow)


def _cut(core: _Core, s0: float, s1: float, tilt0: float, tilt1: float) -> Polygon:
    """The part of the plane between two cut lines crossing the core axis at positions s0 < s1."""
    normal = np.array([-core.direction[1], core.direction[0]])

    def line(s, tilt):
        m = normal * np.cos(tilt) + core.direction * np.sin(tilt)
        p0 = core.origin + core.direction * s
        return p0 - m * core.reach, p0 + m * core.reach

    a0, a1 = line(s0, tilt0)
    b0, b1 = line(s1, tilt1)
    return Polygon([a0, a1, b1, b0])


def _layout_regions(rng, width: float, height: float, grades: tuple[int, ...], p: GeneratorParams):
    """Cores in horizontal bands, each cut into regions; every planned grade gets at least one region
    when the slide is large enough (regions are at least 240 px long)."""
    n_cores = int(np.clip(round(height / p.cores_per_height), 1, 6))
    band = height / n_cores
    cores = []
    for i in range(n_cores):
        length = _uniform(rng, p.core_length) * width
        x0 = rng.uniform(0.04 * width, width - length - 0.04 * width)
        yc = band * (i + 0.5) + rng.uniform(-0.05, 0.05) * band
        cores.append(_needle_core(rng, x0, length, yc, band, p))
    glass = box(8, 8, width - 8, height - 8)
    for core in cores:  # keep every fragment on the slide
        core.polygon = core.polygon.intersection(glass)
    lengths = np.array([c.length for c in cores])
    cuts = np.maximum(1, np.round(lengths / p.region_length * rng.uniform(0.8, 1.2, n_cores))).astype(int)
    while cuts.sum() < len(grades) and (lengths / (cuts + 1)).max() >= 240:
        cuts[np.argmax(lengths / (cuts + 1))] += 1

    pieces = []  # (core index, region polygon before breaking)
    for ci, (core, n) in enumerate(zip(cores, cuts)):
        step = core.length / n
        s = np.linspace(0, core.length, n + 1)
        s[1:-1] += rng.uniform(-0.2, 0.2, n - 1) * step
        s[0], s[-1] = -core.reach, core.length + core.reach
        # cut lines may tilt, but never so much that neighbouring cuts cross inside the core
        max_tilt = min(0.35, np.arcsin(min(1.0, 0.6 * 0.45 * step / core.reach)))
        tilts = rng.uniform(-max_tilt, max_tilt, n + 1)
        tilts[0] = tilts[-1] = 0.0
        for k in range(n):
            piece = core.polygon.intersection(_cut(core, s[k], s[k + 1], tilts[k], tilts[k + 1]))
            if piece.area > 0:
                pieces.append((ci, piece))

    order = rng.permutation(len(pieces))
    assigned = list(rng.permutation(grades)) + list(rng.choice(grades, max(0, len(pieces) - len(grades))))
    grade_of = {int(o): int(assigned[i]) for i, o in enumerate(order)}

    fragments, regions = [], []
    for ci, core in enumerate(cores):
        tissue = core.polygon
        if rng.random() < p.core_break_prob:  # a broken core: a parallel-sided crack of empty glass
            at, w, tilt = rng.uniform(0.25, 0.75) * core.length, rng.uniform(30, 110), rng.uniform(-0.4, 0.4)
            tissue = tissue.difference(_cut(core, at, at + w, tilt, tilt))
        fragments.extend(_rasterisable(g) for g in getattr(tissue, "geoms", [tissue]) if g.area > 0)
        for k, (cj, piece) in enumerate(pieces):
            if cj == ci and (piece := _rasterisable(piece.intersection(tissue))).area > 0:
                regions.append(Region(grade_of[k], piece))
    return fragments, regions, float(np.mean([np.arctan2(c.direction[1], c.direction[0]) for c in cores]))


# ---------------------------------------------------------------- glands and other structures


def _outline(rng, irregularity, n=40, elongation=0.25):
    """Random shape of a wobbly ellipse: polar angles, radial wobble, axis ratio and orientation."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = np.ones(n)
    for k in (2, 3, 4, 5):
        wobble += rng.uniform(0, irregularity * 2 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    e = 1 + rng.uniform(0, elongation)
    rot = rng.uniform(0, np.pi)
    return theta, wobble, e, rot


def _place(theta, radius, e, rot, cx, cy):
    """Polar outline -> vertices: stretched by sqrt(e) along a rotated axis, squeezed across (area kept)."""
    x, y = radius * np.cos(theta) * np.sqrt(e), radius * np.sin(theta) / np.sqrt(e)
    c, s = np.cos(rot), np.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _ring_gland(rng, cx, cy, r, thickness, irregularity, infolding=(0.0, 0.0), elongation=0.25):
    """A gland: epithelial ring of given thickness around a lumen, optionally with papillary
    infoldings; returns the outline and the lumen (None when the ring leaves no lumen)."""
    theta, wobble, e, rot = _outline(rng, irregularity, n=48, elongation=elongation)
    outer = r * wobble / (wobble.max() * np.sqrt(e))
    inner = np.maximum(outer - thickness, 0.0)
    depth = _uniform(rng, infolding)
    if depth > 0:
        folds = rng.integers(4, 9)
        theta_f = np.linspace(0, 2 * np.pi, 144, endpoint=False)
        bumps = np.maximum(0, np.cos(folds * theta_f + rng.uniform(0, 2 * np.pi))) ** 4
        inner = np.interp(theta_f, theta, inner, period=2 * np.pi) * (1 - depth * bumps)
        lumen = _place(theta_f, inner, e, rot, cx, cy)
    else:
        lumen = _place(theta, inner, e, rot, cx, cy)
    return _place(theta, outer, e, rot, cx, cy), (lumen if inner.min() > 1.0 else None)


def _small_round(rng, x, y, r, n=16):
    """A small, nearly round outline (punched-out lumen, single cell)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return _place(theta, r * (1 + 0.08 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))), 1.0, 0.0, x, y)


def _grid(rng, zone, spacing: float) -> np.ndarray:
    """Hexagonal grid points at random phase and orientation inside the zone's bounding box."""
    x0, y0, x1, y1 = zone.bounds
    diag = np.hypot(x1 - x0, y1 - y0)
    n = int(diag / spacing) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    pts = np.stack([(i + 0.5 * (j % 2)) * spacing, j * spacing * np.sqrt(3) / 2], axis=-1).reshape(-1, 2)
    a = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    pts = pts @ rot + [(x0 + x1) / 2, (y0 + y1) / 2] + rng.uniform(0, spacing, 2)
    keep = (pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)
    return pts[keep]


class _Occupancy:
    """Bounding circles of the structures already placed in a region, so that structures of
    neighbouring zones (whose centres lie in different zones) never overlap."""

    def __init__(self) -> None:
        self.centres = np.zeros((0, 2))
        self.radii = np.zeros(0)

    def add(self, pts: np.ndarray, r: np.ndarray) -> None:
        self.centres = np.vstack([self.centres, pts])
        self.radii = np.concatenate([self.radii, r])


@dataclass
class _Zone:
    """Where one architecture is drawn: centres in `area`, whole structures inside `region`."""

    area: shapely.Geometry
    region: shapely.Geometry
    taken: _Occupancy


def _sites(rng, zone: _Zone, radius: tuple[float, float], gap: tuple[float, float], tries: float = 15.0):
    """Centres and bounding radii of non-overlapping structures for one zone.

    Random sequential adsorption: candidates at random places are accepted when they keep at least
    their own gap (drawn from `gap`) from every structure already placed, including those of
    neighbouring zones. This packs like real glands (random, locally dense) without grid artefacts;
    the gap range sets how much stroma lies between structures.
    """
    x0, y0, x1, y1 = zone.area.bounds
    mean_size = np.pi * (np.mean(radius) + np.mean(gap) / 2) ** 2
    n = int(tries * zone.area.area / mean_size) + 4
    pts = rng.uniform([x0, y0], [x1, y1], (n, 2))
    r = _uniform(rng, radius, n)
    g = _uniform(rng, gap, n)
    keep = shapely.contains_xy(zone.area, pts[:, 0], pts[:, 1]) & shapely.contains_xy(zone.region, pts[:, 0], pts[:, 1])
    keep[keep] &= shapely.distance(zone.region.boundary, shapely.points(pts[keep])) >= r[keep] + _MARGIN
    pts, r, g = pts[keep], r[keep], g[keep]
    near = np.all((zone.taken.centres >= [x0 - 200, y0 - 200]) & (zone.taken.centres <= [x1 + 200, y1 + 200]), axis=1)
    cx, cy, cr = (list(q) for q in (zone.taken.centres[near, 0], zone.taken.centres[near, 1], zone.taken.radii[near]))
    first = len(cr)
    for (x, y), ri, gi in zip(pts, r, g):
        if not cr or np.min(np.hypot(np.subtract(cx, x), np.subtract(cy, y)) - cr) >= ri + gi:
            cx.append(x)
            cy.append(y)
            cr.append(ri)
    placed = np.stack([cx[first:], cy[first:]], 1) if len(cr) > first else np.zeros((0, 2))
    zone.taken.add(placed, np.asarray(cr[first:]))
    return placed, np.asarray(cr[first:])


@dataclass
class _Drawing:
    """Accumulates the structures of one slide as they are generated."""

    outlines: list[np.ndarray] = field(default_factory=list)
    lumens: list[np.ndarray] = field(default_factory=list)
    clefts: list[np.ndarray] = field(default_factory=list)
    necrosis: list[np.ndarray] = field(default_factory=list)
    corpora: list[tuple[float, float, float]] = field(default_factory=list)

    def gland(self, rng, outline: np.ndarray, lumen: np.ndarray | None, cleft_prob: float = 0.0) -> None:
        self.outlines.append(outline)
        if lumen is not None:
            self.lumens.append(lumen)
        if rng.random() < cleft_prob:  # retraction artefact: stroma shrinks away from a tumour gland
            halo = Polygon(outline).buffer(rng.uniform(1.2, 2.4), quad_segs=4)
            self.clefts.append(np.asarray(halo.exterior.coords)[:-1])


def _benign(rng, zone, p: GeneratorParams, draw: _Drawing) -> None:
    """Large, well-spaced glands with papillary infoldings; some lumens hold corpora amylacea."""
    for (x, y), r in zip(*_sites(rng, zone, p.benign_radius, p.benign_gap)):
        thickness = _uniform(rng, p.benign_epithelium)
        draw.gland(rng, *_ring_gland(rng, x, y, r, thickness, p.outline_irregularity, p.benign_infolding))
        if rng.random() < p.corpora_amylacea_prob:
            draw.corpora.append((x, y, rng.uniform(0.2, 0.38) * (r - thickness)))


def _gleason3(rng, zone, p: GeneratorParams, draw: _Drawing) -> None:
    """Small, discrete, round well-formed glands with one cell layer, infiltrating the stroma."""
    for (x, y), r in zip(*_sites(rng, zone, p.g3_radius, p.g3_gap)):
        t = _uniform(rng, p.g3_epithelium)
        draw.gland(rng, *_ring_gland(rng, x, y, r, t, 1.5 * p.outline_irregularity, elongation=0.4), p.cleft_prob)


def _cribriform(rng, x, y, r, p: GeneratorParams, draw: _Drawing) -> None:
    """One epithelial mass pierced by several round, punched-out lumens."""
    theta, wobble, e, rot = _outline(rng, p.outline_irregularity, n=56, elongation=0.2)
    outline = _place(theta, r * wobble / (wobble.max() * np.sqrt(e)), e, rot, x, y)
    draw.gland(rng, outline, None, p.cleft_prob)
    lr_max = p.cribriform_lumen[1]
    spacing = 2 * lr_max + rng.uniform(3.0, 6.0)
    disc = Polygon(outline).buffer(-(rng.uniform(5.0, 7.5) + lr_max))
    if not disc.is_empty:
        for lx, ly in _grid(rng, disc.envelope, spacing):
            if shapely.contains_xy(disc, lx, ly):
                draw.lumens.append(_small_round(rng, lx, ly, _uniform(rng, p.cribriform_lumen)))


def _fused(rng, x, y, r_cluster, p: GeneratorParams, draw: _Drawing) -> None:
    """Small glands packed so tightly that their epithelium merges; each keeps its own small lumen.

    Glands sit on a hexagonal rosette of spacing 1.56 r while lumens stay within 0.72 r, so
    epithelium is shared between neighbours but lumens never touch.
    """
    r = min(_uniform(rng, p.fused_radius), r_cluster / 2.56)
    d = 1.56 * r
    turn = rng.uniform(0, np.pi / 3)
    ring = [(x + d * np.cos(turn + k * np.pi / 3), y + d * np.sin(turn + k * np.pi / 3)) for k in range(6)]
    for cx, cy in [(x, y)] + [ring[k] for k in rng.choice(6, rng.integers(3, 7), replace=False)]:
        ri = r * rng.uniform(0.85, 1.0)
        draw.gland(rng, *_ring_gland(rng, cx, cy, ri, max(4.0, 0.28 * ri), 2 * p.outline_irregularity, elongation=0.3))


def _gleason4(rng, zone, p: GeneratorParams, draw: _Drawing) -> None:
    """Cribriform glands, fused glands, or poorly formed glands (one kind per zone)."""
    kind = rng.choice(3, p=p.g4_mix)
    if kind == 0:
        for (x, y), r in zip(*_sites(rng, zone, p.cribriform_radius, p.g4_gap)):
            _cribriform(rng, x, y, r, p, draw)
    elif kind == 1:
        for (x, y), r in zip(*_sites(rng, zone, (2.56 * p.fused_radius[0], 2.56 * p.fused_radius[1]), p.g4_gap)):
            _fused(rng, x, y, r, p, draw)
    else:
        for (x, y), r in zip(*_sites(rng, zone, p.poorly_formed_radius, p.g4_gap)):
            theta, wobble, e, rot = _outline(rng, 3 * p.outline_irregularity, n=32, elongation=0.6)
            outline = _place(theta, r * wobble / (wobble.max() * np.sqrt(e)), e, rot, x, y)
            lumen = _small_round(rng, x, y, rng.uniform(1.2, 2.2), n=10) if rng.random() < 0.5 else None  # abortive
            draw.gland(rng, outline, lumen, p.cleft_prob)


def _cord(rng, x, y, extent, width):
    """A single-file cord of cells: a wandering line one cell wide, within `extent` of (x, y)."""
    heading = rng.uniform(0, 2 * np.pi)
    pts = [np.array([x, y]) - 0.6 * extent * np.array([np.cos(heading), np.sin(heading)])]
    for _ in range(8):
        heading += rng.uniform(-0.5, 0.5)
        nxt = pts[-1] + rng.uniform(8, 14) * np.array([np.cos(heading), np.sin(heading)])
        if np.linalg.norm(nxt - [x, y]) > extent - width / 2:
            break
        pts.append(nxt)
    line = LineString(pts) if len(pts) > 1 else LineString([pts[0], pts[0] + [width, 0]])
    return np.asarray(line.buffer(width / 2, quad_segs=4).exterior.coords)[:-1]


def _gleason5(rng, zone, p: GeneratorParams, draw: _Drawing) -> None:
    """Solid sheets (large ones with central comedonecrosis), or cords and single cells
    infiltrating the stroma; never lumens."""
    if rng.random() < p.g5_sheet_share:
        for (x, y), r in zip(*_sites(rng, zone, p.sheet_radius, p.g5_gap)):
            theta, wobble, e, rot = _outline(rng, 3 * p.outline_irregularity, n=72, elongation=0.5)
            outline = _place(theta, r * wobble / (wobble.max() * np.sqrt(e)), e, rot, x, y)
            draw.gland(rng, outline, None)
            core = Polygon(outline).buffer(-rng.uniform(0.45, 0.6) * r)
            if r > 45 and rng.random() < p.comedonecrosis_prob and core.geom_type == "Polygon" and not core.is_empty:
                draw.necrosis.append(np.asarray(core.exterior.coords)[:-1])
    else:
        for (x, y), r in zip(*_sites(rng, zone, (22.0, 40.0), p.g5_gap, tries=2.0)):
            draw.gland(rng, _cord(rng, x, y, r, _uniform(rng, p.cord_width)), None)
        rc = p.single_cell_radius
        for (x, y), r in zip(*_sites(rng, zone, (rc, rc + 0.5), (3.0, 12.0), tries=1.5)):
            draw.gland(rng, _small_round(rng, x, y, r, n=12), None)


_ARCHITECTURES = (_benign, _gleason3, _gleason4, _gleason5)


def _zones(rng, region: shapely.Geometry, p: GeneratorParams) -> list[shapely.Geometry]:
    """Split a region into Voronoi zones of about zone_size, each drawn with one architecture."""
    n = max(1, round(region.area / p.zone_size**2))
    if n == 1:
        return [region]
    x0, y0, x1, y1 = region.bounds
    seeds = []
    while len(seeds) < n:
        xy = rng.uniform([x0, y0], [x1, y1], (4 * n, 2))
        seeds += [q for q in xy[shapely.contains_xy(region, xy[:, 0], xy[:, 1])]]
    cells = shapely.voronoi_polygons(MultiPoint(seeds[:n]), extend_to=region.envelope.buffer(10))
    return [z for c in cells.geoms if not (z := c.intersection(region).buffer(0)).is_empty]


def _architecture_grade(rng, grade: int, overlap: float) -> int:
    """Architecture drawn in a zone: the true grade, or with probability `overlap` a neighbouring one."""
    if rng.random() >= overlap:
        return grade
    return int(rng.choice([g for g in (grade - 1, grade + 1) if 0 <= g <= 3]))


# ---------------------------------------------------------------- artefacts


def _artefacts(rng, scene: Scene, p: GeneratorParams) -> None:
    """Preparation and scanning artefacts, so that tissue detection and models meet real difficulties."""
    tissue = shapely.union_all(scene.fragments)
    if rng.random() < p.fold_prob and scene.fragments:
        frag = scene.fragments[rng.integers(len(scene.fragments))]
        (cx, cy), a = np.asarray(frag.centroid.coords[0]) + rng.normal(0, 60, 2), rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * 2000
        band = LineString([(cx, cy) - d, (cx, cy) + d]).buffer(_uniform(rng, p.fold_width) / 2)
        fold = band.intersection(frag)
        if not fold.is_empty:
            scene.folds.append(_rasterisable(fold))
    if rng.random() < p.pen_prob:
        for _ in range(rng.integers(1, 3)):
            # a pathologist's circling stroke around an area of interest: an arc, partly on the glass
            cx, cy = rng.uniform(0.1, 0.9) * scene.width, rng.uniform(0.1, 0.9) * scene.height
            radius = rng.uniform(0.12, 0.3) * min(scene.width, scene.height)
            a0 = rng.uniform(0, 2 * np.pi)
            t = a0 + np.linspace(0, rng.uniform(1.2, 3.5), 60)
            wob = 1 + 0.05 * np.sin(3 * t + rng.uniform(0, 6))
            arc = np.stack([cx + radius * wob * np.cos(t) * 1.4, cy + radius * wob * np.sin(t)], 1)
            ink = ("green", "blue", "black")[rng.choice(3, p=[0.5, 0.4, 0.1])]
            stroke = LineString(arc).buffer(_uniform(rng, p.pen_width) / 2, quad_segs=6)
            stroke = stroke.intersection(box(0, 0, scene.width, scene.height))
            if not stroke.is_empty:
                scene.pens.append((_rasterisable(stroke), INKS[ink], rng.uniform(0.5, 1.0)))
    if rng.random() < p.blur_prob:
        for _ in range(rng.integers(1, 3)):
            x0, y0, x1, y1 = tissue.bounds
            for _ in range(100):  # out-of-focus areas are centred on tissue
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                if shapely.contains_xy(tissue, x, y):
                    break
            rx, ry = _uniform(rng, p.blur_radius, 2)
            scene.blurs.append((x, y, rx, ry, rng.uniform(0, np.pi), _uniform(rng, p.blur_sigma)))
    n = rng.integers(p.dust_count[0], p.dust_count[1] + 1)
    radii = np.minimum(rng.pareto(2.5, n) * 1.5 + 0.8, 9.0)
    scene.dust = np.stack([rng.uniform(0, scene.width, n), rng.uniform(0, scene.height, n), radii, rng.uniform(0.25, 0.9, n)], 1)
    for _ in range(rng.integers(0, 3)):  # lint fibre
        start = rng.uniform([0, 0], [scene.width, scene.height])
        steps = np.cumsum(rng.normal(0, 1, (12, 2)) * 8 + rng.normal(0, 1, 2) * 10, axis=0)
        scene.lint.append(_rasterisable(LineString(start + steps).buffer(rng.uniform(0.6, 1.2))))


# ---------------------------------------------------------------- entry point


def _glands(rng, regions: list[Region], p: GeneratorParams, architecture: int | None = None):
    """Zones with their architecture, and all structures drawn zone by zone; `architecture` forces one
    architecture for every zone."""
    zones, draw = [], _Drawing()
    for region in regions:
        taken = _Occupancy()
        for area in _zones(rng, region.polygon, p):
            arch = _architecture_grade(rng, region.grade, p.architecture_overlap) if architecture is None else architecture
            _ARCHITECTURES[arch](rng, _Zone(area, region.polygon, taken), p, draw)
            zones.append((arch, area))
    return zones, draw


def build_scene(seed: int, width: float, height: float, p: GeneratorParams) -> Scene:
    """All geometry of one slide covering width x height scene px (40x level-0 px)."""
    rng = np.random.default_rng([seed, 0x5CE4E])
    stain = StainModel.sample(rng, p.stain_vector_jitter, p.stain_strength_jitter)
    fragments, regions, angle = _layout_regions(rng, width, height, slide_grades(seed), p)
    zones, draw = _glands(rng, regions, p)
    scene = Scene(width, height, int(rng.integers(1 << 31)), stain, angle, fragments, regions, zones, draw)
    _artefacts(rng, scene, p)
    return scene


def single_grade_scene(seed: int, grade: int, size: float, p: GeneratorParams, architecture: int | None = None) -> Scene:
    """A square of tissue that is one region of one grade, without artefacts: for figures and tests.

    `architecture` overrides the drawn architecture (e.g. Gleason 3 cytology in benign-type glands).
    """
    rng = np.random.default_rng([seed, grade, 0x516])
    stain = StainModel.sample(rng, p.stain_vector_jitter, p.stain_strength_jitter)
    square = _rasterisable(box(0, 0, size, size))
    regions = [Region(grade, square)]
    zones, draw = _glands(rng, regions, p, architecture)
    return Scene(size, size, int(rng.integers(1 << 31)), stain, rng.uniform(0, np.pi), [square], regions, zones, draw)
