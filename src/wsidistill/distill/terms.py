"""Names of the distillation terms and the maps they match, shared by Teacher and Student."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from ..models import ModelOutput
from .attention import at_map, atplus_maps, fma_map, gradcam_maps, mip_map, saliency_map

TERMS = ("ce", "kd", "fm", "at", "gradcam", "atplus", "sr", "fma", "mip", "saliency")
MAP_TERMS = ("at", "gradcam", "atplus", "fma", "mip", "saliency")
# Teacher-target entry each term reads; map terms read the entry named after themselves.
TARGET_KEYS = {"ce": None, "kd": "logits", "sr": "logits", "fm": "features"} | {t: t for t in MAP_TERMS}


def check_terms(terms: Iterable[str]) -> tuple[str, ...]:
    """Return ``terms`` as a tuple; ValueError naming the valid terms if one is unknown."""
    terms = tuple(terms)
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise ValueError(f"unknown distillation term(s) {unknown}; valid terms: {list(TERMS)}")
    return terms


def attention_map(
    term: str,
    output: ModelOutput,
    classifier_weight: Tensor,
    images: Tensor,
    *,
    create_graph: bool,
    at_p: float = 2.0,
) -> Tensor:
    """The map that map term ``term`` matches, from a network's ``output`` on ``images``.

    ``atplus``/``gradcam``: all-class maps of the last block, closed-form Grad-CAM weights (every
    model's head is GAP + linear). ``at``: last block. ``fma``: first and last blocks. ``mip``:
    all blocks. ``saliency``: all-class input gradients (``images`` must require grad).
    """
    features = list(output.features.values())
    if term == "atplus":
        return atplus_maps(features[-1], classifier_weight=classifier_weight)
    if term == "gradcam":
        return gradcam_maps(features[-1], classifier_weight=classifier_weight)
    if term == "at":
        return at_map(features[-1], at_p)
    if term == "fma":
        return fma_map(features)
    if term == "mip":
        return mip_map(features)
    if term == "saliency":
        return saliency_map(output.logits, images, create_graph=create_graph)
    raise ValueError(f"{term!r} is not a map term; map terms: {list(MAP_TERMS)}")
