"""Inter-resolution knowledge distillation: attention maps, loss terms, Teacher targets, Distiller.

The names below are resolved on first use (PEP 562 ``__getattr__``), so that reading the term registry
(:data:`TERMS`, :data:`DEFAULT_OPTIONS`: the workflow's config check, at every ``snakemake -n``) does not
import PyTorch, 2.2 of a dry run's 5 s.
"""

from importlib import import_module as _import_module

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "DEFAULT_OPTIONS": "terms",
    "MAP_TERMS": "terms",
    "TERMS": "terms",
    "check_terms": "terms",
    "Distiller": "distiller",
    "d4_transform": "d4",
    "student_input_from": "inputs",
    "teacher_targets": "targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
