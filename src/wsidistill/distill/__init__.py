"""Inter-resolution knowledge distillation: attention maps, loss terms, Teacher targets, Distiller."""

from .d4 import d4_transform
from .distiller import Distiller
from .inputs import student_input_from
from .targets import teacher_targets
from .terms import DEFAULT_OPTIONS, MAP_TERMS, TERMS, check_terms

__all__ = [
    "DEFAULT_OPTIONS",
    "MAP_TERMS",
    "TERMS",
    "Distiller",
    "check_terms",
    "d4_transform",
    "student_input_from",
    "teacher_targets",
]
