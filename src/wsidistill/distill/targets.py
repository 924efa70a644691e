"""Everything the distillation terms need from the frozen Teacher, computed in one pass."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .terms import MAP_TERMS, TEACHER_OPTIONS, TERMS, attention_map, check_terms


def teacher_targets(teacher: nn.Module, teacher_input: Tensor, terms: Iterable[str], **options) -> dict[str, Tensor]:
    """Detached Teacher targets for ``terms``, each a per-sample tensor with the batch dim first.

    Always ``"logits"`` ``(B, C)`` and ``"features"`` (last block, ``(B, K, H, W)``); plus, per map
    the terms read, the unnormalised map on the Teacher's own grid under its term's name (``"atplus"``,
    ``"gradcam"``: ``(B, C, H, W)``; ``"at"``, ``"fma"``, ``"mip"``: ``(B, 1, H, W)``;
    ``"saliency"``: ``(B, C, H_in, W_in)``); ``atplus_l2``, ``atplus_sum`` and ``atplus_pearson``
    read ``"atplus"``. The loss resamples to the Student's grid. This dict
    is what a Teacher-target cache stores per patch. Options: ``at_p`` (default 2).
    The Teacher must be in eval mode (its batch-norm statistics stay fixed).
    """
    terms = check_terms(terms)
    unknown = sorted(set(options) - set(TEACHER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown teacher_targets option(s) {unknown}; valid: {list(TEACHER_OPTIONS)}")
    if teacher.training:
        raise ValueError("the Teacher must be in eval mode: call teacher.eval()")
    needed = {TERMS[t].target for t in terms}
    map_terms = [t for t in MAP_TERMS if t in needed]  # a map's own term names it: atplus_l2 reads "atplus"
    input_grad = any(TERMS[t].input_grad for t in map_terms)
    images = teacher_input.detach().requires_grad_(input_grad)
    with torch.set_grad_enabled(input_grad):
        output = teacher(images)
        targets = {"logits": output.logits, "features": list(output.features.values())[-1]}
        for term in map_terms:
            targets[term] = attention_map(
                term, output, teacher.classifier.weight, images, create_graph=False, **options
            )
    # At least float32 under autocast: targets meet float32 losses and are cached as float32.
    return {name: value.detach().to(torch.promote_types(value.dtype, torch.float32)) for name, value in targets.items()}
