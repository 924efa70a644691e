"""Rasterise a Scene, one row strip at a time, into RGB and a Radboud label map.

Tissue is painted as haematoxylin and eosin concentration maps, artefacts add optical density, and the
stain model turns the total into RGB. Each strip is rendered with a halo of extra rows so that filters,
distance transforms and blur see their full neighbourhood; with coordinate-hashed noise this makes a
strip identical to the same rows of a whole-slide render.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from . import noise
from .params import GeneratorParams
from .scene import Scene, build_scene
from .stain import DUST

HALO = 40  # px; more than the reach of every filter (fibres, blur, folds), nucleus push and clipped edge
_RIM = 0.62  # relative radius where the chromatin rim of a vesicular nucleus starts


def _to_px(xy: np.ndarray, scale: float, row0: int) -> np.ndarray:
    """Scene px -> cv2 fixed-point (shift 4) coordinates of a strip starting at output row row0."""
    return np.round((xy / scale - [0.5, 0.5 + row0]) * 16).astype(np.int32)


def _fill(mask: np.ndarray, polygons, scale: float, row0: int, value: int = 1) -> None:
    for poly in polygons:
        cv2.fillPoly(mask, [_to_px(poly, scale, row0)], value, lineType=cv2.LINE_8, shift=4)


def _fill_geometry(mask: np.ndarray, geom, scale: float, row0: int, value: int = 1) -> None:
    """Fill a shapely (Multi)Polygon, holes included."""
    for part in getattr(geom, "geoms", [geom]):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        _fill(mask, [np.asarray(part.exterior.coords)], scale, row0, value)
        _fill(mask, [np.asarray(r.coords) for r in part.interiors], scale, row0, 0)


def _in_rows(bounds: np.ndarray, y_lo: float, y_hi: float) -> np.ndarray:
    return np.flatnonzero((bounds[:, 0] <= y_hi) & (bounds[:, 1] >= y_lo)) if len(bounds) else np.zeros(0, int)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _splat(shape, cx, cy, a, b, angle, core, rim, grain, texture: np.ndarray, nucleolus=None):
    """Draw elliptical nuclei (vectorised over nuclei) into max-composited maps.

    Returns haematoxylin OD, coverage and nucleolus maps. A nucleus has homogeneous chromatin (core ==
    rim) or vesicular chromatin (pale core, dark rim at the membrane), chromatin grain (amplitude
    `grain` times the strip's zero-mean pixel `texture`) and optionally a nucleolus: a Gaussian dot
    of 1-2 px given as (dx, dy, sigma, strength) arrays.
    """
    h_map, m_map, l_map = (np.zeros(shape, np.float32) for _ in range(3))
    if len(cx) == 0:
        return h_map, m_map, l_map
    k = 2 * int(np.ceil(a.max() + 1.5)) + 1
    off = np.arange(k) - k // 2
    for s in range(0, len(cx), 4096):
        sl = slice(s, s + 4096)
        x0, y0 = np.floor(cx[sl]).astype(np.int64), np.floor(cy[sl]).astype(np.int64)
        px, py = x0[:, None] + off, y0[:, None] + off  # (n, k) pixel centres
        dx = (px - cx[sl, None])[:, None, :]
        dy = (py - cy[sl, None])[:, :, None]
        c, si = np.cos(angle[sl])[:, None, None], np.sin(angle[sl])[:, None, None]
        u, v = dx * c + dy * si, dy * c - dx * si
        aa, bb = a[sl, None, None], b[sl, None, None]
        rho = np.sqrt((u / aa) ** 2 + (v / bb) ** 2)
        m = np.clip((1 - rho) * bb + 0.5, 0, 1).astype(np.float32)
        prof = core[sl, None, None] + (rim - core)[sl, None, None] * _smoothstep((rho - _RIM) / 0.25)
        g = texture[np.clip(py, 0, shape[0] - 1)[:, :, None], np.clip(px, 0, shape[1] - 1)[:, None, :]]
        h = m * np.maximum(prof + grain[sl, None, None] * g, 0)
        ok = (px[:, None, :] >= 0) & (px[:, None, :] < shape[1]) & (py[:, :, None] >= 0) & (py[:, :, None] < shape[0])
        flat = (py[:, :, None] * shape[1] + px[:, None, :])[ok]
        np.maximum.at(h_map.reshape(-1), flat, h[ok])
        np.maximum.at(m_map.reshape(-1), flat, m[ok])
        if nucleolus is not None:
            ox, oy, sig, amp = (q[sl, None, None] for q in nucleolus)
            lv = amp * np.exp(np.maximum(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * sig**2), -30)) * m  # no denormals
            np.maximum.at(l_map.reshape(-1), flat, lv[ok].astype(np.float32))
    return h_map, m_map, l_map


def _lattice(key: int, spacing: float, y_lo: float, y_hi: float, x_hi: float):
    """Jittered hexagonal lattice of cell sites (scene px) in a row band: site ids and positions."""
    row = spacing * np.sqrt(3) / 2
    j = np.arange(int(np.floor(y_lo / row)) - 1, int(np.ceil(y_hi / row)) + 2)
    i = np.arange(-1, int(np.ceil(x_hi / spacing)) + 2)
    jj, ii = (q.ravel() for q in np.meshgrid(j, i, indexing="ij"))
    x = (ii + 0.5 * (jj & 1)) * spacing + (noise.uniform(key, ii, jj, 0) - 0.5) * 0.6 * spacing
    y = jj * row + (noise.uniform(key, ii, jj, 1) - 0.5) * 0.6 * spacing
    return ii, jj, x, y


def _sample(field: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    return field[np.clip(iy, 0, field.shape[0] - 1), np.clip(ix, 0, field.shape[1] - 1)]


def _gradient(field: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = _sample(field, ix + 1, iy) - _sample(field, ix - 1, iy)
    gy = _sample(field, ix, iy + 1) - _sample(field, ix, iy - 1)
    n = np.hypot(gx, gy) + 1e-6
    return gx / n, gy / n


def _epithelial_nuclei(scene: Scene, p: GeneratorParams, grade_map, d_epi, d_out, d_lumen, row0: int, scale: float):
    """Nuclei of all epithelial cells: one lattice per grade, sized by that grade's cytology.

    Sites falling in epithelium of a region of that grade become nuclei; sites close to the stroma or
    lumen are pushed inward so nuclei line up in the epithelium. Benign glands have two layers: the
    outermost sites become flattened basal-cell nuclei (a layer carcinoma lacks) and the secretory
    nuclei keep to the basal half, leaving pale apical cytoplasm towards the lumen.
    """
    n_rows, width = grade_map.shape
    parts = []
    for g, cyto in enumerate(p.cytology):
        if not np.any(grade_map == g + 1):
            continue
        key = scene.key + 101 * (g + 1)
        ii, jj, x, y = _lattice(key, cyto.crowding * cyto.radius, row0 * scale, (row0 + n_rows) * scale, width * scale)
        cx, cy = x / scale - 0.5, y / scale - 0.5 - row0
        ix, iy = np.round(cx).astype(int), np.round(cy).astype(int)
        keep = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < n_rows)
        keep[keep] = (grade_map[iy[keep], ix[keep]] == g + 1) & (d_epi[iy[keep], ix[keep]] > 0)
        if cyto.basal_layer:  # secretory nuclei stay in the basal half of a gland's epithelium
            keep[keep] = d_out[iy[keep], ix[keep]] / 1.3 <= d_lumen[iy[keep], ix[keep]]
        ii, jj, cx, cy, ix, iy = ii[keep], jj[keep], cx[keep], cy[keep], ix[keep], iy[keep]
        u = [noise.uniform(key, ii, jj, k) for k in range(2, 10)]
        r = cyto.radius / scale * (1 + cyto.radius_sd * (u[0] + u[1] - 1) * 1.7)
        elong = 1 + cyto.elongation * u[2]
        a, b = r * np.sqrt(elong), r / np.sqrt(elong)
        angle = u[3] * np.pi
        basal = np.zeros(len(cx), bool)
        if cyto.basal_layer:
            basal = d_out[iy, ix] * scale < 2.4
        gx, gy = _gradient(d_epi, ix, iy)
        push = np.clip(0.8 * b - d_epi[iy, ix], 0, 0.8 * b)
        bx, by = _gradient(d_out, ix, iy)
        push_basal = np.clip(0.45 * r + 0.6 - d_out[iy, ix], -1.5, 1.5)
        cx = cx + np.where(basal, push_basal * bx, push * gx)
        cy = cy + np.where(basal, push_basal * by, push * gy)
        a = np.where(basal, 1.5 * r, a)
        b = np.where(basal, 0.45 * r, b)
        angle = np.where(basal, np.arctan2(by, bx) + np.pi / 2, angle)
        # same nuclear haematoxylin per epithelial area for every grade unless cyto.nuclear_od says otherwise
        coverage = np.pi / (np.sqrt(3) / 2 * cyto.crowding**2)
        if cyto.basal_layer:  # the apical half of the sites was left out, so these nuclei are darker
            coverage /= 2
        mean_od = p.epithelial_nuclear_od * cyto.nuclear_od / coverage * (0.9 + 0.2 * u[4])
        core = np.where(basal, 1.25 * mean_od, mean_od * (1 - cyto.vesicularity))
        rim = np.where(basal, 1.25 * mean_od, (mean_od - core * _RIM**2) / (1 - _RIM**2))
        has_nucleolus = (u[5] < cyto.nucleolus_prob) & ~basal
        rad = 0.35 * r * np.sqrt(u[6])
        nucleolus = (
            rad * np.cos(u[7] * 2 * np.pi),
            rad * np.sin(u[7] * 2 * np.pi),
            np.full(len(cx), cyto.nucleolus_sigma / scale),
            np.where(has_nucleolus, 1.0, 0.0),
        )
        grain = np.full(len(cx), cyto.granularity)
        parts.append((cx, cy, a, b, angle, core, rim, grain, nucleolus))
    if not parts:
        return None
    cols = [np.concatenate([q[k] for q in parts]) for k in range(8)]
    nucl = tuple(np.concatenate([q[8][k] for q in parts]) for k in range(4))
    return (*cols, nucl)


def _stromal_nuclei(scene: Scene, p: GeneratorParams, stroma, d_gland, theta, row0: int, scale: float):
    """Spindle fibroblast / smooth-muscle nuclei along the fibres, plus round dark lymphocytes."""
    n_rows, width = stroma.shape
    key = scene.key + 999
    ii, jj, x, y = _lattice(key, 10.0, row0 * scale, (row0 + n_rows) * scale, width * scale)
    cx, cy = x / scale - 0.5, y / scale - 0.5 - row0
    ix, iy = np.round(cx).astype(int), np.round(cy).astype(int)
    keep = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < n_rows)
    keep[keep] = stroma[iy[keep], ix[keep]] & (d_gland[iy[keep], ix[keep]] * scale > 4)
    u0 = noise.uniform(key, ii, jj, 2)
    keep &= u0 < p.stromal_cell_density + p.lymphocyte_fraction
    ii, jj, cx, cy, ix, iy, u0 = ii[keep], jj[keep], cx[keep], cy[keep], ix[keep], iy[keep], u0[keep]
    lymph = u0 < p.lymphocyte_fraction
    u1, u2 = noise.uniform(key, ii, jj, 3), noise.uniform(key, ii, jj, 4)
    a = np.where(lymph, 2.1, 3.6 + 1.6 * u1) / scale
    b = np.where(lymph, 2.1, 1.0 + 0.4 * u2) / scale
    angle = theta[iy, ix] + (u2 - 0.5) * 0.5
    od = np.where(lymph, 1.2, 0.8)
    return cx, cy, a, b, angle, od, od, np.full(len(cx), 0.12)


def _smooth_noise(key: int, row0: int, n_rows: int, width: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with grain size ~sigma px (blurred white noise; cheap at fine scales)."""
    white = noise.pixel_noise(key, row0, n_rows, 0, width) - np.float32(0.5)
    return cv2.GaussianBlur(white, (0, 0), sigma) * np.float32(np.sqrt(12) * 2 * np.sqrt(np.pi) * sigma)


def _fibre_texture(key: int, row0: int, n_rows: int, width: int, scale: float, base_angle: float):
    """Wavy collagen / smooth-muscle fibres: noise smeared along a slowly turning local direction.

    Three oriented anisotropic-Gaussian filters 60 degrees apart are blended by how well each matches
    the local fibre direction. Fibres are ~2 px wide at 40x, so this runs at half resolution
    (anchored to even absolute rows) and is upsampled. Returns zero-mean texture and the direction
    field (radians) at full resolution.
    """
    theta = base_angle + (noise.fbm(key + 1, row0, n_rows, width, scale, 600.0, 1) - 0.5) * 2.4
    h2, w2 = -(-n_rows // 2), -(-width // 2)
    grain = _smooth_noise(key, row0 // 2, h2, w2, 0.35 / scale)
    half = theta[::2, ::2]
    c2, s2 = np.cos(2 * half), np.sin(2 * half)
    size = 2 * int(round(5 / scale)) + 1
    acc = np.zeros_like(grain)
    wsum = np.full_like(grain, 1e-3)
    for ang in base_angle + np.array([-np.pi / 3, 0.0, np.pi / 3]):
        kern = cv2.getGaussianKernel(size, 1.8 / scale) @ cv2.getGaussianKernel(size, 0.3 / scale).T
        rot = cv2.getRotationMatrix2D((size // 2, size // 2), -np.degrees(ang) + 90, 1.0)
        kern = cv2.warpAffine(kern.astype(np.float32), rot, (size, size))
        kern[kern < 1e-4 * kern.max()] = 0  # no denormal floats: they slow filtering down ~15x
        kern /= np.sqrt((kern**2).sum())  # unit variance out of unit-variance white-ish input
        w = np.maximum(c2 * np.cos(2 * ang) + s2 * np.sin(2 * ang), 0) ** 2
        acc += w * cv2.filter2D(grain, -1, kern, borderType=cv2.BORDER_REFLECT)
        wsum += w
    fib = cv2.resize(acc / wsum, (2 * w2, 2 * h2), interpolation=cv2.INTER_LINEAR)[:n_rows, :width]
    return fib * np.float32(0.15), theta


def render_strip(scene: Scene, p: GeneratorParams, y0: int, y1: int, width: int, height: int, scale: float):
    """RGB (uint8) and Radboud labels (0 glass, 1 stroma, 2 benign epithelium, 3-5 Gleason 3-5) of
    output rows y0..y1 of a width x height image; `scale` is scene px per output px (1 at 40x, 2 at
    20x). y0 must be a multiple of 8 (the coarse noise grid)."""
    row0, row1 = max(0, y0 - HALO), min(height, y1 + HALO)
    shape = (row1 - row0, width)
    y_lo, y_hi = row0 * scale, row1 * scale

    tissue = np.zeros(shape, np.uint8)
    grade_map = np.zeros(shape, np.uint8)  # region grade + 1
    for frag in scene.fragments:
        _fill_geometry(tissue, frag, scale, row0)
    for region in scene.regions:
        _fill_geometry(grade_map, region.polygon, scale, row0, region.grade + 1)
    gland, lumen, cleft, necrosis = (np.zeros(shape, np.uint8) for _ in range(4))
    for mask, polys, bounds in (
        (gland, scene.outlines, scene.outline_bounds),
        (lumen, scene.lumens, scene.lumen_bounds),
        (cleft, scene.clefts, scene.cleft_bounds),
        (necrosis, scene.necrosis, scene.necrosis_bounds),
    ):
        _fill(mask, [polys[i] for i in _in_rows(bounds, y_lo, y_hi)], scale, row0)
    epi = gland & (1 - lumen) & (1 - necrosis)
    stroma = (tissue > 0) & (gland == 0)
    d_epi = cv2.distanceTransform(epi, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(gland, cv2.DIST_L2, 5)
    d_gland = cv2.distanceTransform(1 - gland, cv2.DIST_L2, 5)
    d_lumen = cv2.distanceTransform(1 - lumen, cv2.DIST_L2, 5)

    key = scene.key
    texture = noise.pixel_noise(key + 21, row0, shape[0], 0, width) - np.float32(0.5)  # chromatin, dust
    sensor = noise.pixel_noise(key + 41, row0, shape[0], 0, width) - np.float32(0.5)
    fib, theta = _fibre_texture(key + 11, row0, shape[0], width, scale, scene.fibre_angle)
    density = noise.fbm(key + 12, row0, shape[0], width, scale, 240.0, 3)
    cyto_tex = _smooth_noise(key + 13, row0, shape[0], width, 1.5 / scale)
    h = np.where(stroma, 0.02 + 0.03 * density, 0.0).astype(np.float32)
    e = np.where(stroma, p.stroma_eosin * (0.7 + 0.6 * density) * (1 + fib), 0.0).astype(np.float32)
    h = np.where(epi > 0, p.cytoplasm_haematoxylin * (1 + 0.15 * cyto_tex), h)
    e = np.where(epi > 0, p.cytoplasm_eosin * (1 + 0.15 * cyto_tex), e)
    e = np.where((lumen > 0) & (tissue > 0), p.lumen_eosin * 2 * density, e)
    h, e = _necrosis_and_corpora(scene, necrosis, lumen, h, e, row0, scale, key)
    clear = stroma & (cleft > 0)
    h, e = np.where(clear, 0.1 * h, h), np.where(clear, 0.1 * e, e)

    epithelial = _epithelial_nuclei(scene, p, np.where(epi > 0, grade_map, 0), d_epi, d_out, d_lumen, row0, scale)
    if epithelial is not None:
        *geom, nucl = epithelial
        hn, mn, ln = _splat(shape, *geom, texture, nucleolus=nucl)
        h = h * (1 - mn) + hn + 0.55 * ln
        e = e * (1 - 0.65 * mn) + 0.75 * ln
    hs, ms, _ = _splat(shape, *_stromal_nuclei(scene, p, stroma, d_gland, theta, row0, scale), texture)
    h = h * (1 - ms) + hs
    e = e * (1 - 0.5 * ms)

    coverage = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 0.7)
    h, e = h * coverage, e * coverage
    if scene.folds:
        fold = np.zeros(shape, np.uint8)
        for f in scene.folds:
            _fill_geometry(fold, f, scale, row0)
        if fold.any():
            doubled = 1 + 0.9 * cv2.GaussianBlur(fold.astype(np.float32), (0, 0), 2.5 / scale)
            h, e = h * doubled, e * doubled
    h, e = _defocus(scene, h, e, row0, width, scale)

    extra = _dust(scene, shape, row0, scale, texture)  # OD on top of the tissue: dust, lint and marker ink
    extra = extra[..., None] * DUST.astype(np.float32) if extra is not None else None
    for area, ink, strength in scene.pens:
        mark = np.zeros(shape, np.uint8)
        _fill_geometry(mark, area, scale, row0)
        if mark.any():
            streaks = noise.fbm(key + 31, row0, shape[0], width, scale, 40.0, 2)
            m = cv2.GaussianBlur(mark.astype(np.float32), (0, 0), 1.0) * strength * (0.55 + 0.9 * streaks)
            extra = (0 if extra is None else extra) + m[..., None] * ink.astype(np.float32)

    grain = sensor * np.float32(2 * p.grain)
    rgb = scene.stain.to_rgb(h, e, extra, grain)
    labels = np.where(tissue > 0, 1, 0).astype(np.uint8)
    labels = np.where((gland > 0) & (grade_map > 0), grade_map + 1, labels).astype(np.uint8)
    crop = slice(y0 - row0, y1 - row0)
    return rgb[crop], labels[crop]


def _necrosis_and_corpora(scene: Scene, necrosis, lumen, h, e, row0: int, scale: float, key: int):
    """Comedonecrosis: eosinophilic granular debris with karyorrhectic nuclear dust. Corpora amylacea:
    laminated eosinophilic bodies in benign lumens."""
    if necrosis.any():
        rows, width = necrosis.shape
        grain = _smooth_noise(key + 61, row0, rows, width, 1.2 / scale)
        dust = cv2.GaussianBlur((noise.pixel_noise(key + 62, row0, rows, 0, width) < 0.025).astype(np.float32), (0, 0), 0.6)
        dead = necrosis > 0
        e = np.where(dead, 0.32 * (1 + 0.25 * grain), e)
        h = np.where(dead, 0.06 + 1.6 * dust, h)
    for x, y, r in scene.corpora:
        x, y, r = x / scale - 0.5, y / scale - 0.5 - row0, r / scale
        r0, r1 = max(0, int(y - r) - 1), min(h.shape[0], int(y + r) + 2)
        c0, c1 = max(0, int(x - r) - 1), min(h.shape[1], int(x + r) + 2)
        if r0 >= r1 or c0 >= c1:
            continue
        rho = np.hypot(np.arange(c0, c1)[None, :] - x, np.arange(r0, r1)[:, None] - y)
        body = np.clip(r - rho + 0.5, 0, 1) * (lumen[r0:r1, c0:c1] > 0)
        laminae = 0.8 + 0.2 * np.cos(2 * np.pi * rho * scale / 2.5)
        e[r0:r1, c0:c1] += (0.5 * body * laminae).astype(np.float32)
        h[r0:r1, c0:c1] += (0.05 * body).astype(np.float32)
    return h, e


def _defocus(scene: Scene, h, e, row0: int, width: int, scale: float):
    """Blend towards a Gaussian-blurred copy inside soft-edged out-of-focus ellipses."""
    for cx, cy, rx, ry, ang, sigma in scene.blurs:
        reach = max(rx, ry) / scale
        r0, r1 = max(0, int((cy / scale) - reach) - row0), min(h.shape[0], int((cy / scale) + reach) + 1 - row0)
        c0, c1 = max(0, int(cx / scale - reach)), min(width, int(cx / scale + reach) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        pad = int(4 * sigma / scale) + 1
        p0, p1, q0, q1 = max(0, r0 - pad), min(h.shape[0], r1 + pad), max(0, c0 - pad), min(width, c1 + pad)
        dy = (np.arange(p0, p1) + row0 + 0.5)[:, None] * scale - cy
        dx = (np.arange(q0, q1) + 0.5)[None, :] * scale - cx
        c, s = np.cos(ang), np.sin(ang)
        rho = np.hypot((dx * c + dy * s) / rx, (dy * c - dx * s) / ry)
        w = _smoothstep((1 - rho) / 0.4).astype(np.float32)
        for field in (h, e):
            window = field[p0:p1, q0:q1]
            blurred = cv2.GaussianBlur(window, (0, 0), sigma / scale)
            window += w * (blurred - window)
    return h, e


def _dust(scene: Scene, shape, row0: int, scale: float, texture: np.ndarray) -> np.ndarray | None:
    """Optical density of dust specks and lint fibres lying on the slide (None where there are none)."""
    d = scene.dust
    sel = (d[:, 1] + d[:, 2] >= row0 * scale) & (d[:, 1] - d[:, 2] <= (row0 + shape[0]) * scale)
    lint = np.zeros(shape, np.uint8)
    for fibre in scene.lint:
        _fill_geometry(lint, fibre, scale, row0)
    if not sel.any() and not lint.any():
        return None
    d = d[sel]
    r = d[:, 2] / scale
    specks, _, _ = _splat(shape, d[:, 0] / scale - 0.5, d[:, 1] / scale - 0.5 - row0, r, 0.8 * r,
                          np.zeros(len(d)), d[:, 3], d[:, 3], np.full(len(d), 0.3), texture)
    return specks + 0.5 * lint


def render_strips(scene: Scene, p: GeneratorParams, width: int, height: int, scale: float, rows: int) -> Iterator:
    """Yield (y0, rgb, labels) for consecutive strips of `rows` rows covering the slide."""
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        rgb, labels = render_strip(scene, p, y0, y1, width, height, scale)
        yield y0, rgb, labels


def render_slide(seed: int, width: int, height: int, params: GeneratorParams):
    """Whole level-0 RGB image, Radboud labels and scene of one 40x slide, in memory (figures, probes)."""
    scene = build_scene(seed, width, height, params)
    rgb = np.zeros((height, width, 3), np.uint8)
    labels = np.zeros((height, width), np.uint8)
    for y0, strip, lab in render_strips(scene, params, width, height, 1.0, rows=512):
        rgb[y0 : y0 + len(strip)] = strip
        labels[y0 : y0 + len(lab)] = lab
    return rgb, labels, scene
