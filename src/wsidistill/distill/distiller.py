"""The Student's training objective: a weighted sum of named distillation terms."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .terms import CHOICES, DEFAULT_OPTIONS, TEACHER_OPTIONS, TERMS, TermInput, attention_map, check_terms


class Distiller(nn.Module):
    """``L = sum_term weight_term * L_term(Student, Teacher targets)``.

    ``weights``: e.g. ``{"ce": 1, "fm": 0.1, "atplus": 10}`` (del Amor et al., EUSIPCO 2023);
    zero-weighted terms are skipped. Owns the Student and any learned regressors (FitNets 1x1 conv
    for ``fm``, linear for ``sr``, created when Student and Teacher channel counts differ), so
    ``distiller.parameters()`` is what the optimiser trains. The Teacher is not a submodule: only
    its channel count and, for ``sr``, a frozen copy of its classifier (buffers) are kept.

    Each term's loss, map, Teacher target and options come from the registry
    (:data:`wsidistill.distill.terms.TERMS`). Options (``DEFAULT_OPTIONS``): ``label_smoothing``, ``class_weights`` (CE); ``kd_temperature``,
    ``kd_t2_scaling``, ``kd_form`` ("kl" | "cross_entropy"); ``attention_norm`` ("sample": min-max
    per sample over classes and space, as the reference; "class": per sample and class) for
    ``atplus``/``gradcam``; ``eps``; ``at_p``; ``fma_match``, ``mip_match``, ``saliency_match``
    ("l2" | "bce" | "dice"). The reference code's KD is the ``kd_ref`` term (``kd`` with
    ``kd_temperature=1``, ``kd_t2_scaling=False``, ``kd_form="cross_entropy"``); ``atplus_l2``,
    ``atplus_sum`` and ``atplus_pearson`` are AT+ with a scale-free normalisation.
    """

    def __init__(
        self,
        student: nn.Module,
        weights: dict[str, float],
        *,
        teacher: nn.Module | None = None,
        num_classes: int,
        options: dict | None = None,
    ) -> None:
        super().__init__()
        check_terms(weights)
        unknown = sorted(set(options or {}) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ValueError(f"unknown Distiller option(s) {unknown}; valid: {list(DEFAULT_OPTIONS)}")
        self.options = DEFAULT_OPTIONS | (options or {})
        for option, choices in CHOICES.items():
            if self.options[option] not in choices:
                raise ValueError(f"{option} must be one of {list(choices)}, got {self.options[option]!r}")
        self.weights = {name: float(w) for name, w in weights.items() if w != 0}
        if not self.weights:
            raise ValueError(f"no term has a non-zero weight; valid terms: {list(TERMS)}")
        self.student = student
        self.num_classes = num_classes
        if student.classifier.out_features != num_classes:
            raise ValueError(f"Student has {student.classifier.out_features} classes, expected {num_classes}")
        if set(self.weights) - {"ce"}:
            if teacher is None:
                raise ValueError(f"terms {sorted(set(self.weights) - {'ce'})} need the Teacher")
            if teacher.classifier.out_features != num_classes:
                raise ValueError(f"Teacher has {teacher.classifier.out_features} classes, expected {num_classes}")
        k_s = student.num_features
        k_t = k_s if teacher is None else teacher.num_features
        self.fm_regressor = nn.Conv2d(k_s, k_t, 1) if "fm" in self.weights and k_s != k_t else None
        self.sr_regressor = nn.Linear(k_s, k_t) if "sr" in self.weights and k_s != k_t else None
        if "sr" in self.weights:
            self.register_buffer("teacher_weight", teacher.classifier.weight.detach().clone())
            bias = teacher.classifier.bias
            self.register_buffer("teacher_bias", None if bias is None else bias.detach().clone())
        class_weights = self.options["class_weights"]
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        )

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the terms in use (non-zero weight), for :func:`teacher_targets`."""
        return tuple(self.weights)

    @property
    def teacher_options(self) -> dict:
        """Options :func:`teacher_targets` must use to match this Distiller."""
        return {name: self.options[name] for name in TEACHER_OPTIONS}

    def forward(
        self, student_input: Tensor, labels: Tensor, targets: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Total weighted loss and each term's (unweighted) value."""
        needed = {TERMS[t].target for t in self.weights} - {None}
        missing = sorted(needed - set(targets or {}))
        if missing:
            raise ValueError(f"Teacher targets lack {missing} (terms in use: {list(self.weights)})")
        if any(TERMS[t].input_grad for t in self.weights):
            student_input = student_input.detach().requires_grad_(True)
        output = self.student(student_input)
        values = {name: self._term(name, output, student_input, labels, targets) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.item() for name, value in values.items()}

    def _term(self, name: str, output, student_input: Tensor, labels: Tensor, targets) -> Tensor:
        """Value of term ``name`` for the Student's ``output``."""
        term = TERMS[name]
        student_map = None
        if term.map is not None:
            student_map = attention_map(name, output, self.student.classifier.weight, student_input,
                                        create_graph=True, **self.teacher_options)
        options = {option: self.options[option] for option in term.options}
        target = None if term.target is None else targets[term.target]
        return term.loss(TermInput(output, labels, target, student_map, options, self))
