"""The distillation-term registry: each term declared once, shared by Teacher and Student.

A :class:`Term` names its loss (a function of :mod:`wsidistill.distill.losses`), the Teacher-target
entry it reads, the options it reads with their defaults and, for a map term, the attention map it
matches (a function of :mod:`wsidistill.distill.attention`) and the options that map reads. Everything
else (:data:`DEFAULT_OPTIONS`, :data:`TEACHER_OPTIONS`, the Distiller's dispatch, the Teacher-target
keys a cache holds) is looked up here. Terms follow del Amor et al., "Attention to detail:
inter-resolution knowledge distillation", EUSIPCO 2023 (``ce``, ``fm``, ``atplus``, ``kd_ref``: the KD of
their code) and the baselines their code compares against; ``atplus_l2``, ``atplus_sum`` and
``atplus_pearson`` are AT+ with a scale-free normalisation, an extension (``losses.atplus``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_module

# Loaded at the first loss or map computed, not here: the workflow's config check reads this registry at every
# `snakemake -n`, and PyTorch would add 2.2 s to it (tests/test_workflow.py checks that a dry run does not import it).
losses = lazy_module("wsidistill.distill.losses")
attention = lazy_module("wsidistill.distill.attention")

if TYPE_CHECKING:  # annotations only: importing the models pulls in PyTorch, 2.2 s of every `snakemake -n`
    from torch import Tensor

    from ..models import ModelOutput


@dataclass(frozen=True)
class TermInput:
    """What a term's loss reads.

    ``output``: the Student's :class:`ModelOutput`; ``labels`` ``(B,)``; ``target``: the Teacher-target
    entry under the term's ``target`` key (None for ``ce``); ``student_map``: the Student's map for a
    map term; ``options``: the term's options, defaults filled in; ``modules``: the Distiller, whose
    learned regressors and buffers (``class_weights``, ``fm_regressor``, ``sr_regressor``,
    ``teacher_weight``, ``teacher_bias``) the terms use.
    """

    output: ModelOutput
    labels: Tensor
    target: Tensor | None
    student_map: Tensor | None
    options: Mapping[str, Any]
    modules: Any


@dataclass(frozen=True)
class Term:
    """One distillation term.

    ``loss``: its value from a :class:`TermInput`. ``target``: the Teacher-target entry it reads
    (:func:`teacher_targets`), None if none. ``options``: the options its loss reads, with defaults.
    ``map``: for a map term, ``(output, classifier_weight, images, create_graph, **map_options) -> map``,
    applied to Student and Teacher alike; ``map_options``: the options that map reads (so the Teacher's
    targets depend on them). ``input_grad``: the map needs gradients with respect to the input images.
    """

    loss: Callable[[TermInput], Tensor]
    target: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    map: Callable[..., Tensor] | None = None
    map_options: Mapping[str, Any] = field(default_factory=dict)
    input_grad: bool = False


def _last(output: ModelOutput) -> Tensor:
    """Features of the last block, ``(B, K, H, W)``."""
    return list(output.features.values())[-1]


def _start_dim(options: Mapping[str, Any]) -> int:
    """``attention_norm`` "sample": min-max over classes and space (the reference); "class": per class."""
    return 1 if options["attention_norm"] == "sample" else 2


#: Options of the all-class map terms (``atplus``, ``gradcam``).
_CLASS_MAP_OPTIONS = {"attention_norm": "sample", "eps": 1e-8}


def _atplus_map(output, weight, images, create_graph) -> Tensor:
    """All-class AT+ maps of the last block (:func:`~wsidistill.distill.attention.atplus_maps`)."""
    return attention.atplus_maps(_last(output), classifier_weight=weight)


def _atplus(normalise: str) -> Term:
    """The AT+ term with normalisation ``normalise`` (``losses.atplus``); every variant reads the
    Teacher's ``atplus`` map, so one Teacher-target cache serves them all."""
    return Term(
        loss=lambda i: losses.atplus(i.student_map, i.target, start_dim=_start_dim(i.options), eps=i.options["eps"],
                                     normalise=normalise),
        target="atplus",
        options=_CLASS_MAP_OPTIONS,
        map=_atplus_map,
    )


def _matched(name: str, map_: Callable[..., Tensor], *, input_grad: bool = False) -> Term:
    """A map term whose loss (``losses.<name>``) compares maps by ``{name}_match`` ("l2" | "bce" | "dice")."""
    return Term(
        loss=lambda i: getattr(losses, name)(i.student_map, i.target, match=i.options[f"{name}_match"],
                                             eps=i.options["eps"]),
        target=name,
        options={f"{name}_match": "l2", "eps": 1e-8},
        map=map_,
        input_grad=input_grad,
    )


#: The registry, in a fixed order (the order Teacher targets are computed and cached in).
TERMS: Mapping[str, Term] = MappingProxyType({
    "ce": Term(
        loss=lambda i: losses.ce(i.output.logits, i.labels, label_smoothing=i.options["label_smoothing"],
                                 class_weights=i.modules.class_weights),
        options={"label_smoothing": 0.0, "class_weights": None},
    ),
    "kd": Term(
        loss=lambda i: losses.kd(i.output.logits, i.target, temperature=i.options["kd_temperature"],
                                 t2_scaling=i.options["kd_t2_scaling"], form=i.options["kd_form"]),
        target="logits",
        options={"kd_temperature": 4.0, "kd_t2_scaling": True, "kd_form": "kl"},
    ),
    # The reference code's KD (T = 1, cross-entropy, no T^2), beside Hinton's above.
    "kd_ref": Term(loss=lambda i: losses.kd_ref(i.output.logits, i.target), target="logits"),
    "fm": Term(
        loss=lambda i: losses.fm(_last(i.output), i.target, regressor=i.modules.fm_regressor),
        target="features",
    ),
    "at": Term(
        loss=lambda i: losses.at(i.student_map, i.target),
        target="at",
        map=lambda output, weight, images, create_graph, at_p: attention.at_map(_last(output), at_p),
        map_options={"at_p": 2.0},
    ),
    "gradcam": Term(
        loss=lambda i: losses.gradcam(i.student_map, i.target, start_dim=_start_dim(i.options), eps=i.options["eps"]),
        target="gradcam",
        options=_CLASS_MAP_OPTIONS,
        map=lambda output, weight, images, create_graph: attention.gradcam_maps(_last(output),
                                                                                classifier_weight=weight),
    ),
    "atplus": _atplus("minmax"),
    # AT+ with a scale-free normalisation (losses.normalise_map): no fixed-spike incentive; beyond the paper.
    "atplus_l2": _atplus("l2"),
    "atplus_sum": _atplus("sum"),
    "atplus_pearson": _atplus("pearson"),
    "sr": Term(
        loss=lambda i: losses.sr(_last(i.output).mean(dim=(-2, -1)), i.target, i.modules.teacher_weight,
                                 i.modules.teacher_bias, regressor=i.modules.sr_regressor),
        target="logits",
    ),
    "fma": _matched("fma", lambda output, weight, images, create_graph: attention.fma_map(
        list(output.features.values()))),
    "mip": _matched("mip", lambda output, weight, images, create_graph: attention.mip_map(
        list(output.features.values()))),
    "saliency": _matched(
        "saliency",
        lambda output, weight, images, create_graph: attention.saliency_map(output.logits, images,
                                                                            create_graph=create_graph),
        input_grad=True,
    ),
})

#: Map terms: those whose loss matches an attention map.
MAP_TERMS = tuple(name for name, term in TERMS.items() if term.map is not None)


def _collect_options(attribute: str) -> dict[str, Any]:
    """Every option the terms declare under ``attribute``, with its default; one default per option."""
    collected: dict[str, Any] = {}
    for name, term in TERMS.items():
        for option, default in getattr(term, attribute).items():
            if collected.setdefault(option, default) != default:
                raise AssertionError(f"term {name!r} declares option {option!r} with another default")
    return collected


#: Options of the Teacher's maps, with defaults: :func:`teacher_targets` reads these.
TEACHER_DEFAULTS = _collect_options("map_options")
TEACHER_OPTIONS = tuple(TEACHER_DEFAULTS)
#: Every Distiller option, with its default.
DEFAULT_OPTIONS = _collect_options("options") | TEACHER_DEFAULTS
#: Allowed values of an option the losses do not check themselves (checked by the Distiller).
CHOICES = {"attention_norm": ("sample", "class")}


def check_terms(terms: Iterable[str]) -> tuple[str, ...]:
    """Return ``terms`` as a tuple; ValueError naming the valid terms if one is unknown."""
    terms = tuple(terms)
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise ValueError(f"unknown distillation term(s) {unknown}; valid terms: {list(TERMS)}")
    return terms


def target_keys(terms: Iterable[str]) -> list[str]:
    """Teacher-target entries the terms read (``fm`` -> ``features``, ``kd``/``kd_ref``/``sr`` -> ``logits``,
    map terms -> their map, ``atplus_*`` -> ``atplus``), in registry order (``logits``, ``features``,
    then maps); ``ce`` reads none."""
    needed = {TERMS[t].target for t in check_terms(terms)}
    order = ["logits", "features", *MAP_TERMS]
    return [key for key in order if key in needed]


def attention_map(
    term: str,
    output: ModelOutput,
    classifier_weight: Tensor,
    images: Tensor,
    *,
    create_graph: bool,
    **options,
) -> Tensor:
    """The map that map term ``term`` matches, from a network's ``output`` on ``images``.

    ``atplus``/``gradcam``: all-class maps of the last block, closed-form Grad-CAM weights (every
    model's head is GAP + linear). ``at``: last block. ``fma``: first and last blocks. ``mip``:
    all blocks. ``saliency``: all-class input gradients (``images`` must require grad).
    ``options``: any of :data:`TEACHER_OPTIONS` (``at_p``, default 2); a map ignores those it does
    not read.
    """
    if term not in MAP_TERMS:
        raise ValueError(f"{term!r} is not a map term; map terms: {list(MAP_TERMS)}")
    unknown = sorted(set(options) - set(TEACHER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown map option(s) {unknown}; valid: {list(TEACHER_OPTIONS)}")
    spec = TERMS[term]
    values = {name: options.get(name, default) for name, default in spec.map_options.items()}
    return spec.map(output, classifier_weight, images, create_graph, **values)
