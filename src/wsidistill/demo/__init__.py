"""Synthetic H&E prostate-biopsy cohort for tests, demos and benchmarks (no public slides needed).

See docs/demo_cohort.md for the generator parameters and what they mean pathologically.
"""

from .cohort import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    VARIANTS,
    DemoSlide,
    plan_cohort,
    write_cohort,
    write_sample_sheet,
    write_slide,
)
from .params import DEFAULT_PARAMS, GRADES, GeneratorParams

__all__ = [
    "DEFAULT_HEIGHT",
    "DEFAULT_PARAMS",
    "DEFAULT_WIDTH",
    "GRADES",
    "VARIANTS",
    "DemoSlide",
    "GeneratorParams",
    "plan_cohort",
    "write_cohort",
    "write_sample_sheet",
    "write_slide",
]
