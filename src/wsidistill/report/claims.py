"""The paper's claims, each tested on the test slides with a verdict.

del Amor et al., "Attention to detail: inter-resolution knowledge distillation", EUSIPCO 2023, claim that
AT+ (CE + 0.1 FM + 10 AT+) Students beat the CE-only, KD and FM Students at every magnification, that the
AT+ term adds to FM alone, and that a 5x AT+ Student reaches the 40x Teacher's accuracy. This module turns a
run's metrics JSONs (``wsidistill evaluate``) into one row per claim and magnification (issue 19):

* **superiority**, ``method`` against a ``comparator`` Student at the same magnification: the quadratic kappa
  difference ``kappa(method) - kappa(comparator)`` with the seeds' predictions pooled (seed ``s`` paired with
  seed ``s``), its 95% paired bootstrap interval over test slides and a two-sided p-value
  (:meth:`~wsidistill.evaluation.metrics.SlideBootstrap.compare`). Verdict: ``reproduced`` when the interval
  lies above 0, ``not reproduced`` when it lies below 0 (the method is significantly worse), else
  ``not decidable``.
* **non-inferiority**, a Student against the Teacher (seed ``s`` Student against the seed ``s`` Teacher it
  was distilled from, on the same aligned test patches): ``reproduced`` when the interval's lower end is above
  ``-margin`` (the Student loses less than ``margin`` kappa), ``not reproduced`` when its upper end is below
  ``-margin`` (it loses more), else ``not decidable``. Its p-value is one-sided, of the null "the Student
  loses ``margin`` or more". The margin is fixed before a run (default 0.05 kappa); choosing it after seeing
  the test slides would tune on test.

Every seed is scored on the same test patches, and a bootstrap replicate resamples a slide with all seeds'
patches on it: the intervals measure slide-to-slide variation of the seeds' pooled predictions, not the
seed-to-seed spread (the comparison table's mean ± std gives that). Each row also gives both models' pooled
kappas with their 95% intervals over test slides, and ``p_adjusted``: the p-values adjusted for the number
of claims tested in one run (Benjamini-Hochberg false discovery rate,
:func:`scipy.stats.false_discovery_control`). The verdicts use the unadjusted 95% intervals; a verdict whose
adjusted p is above 0.05 is one of several dozen tests and deserves less weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from ..config import TEACHER
from ..errors import MetricsError
from ..evaluation.metrics import SlideBootstrap, quadratic_kappa
from ..io import save_figure, write_text
from .tables import load_metrics, paired_predictions, runs_by_model

#: The paper's method and the scale-free variant of issue 19, each tested against every comparator present
#: (method names as config/benchmark.yaml defines them; ``wsidistill claims --methods/--against`` for others).
CLAIM_METHODS = ("atplus", "atplusl2")
#: Comparators of the superiority claims: CE-only, Hinton KD, the reference code's KD and FM alone.
COMPARATORS = ("ce", "kd", "kdref", "fm")
#: Non-inferiority margin against the Teacher, in quadratic kappa (fixed before any run).
MARGIN = 0.05
VERDICTS = ("reproduced", "not reproduced", "not decidable")
#: Columns of :func:`claims_frame` (an empty frame keeps them, so claims.csv always has its header).
COLUMNS = ["claim", "method", "other", "magnification", "seeds", "test_slides", "kappa", "kappa_low", "kappa_high",
           "kappa_other", "kappa_other_low", "kappa_other_high", "delta", "delta_low", "delta_high", "p_value",
           "p_adjusted", "verdict"]


def paired_claim(ours: dict[int, dict], theirs: dict[int, dict], n_boot: int = 1000,
                 margin: float | None = None) -> dict | None:
    """Pooled kappas, their 95% intervals over test slides and the paired difference ``ours - theirs``.

    ``ours``/``theirs``: seed -> metrics dict, paired by seed (:func:`~wsidistill.report.tables.paired_predictions`).
    ``p_value``: two-sided, of a zero difference; with ``margin``, one-sided, of the null "ours is ``margin`` or more
    below theirs" (non-inferiority). None when no seed is shared or fewer than two test slides hold labelled
    patches. MetricsError (a ValueError) when paired runs disagree on their patches' labels or slides (different
    test sets).
    """
    paired = paired_predictions(ours, theirs, "claims")
    if paired is None:
        return None
    truth, slides, num_classes = paired["truth"], paired["slides"], paired["num_classes"]
    pred_a, pred_b = paired["ours"], paired["theirs"]
    boot = SlideBootstrap(truth, slides, quadratic_kappa, num_classes, n_boot=n_boot, seed=0)
    test = boot.compare(pred_a, pred_b, margin=margin)
    (a_low, a_high), (b_low, b_high) = boot.interval(pred_a), boot.interval(pred_b)
    return {"seeds": len(paired["seeds"]), "test_slides": int(len(np.unique(slides))),
            "kappa": quadratic_kappa(truth, pred_a, num_classes), "kappa_low": a_low, "kappa_high": a_high,
            "kappa_other": quadratic_kappa(truth, pred_b, num_classes), "kappa_other_low": b_low,
            "kappa_other_high": b_high,
            "delta": test["delta"], "delta_low": test["low"], "delta_high": test["high"],
            "p_value": test["p_value"] if margin is None else test["p_noninferior"]}


def superiority_verdict(low: float, high: float) -> str:
    """``reproduced`` when the difference's interval lies above 0, ``not reproduced`` below, else undecided."""
    return "reproduced" if low > 0 else "not reproduced" if high < 0 else "not decidable"


def non_inferiority_verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """``reproduced`` when the Student loses less than ``margin`` kappa (interval's low end above ``-margin``),
    ``not reproduced`` when it surely loses more (high end below ``-margin``), else undecided."""
    return "reproduced" if low > -margin else "not reproduced" if high < -margin else "not decidable"


def claims_frame(results: list[dict], methods=CLAIM_METHODS, comparators=COMPARATORS, margin: float = MARGIN,
                 n_boot: int = 1000) -> pd.DataFrame:
    """One row per claim, method, comparator and magnification present in ``results`` (metrics dicts).

    Columns (:data:`COLUMNS`): ``claim`` (``beats <comparator>`` or ``matches the Teacher``), ``method``,
    ``other``, ``magnification``, ``seeds`` (paired), ``test_slides``, the pooled kappas with their intervals
    (``kappa*`` the method's, ``kappa_other*`` the other's), ``delta`` with ``delta_low``/``delta_high``,
    ``p_value`` (:func:`paired_claim`), ``p_adjusted`` (Benjamini-Hochberg over the rows) and ``verdict``.
    A pair that shares no seed or has fewer than two labelled test slides has no row. MetricsError: two metrics
    for one model and seed, Teachers at two magnifications, or a pair evaluated on different test patches.
    """
    models = runs_by_model(results, "claims")
    teachers = [(m, mag) for m, mag in models if m == TEACHER]
    if len(teachers) > 1:
        raise MetricsError(f"claims: Teachers at {', '.join(f'{mag:g}x' for _, mag in teachers)}; pass one "
                           "Teacher's metrics")
    teacher = teachers[0] if teachers else None
    rows = []
    for method in methods:
        for magnification in sorted({mag for m, mag in models if m == method}, reverse=True):
            ours = models[(method, magnification)]
            for other in comparators:
                if other == method or (other, magnification) not in models:
                    continue
                claim = paired_claim(ours, models[(other, magnification)], n_boot)
                if claim:
                    rows.append({"claim": f"beats {other}", "method": method, "other": other,
                                 "magnification": magnification, **claim,
                                 "verdict": superiority_verdict(claim["delta_low"], claim["delta_high"])})
            if teacher:
                claim = paired_claim(ours, models[teacher], n_boot, margin=margin)
                if claim:
                    rows.append({"claim": "matches the Teacher", "method": method, "other": TEACHER,
                                 "magnification": magnification, **claim,
                                 "verdict": non_inferiority_verdict(claim["delta_low"], claim["delta_high"], margin)})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if len(frame):
        frame["p_adjusted"] = false_discovery_control(frame.p_value.to_numpy(float), method="bh")
    return frame


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}" if low == high else f"{low}-{high}"


def claims_markdown(frame: pd.DataFrame, margin: float = MARGIN) -> str:
    """The claims as a Markdown table with a legend."""
    if frame.empty:
        return "# The paper's claims\n\nNo claim can be tested: the run has no AT+ Student beside a comparator.\n"
    table = pd.DataFrame({
        "claim": [f"{r.method} {r.magnification:g}x {r.claim}" for r in frame.itertuples()],
        "kappa [95% CI]": [_interval(r.kappa, r.kappa_low, r.kappa_high) for r in frame.itertuples()],
        "other's kappa [95% CI]": [_interval(r.kappa_other, r.kappa_other_low, r.kappa_other_high)
                                   for r in frame.itertuples()],
        "difference [95% CI]": [f"{r.delta:+.3f} [{r.delta_low:+.3f}, {r.delta_high:+.3f}]"
                                for r in frame.itertuples()],
        "p": [f"{p:.3f}" for p in frame.p_value],
        "p (BH)": [f"{p:.3f}" for p in frame.p_adjusted],
        "verdict": frame.verdict,
    }).to_markdown(index=False, stralign="left", disable_numparse=True)
    seeds, slides = _span(frame.seeds), _span(frame.test_slides)
    return "\n".join([
        "# The paper's claims", "", table, "",
        f"Quadratic kappa of {seeds} seeds' predictions pooled; intervals: 95% percentile bootstrap over "
        f"{slides} test slides, the difference's paired (both models on the same resampled slides, seed s with "
        "seed s). `beats X`: reproduced when the difference's interval lies above 0, not reproduced when below. "
        f"`matches the Teacher`: reproduced when the Student loses less than {margin:g} kappa (the interval's low "
        f"end above -{margin:g}), not reproduced when its high end is below -{margin:g}. Otherwise not decidable "
        "on these test slides. p: paired bootstrap, two-sided for `beats X`, one-sided for `matches the Teacher` "
        "(null: it loses the margin or more); p (BH): adjusted for the claims of this table (Benjamini-Hochberg). "
        "The intervals measure slide-to-slide variation, not seed-to-seed (comparison.md's ± gives that).", ""])


def claims_plot(frame: pd.DataFrame, path: str | Path, margin: float = MARGIN) -> None:
    """Forest plot: each claim's kappa difference with its 95% interval, coloured by verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"reproduced": "tab:green", "not reproduced": "tab:red", "not decidable": "tab:grey"}
    labels = [f"{r.method} {r.magnification:g}x {r.claim}" for r in frame.itertuples()]
    figure, axis = plt.subplots(figsize=(7.5, 1.2 + 0.28 * max(1, len(frame))))
    for y, row in enumerate(frame.itertuples()):
        # a percentile interval need not contain the full-sample difference: clip the bars at the point
        below, above = max(row.delta - row.delta_low, 0.0), max(row.delta_high - row.delta, 0.0)
        axis.errorbar(row.delta, y, xerr=[[below], [above]], fmt="o",
                      color=colours[row.verdict], capsize=2, markersize=4)
    axis.axvline(0, color="black", linewidth=0.8)
    if len(frame) and (frame.claim == "matches the Teacher").any():
        axis.axvline(-margin, color="black", linewidth=0.8, linestyle=":")
    axis.set_yticks(range(len(frame)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("quadratic kappa difference (method - other)\n95% interval over test slides", fontsize=8)
    for verdict, colour in colours.items():
        axis.plot([], [], "o", color=colour, label=verdict)
    axis.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def write_claims(metric_paths: list[str | Path], out_csv, out_md, out_png, methods=None, comparators=None,
                 margin: float | None = None, n_boot: int = 1000) -> pd.DataFrame:
    """:func:`claims_frame` of the metrics JSONs, written as CSV, Markdown and a forest plot (atomically).
    ``None``: :data:`CLAIM_METHODS`, :data:`COMPARATORS`, :data:`MARGIN`."""
    methods, comparators = methods or CLAIM_METHODS, comparators or COMPARATORS
    margin = MARGIN if margin is None else margin
    frame = claims_frame(load_metrics(metric_paths), methods, comparators, margin, n_boot)
    write_text(out_csv, frame.to_csv(index=False))
    write_text(out_md, claims_markdown(frame, margin))
    claims_plot(frame, out_png, margin)
    for row in frame.itertuples():
        print(f"{row.method} {row.magnification:g}x {row.claim}: {row.delta:+.3f} "
              f"[{row.delta_low:+.3f}, {row.delta_high:+.3f}] {row.verdict}", flush=True)
    return frame
