"""PANDA label-mask presets and the check of `label_mask_context`: no imaging imports, so the workflow's
pre-flight (``snakemake -n``, through :func:`wsidistill.config.validate_config`) reads them without loading
OpenCV or OpenSlide.  :mod:`wsidistill.slides.annotations` applies them to masks."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .geojson import AnnotationError

#: PANDA Radboud mask values -> classes: stroma and benign epithelium are both non-cancerous.
RADBOUD_CLASSES = {0: None, 1: "NC", 2: "NC", 3: "G3", 4: "G4", 5: "G5"}

#: Radboud's context value: 1, stroma.
RADBOUD_CONTEXT = (1,)

#: PANDA Karolinska mask values: 0 background, 1 benign tissue (stroma and benign glands), 2 cancer, ungraded:
#: map 2 to the study's cancer class (`label_mask_classes: {"0": null, "1": NC, "2": <class>}`).
KAROLINSKA_CONTEXT = (1,)


def check_label_mask_context(value_classes: Mapping, context: Collection[int], source: object = "config") -> None:
    """Raise AnnotationError, one line naming ``source``, for a ``label_mask_context`` value outside 0-255
    or one ``label_mask_classes`` maps to null (context is tissue of a class).  A value absent from
    ``label_mask_classes`` is no class at all, context or not: it is ignored, as in the mask."""
    classes = {int(v): name for v, name in value_classes.items()}
    bad = sorted(int(v) for v in context if not 0 <= int(v) <= 255 or (int(v) in classes and classes[int(v)] is None))
    if bad:
        raise AnnotationError(f"{source}: `label_mask_context` values {bad} are not tissue of a class (mask values "
                              f"are 0-255 and `label_mask_classes` maps them to null): map them to a class in "
                              "`label_mask_classes` or remove them from `label_mask_context`")
