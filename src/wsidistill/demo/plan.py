"""Planning the synthetic cohort: slide ids, patients, splits and slide seeds, without drawing a pixel.

Kept apart from the writers (OpenCV, TIFF) so that ``snakemake -n`` plans the demo cohort's jobs
without importing the imaging stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import slide_grades

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DemoSlide:
    slide_id: str  # "demo000", ...
    patient_id: str  # "P000", ...; a patient may have several slides
    split: str  # "train" | "val" | "test", assigned by patient so no patient spans two splits
    seed: int  # per-slide seed derived from the cohort seed; fixes every pixel of the slide


def _slide_seed(cohort_seed: int, index: int, attempt: int) -> int:
    return int(np.random.SeedSequence([cohort_seed, index, attempt]).generate_state(1)[0])


def plan_cohort(n_slides: int, seed: int, *, val_patients: int | None = None, test_patients: int | None = None) -> list[DemoSlide]:
    """Patients, splits and slide seeds; pure and deterministic.

    Patients get one or two slides; about 60/20/20 % of patients go to train/val/test, each split at
    least one, unless `val_patients` / `test_patients` fix how many patients go to val / test (the rest
    train; at least one patient must be left for training). Slide seeds are chosen (deterministically) so
    that every split contains all four grades, otherwise a small test split could miss a class and its
    kappa would be meaningless. ValueError for a cohort too small for the requested splits.
    """
    if n_slides < 3:
        raise ValueError("a cohort needs at least 3 slides: one patient per split")
    rng = np.random.default_rng([seed, 0xC0407])
    sizes: list[int] = []
    while sum(sizes) < n_slides:
        sizes.append(min(1 + int(rng.random() < 0.3), n_slides - sum(sizes)))
    while len(sizes) < 3:
        sizes[sizes.index(2)] = 1
        sizes.append(1)
    n_pat = len(sizes)
    n_val = n_test = max(1, round(0.2 * n_pat))
    n_val, n_test = (n if fixed is None else fixed for n, fixed in ((n_val, val_patients), (n_test, test_patients)))
    if min(n_val, n_test) < 1 or n_val + n_test >= n_pat:
        raise ValueError(f"{n_slides} slides make {n_pat} patients: too few for {n_val} val and {n_test} test "
                         "patients plus at least one training patient (demo.slides, demo.val_patients, demo.test_patients)")
    split_of = np.array(["train"] * (n_pat - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)[rng.permutation(n_pat)]

    members = [(p, str(split_of[p])) for p, size in enumerate(sizes) for _ in range(size)]
    seeds = [_slide_seed(seed, i, 0) for i in range(n_slides)]
    for split in SPLITS:
        idx = [i for i, (_, s) in enumerate(members) if s == split]
        covered = set().union(*(slide_grades(seeds[i]) for i in idx[:-1]))
        attempt = 0
        while len(covered | set(slide_grades(seeds[idx[-1]]))) < 4:
            attempt += 1
            seeds[idx[-1]] = _slide_seed(seed, idx[-1], attempt)
    return [DemoSlide(f"demo{i:03d}", f"P{p:03d}", s, seeds[i]) for i, (p, s) in enumerate(members)]
