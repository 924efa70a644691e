"""Synthetic H&E prostate-biopsy cohort for tests, demos and benchmarks (no public slides needed).

See docs/demo_cohort.md for the generator parameters and what they mean pathologically.
The writers (``write_cohort``, ``write_slide``, ``write_sample_sheet``) import OpenCV and tifffile
when first used, so planning a cohort (``plan_cohort``, as ``snakemake -n`` does) stays light.
"""

from importlib import import_module

from .params import DEFAULT_PARAMS, GRADES, GeneratorParams
from .plan import DemoSlide, plan_cohort

_COHORT = ("DEFAULT_HEIGHT", "DEFAULT_WIDTH", "VARIANTS", "write_cohort", "write_sample_sheet", "write_slide")

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


def __getattr__(name: str):
    if name in _COHORT:
        return getattr(import_module(".cohort", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
