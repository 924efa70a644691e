"""Generator parameters with their pathological meaning (tabulated in docs/demo_cohort.md).

All lengths are level-0 pixels of a 40x scan (0.25 um/px). Anatomy is scaled down so that several
glands fit in one 128 px (32 um) patch: gland architecture by about 1/8 (a 200 um benign gland becomes
~80 px = 20 um) and cells by about 1/4 (a 7 um nucleus becomes ~5-8 px instead of 28 px), because
cells shrunk by 1/8 would fall below the 40x pixel and lose the cytology the Teacher must see.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GRADES = ("Benign", "Gleason 3", "Gleason 4", "Gleason 5")
# QuPath-style display colours of the annotation classes.
GRADE_COLORS = {"Benign": [70, 170, 70], "Gleason 3": [240, 200, 0], "Gleason 4": [240, 120, 0], "Gleason 5": [200, 20, 20]}
LEVEL0_MPP = 0.25


@dataclass(frozen=True)
class Cytology:
    """Nuclear features of one grade: resolvable at 40x/20x, averaged away at 10x/5x."""

    radius: float  # mean nuclear radius (px): nuclear enlargement rises with grade
    radius_sd: float  # relative spread of radii: nuclear pleomorphism
    elongation: float  # largest extra axis ratio: irregular nuclear shape
    vesicularity: float  # 0 dark homogeneous chromatin, 1 chromatin only at the membrane (open, vesicular)
    granularity: float  # chromatin clumping contrast
    nucleolus_prob: float  # fraction of nuclei with a visible (prominent) nucleolus
    nucleolus_sigma: float  # nucleolus size (Gaussian sigma, px): 1-2 px across, invisible after 8x downsampling
    crowding: float  # nucleus spacing / radius: lower = more crowded epithelium
    basal_layer: bool  # flattened basal cells under the secretory cells (present in benign glands only)
    # nuclear haematoxylin per epithelial area relative to `epithelial_nuclear_od`: crowding and hyperchromasia
    # that darken carcinoma epithelium at low power. 1 for every grade in the `absent` cohort (grade invisible
    # in the epithelium's mean colour), rising with grade in the `degraded` one
    nuclear_od: float = 1.0


@dataclass(frozen=True)
class GeneratorParams:
    """Every knob of the synthetic cohort; defaults are the documented demo cohort."""

    # slide layout
    cores_per_height: float = 760.0  # one needle core per this many px of slide height
    core_width: tuple[float, float] = (340.0, 470.0)  # core diameter (real ~1 mm, scaled ~1/8)
    core_length: tuple[float, float] = (0.62, 0.92)  # core length as a fraction of slide width
    core_break_prob: float = 0.35  # probability a core is broken into two fragments
    edge_roughness: float = 7.0  # amplitude (px) of the ragged cut edge of a core
    region_length: float = 620.0  # mean length along the core of one single-grade region
    zone_size: float = 260.0  # side of an architecture zone inside a region (Voronoi cell)
    # grade overlap: fraction of zones whose architecture is that of a neighbouring grade while the
    # cytology stays true, e.g. Gleason 3 cells in benign-sized glands, benign adenosis-like small glands
    architecture_overlap: float = 0.4
    # architecture (visible at 5x)
    benign_radius: tuple[float, float] = (26.0, 46.0)  # large benign glands
    benign_epithelium: tuple[float, float] = (10.0, 13.0)  # two cell layers: basal + secretory
    benign_infolding: tuple[float, float] = (0.25, 0.55)  # papillary infolding depth (fraction of lumen radius)
    benign_gap: tuple[float, float] = (8.0, 30.0)  # well-spaced glands, stroma between them
    corpora_amylacea_prob: float = 0.15  # benign lumens holding a laminated eosinophilic body
    g3_radius: tuple[float, float] = (11.0, 25.0)  # small discrete well-formed glands
    g3_epithelium: tuple[float, float] = (4.5, 6.5)  # single cell layer
    g3_gap: tuple[float, float] = (2.5, 12.0)  # infiltrative, variably spaced
    cribriform_radius: tuple[float, float] = (28.0, 50.0)  # cribriform gland (one epithelial mass)
    cribriform_lumen: tuple[float, float] = (3.5, 8.0)  # punched-out lumens inside it
    fused_radius: tuple[float, float] = (9.0, 15.0)  # glands fused into chains of 3-6
    poorly_formed_radius: tuple[float, float] = (7.0, 13.0)  # small nests with tiny or no lumen
    g4_gap: tuple[float, float] = (2.5, 10.0)
    g4_mix: tuple[float, float, float] = (0.35, 0.35, 0.30)  # zone share: cribriform, fused, poorly formed
    sheet_radius: tuple[float, float] = (35.0, 75.0)  # solid sheets without lumens
    cord_width: tuple[float, float] = (6.5, 9.0)  # single-file cords of cells
    single_cell_radius: float = 6.5  # single infiltrating cells (cytoplasm radius)
    g5_gap: tuple[float, float] = (3.0, 10.0)
    g5_sheet_share: float = 0.55  # zone share of solid sheets; the rest are cords and single cells
    comedonecrosis_prob: float = 0.35  # large sheets with central necrosis (eosinophilic debris)
    cleft_prob: float = 0.5  # carcinoma glands with a retraction cleft (thin clear halo)
    outline_irregularity: float = 0.08  # low-order wobble of gland outlines
    # cytology (visible at >= 20x); the nuclear haematoxylin per epithelium area is the same for all
    # grades so that larger nuclei do not darken the epithelium at 5x: only their size, texture and
    # nucleoli differ, which downsampling removes
    epithelial_nuclear_od: float = 0.42
    cytology: tuple[Cytology, ...] = (
        Cytology(2.4, 0.08, 0.15, 0.0, 0.10, 0.00, 0.5, 2.3, True),
        Cytology(3.0, 0.10, 0.20, 0.25, 0.25, 0.55, 0.55, 2.6, False),
        Cytology(3.5, 0.14, 0.30, 0.35, 0.30, 0.85, 0.65, 2.3, False),
        Cytology(4.1, 0.22, 0.45, 0.45, 0.35, 0.95, 0.75, 2.2, False),
    )
    stromal_cell_density: float = 0.18  # fraction of stromal lattice sites holding a fibroblast nucleus
    lymphocyte_fraction: float = 0.06  # fraction of stromal sites holding a lymphocyte
    # staining (Beer-Lambert concentrations, OD units)
    stroma_eosin: float = 0.34  # fibromuscular stroma, strongly eosinophilic
    cytoplasm_eosin: float = 0.15  # pale epithelial cytoplasm
    cytoplasm_haematoxylin: float = 0.05  # slight amphophilia of cytoplasm
    lumen_eosin: float = 0.04  # faint secretions in lumens
    stain_vector_jitter: float = 0.05  # slide-to-slide hue variation of H and E
    stain_strength_jitter: float = 0.15  # slide-to-slide staining intensity (log-normal sigma)
    # artefacts
    fold_prob: float = 0.5  # tissue fold: doubled, darker band across a core
    fold_width: tuple[float, float] = (25.0, 80.0)
    pen_prob: float = 0.6  # marker-pen stroke, partly on background
    pen_width: tuple[float, float] = (14.0, 34.0)
    blur_prob: float = 0.5  # out-of-focus area
    blur_radius: tuple[float, float] = (120.0, 320.0)
    blur_sigma: tuple[float, float] = (1.8, 3.5)
    dust_count: tuple[int, int] = (20, 70)  # dust specks and lint on the glass
    grain: float = 1.5  # scanner sensor noise (grey levels)


DEFAULT_PARAMS = GeneratorParams()


#: Cue modes of the demo cohort (config key `demo.cues`; docs/demo_cohort.md, "Cue modes").
#: `absent`: the documented default above; nuclear grade cues vanish at 5x and 40% of zones show a
#: neighbouring grade's architecture, so the grade is partly absent at 5x by construction (a negative control).
#: `degraded`: architecture cues (lumens, gland spacing, lumen shape) are large enough to stay at least
#: ~1.5 px at 5x, and crowding/hyperchromasia darken carcinoma epithelium with grade, also in the 40% of
#: zones drawn with a neighbouring grade's architecture, so the grade is degraded at 5x but still there.
#: Calibrated on a pilot cohort (seed 7, validation kappas; docs/demo_cohort.md, "Pilot"): with
#: architecture_overlap 0.3 the CE-only 40x-5x gap was only ~0.09-0.10, so the overlap stays 0.4.
DEGRADED_PARAMS = replace(
    DEFAULT_PARAMS,
    benign_infolding=(0.4, 0.7),  # deeper papillary folds: a star-shaped lumen still at 5x
    g3_radius=(14.0, 26.0),  # G3 lumens at least 7.5 px in radius: >= 1.9 px across at 5x
    g3_gap=(8.0, 16.0),  # discrete glands with >= 1 px of stroma between them at 5x
    cribriform_radius=(32.0, 56.0),
    cribriform_lumen=(6.0, 10.0),  # punched-out lumens 1.5-2.5 px across at 5x
    fused_radius=(12.0, 17.0),  # fused-gland lumens >= 1.8 px across at 5x
    cord_width=(9.0, 12.0),
    cytology=tuple(replace(c, nuclear_od=od) for c, od in zip(DEFAULT_PARAMS.cytology, (1.0, 1.1, 1.2, 1.3))),
)
CUE_MODES = {"absent": DEFAULT_PARAMS, "degraded": DEGRADED_PARAMS}


def cue_params(cues: str) -> GeneratorParams:
    """Generator parameters of cue mode `cues` (a key of CUE_MODES); ValueError for any other name."""
    if cues not in CUE_MODES:
        raise ValueError(f"unknown demo cue mode {cues!r}; expected one of {sorted(CUE_MODES)} (config key demo.cues)")
    return CUE_MODES[cues]
