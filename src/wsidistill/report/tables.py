"""Comparison tables: methods x magnifications, mean ± std over seeds.

The Teacher row sits at its own magnification.  Each Student cell is marked
when a paired bootstrap over test slides (seeds pooled, same resampled
slides for both models) finds it significantly different from the CE-only
Student at the same magnification.  A cell whose every run had no labelled test
patch has no value ("n/a").  The evaluations' warnings (a class absent from the
training or test split, test slides left out for want of labels; issue 17) are
listed under the tables, each with the models it concerns.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import TEACHER, config_default
from ..errors import MetricsError
from ..evaluation.metrics import SlideBootstrap, balanced_accuracy, format_mean_std, mean_std, quadratic_kappa
from ..io import save_figure, write_text

#: The method every other is tested against by default: the schema's `baseline_method`.
BASELINE = config_default("baseline_method")
METRICS = {"kappa": ("quadratic_kappa", quadratic_kappa), "balanced_accuracy": ("balanced_accuracy", balanced_accuracy)}


#: Keys every metrics JSON of ``wsidistill evaluate`` holds that the tables and the claims read.
METRICS_KEYS = ("method", "magnification", "seed", "classes", "per_patch")


def load_metrics(paths: list[str | Path]) -> list[dict]:
    """The metrics JSONs ``wsidistill evaluate`` wrote, in order, each with its path under ``"source"`` (for error
    messages). MetricsError naming the file when one is missing, is not JSON, or lacks a key of
    :data:`METRICS_KEYS` (not an evaluate output, or one from an older version)."""
    results = []
    for path in map(Path, paths):
        fix = f"rerun `wsidistill evaluate` for it (snakemake: delete {path} and rerun) or leave it out"
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetricsError(f"{path}: not a readable metrics JSON ({err}); {fix}") from err
        missing = [key for key in METRICS_KEYS if not isinstance(result, dict) or key not in result]
        if missing:
            raise MetricsError(f"{path}: a metrics JSON without {', '.join(missing)}; {fix}")
        results.append({**result, "source": str(path)})
    return results


def comparison_frame(results: list[dict], baseline: str | None = BASELINE, n_boot: int = 1000) -> pd.DataFrame:
    """Long table: one row per (method, magnification) with mean, std and significance against ``baseline``.

    MetricsError (:func:`runs_by_model`, :func:`paired_predictions`) on two metrics of one model and seed, or a
    Student and its baseline evaluated on different test patches."""
    rows = []
    models = runs_by_model(results, "tables")
    for (method, magnification), by_seed in sorted(models.items(),
                                                   key=lambda kv: (kv[0][0] != TEACHER, kv[0][0], -kv[0][1])):
        runs = [by_seed[seed] for seed in sorted(by_seed)]
        row = {"method": method, "magnification": magnification, "seeds": len(runs)}
        for name, (key, metric) in METRICS.items():
            values = [r[key] for r in runs if r.get(key) is not None]  # None: no labelled test patch
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values) if values else (np.nan, np.nan)
        row.update(_pooled_interval(runs, n_boot))
        reference = models.get((baseline, magnification)) if baseline else None
        if reference and method not in (baseline, TEACHER):
            row.update(_against_baseline(by_seed, reference, n_boot))
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_interval(runs: list[dict], n_boot: int) -> dict:
    """95% bootstrap interval over test slides of the kappa of all seeds' predictions pooled."""
    truth = _pooled(runs, "truth").astype(int)
    if len(truth) == 0:
        return {}
    predicted, slides = _pooled(runs, "predicted").astype(int), _pooled(runs, "slide")
    num_classes = len(runs[0]["classes"])
    low, high = SlideBootstrap(truth, slides, quadratic_kappa, num_classes, n_boot=n_boot, seed=0).interval(predicted)
    return {"kappa_pooled": quadratic_kappa(truth, predicted, num_classes),
            "kappa_pooled_ci_low": low, "kappa_pooled_ci_high": high}


def _against_baseline(ours: dict[int, dict], reference: dict[int, dict], n_boot: int) -> dict:
    """Kappa difference from the baseline Student, seed ``s`` paired with seed ``s``, with its paired bootstrap
    interval over test slides (:func:`paired_predictions`); empty when no seed or fewer than two slides."""
    paired = paired_predictions(ours, reference, "tables")
    if paired is None:
        return {}
    boot = SlideBootstrap(paired["truth"], paired["slides"], quadratic_kappa, paired["num_classes"], n_boot=n_boot,
                          seed=0)
    test = boot.compare(paired["ours"], paired["theirs"])
    return {"kappa_delta_vs_baseline": test["delta"], "kappa_delta_low": test["low"], "kappa_delta_high": test["high"],
            "p_value_vs_baseline": test["p_value"], "significant_vs_baseline": bool(test["significant"])}


def _files(*results: dict) -> str:
    """`` (a.json and b.json)``: the metrics dicts' files (``load_metrics``' ``source``), or "" when not from files."""
    sources = [str(r["source"]) for r in results if "source" in r]
    return f" ({' and '.join(sources)})" if sources else ""


def runs_by_model(results: list[dict], verb: str) -> dict[tuple[str, float], dict[int, dict]]:
    """(method, magnification) -> seed -> metrics dict. MetricsError (prefixed ``verb``) naming both files when one
    model and seed has two metrics: averaging or pairing them would count one run twice."""
    models: dict[tuple[str, float], dict[int, dict]] = {}
    for result in results:
        runs = models.setdefault((result["method"], float(result["magnification"])), {})
        seed = int(result["seed"])
        if seed in runs:
            raise MetricsError(f"{verb}: two metrics for {result['method']} at {float(result['magnification']):g}x, "
                               f"seed {seed}{_files(runs[seed], result)}; pass each model's metrics once")
        runs[seed] = result
    return models


def _pooled(runs: list[dict], key: str) -> np.ndarray:
    return np.concatenate([np.asarray(r["per_patch"][key]) for r in runs])


def paired_predictions(ours: dict[int, dict], theirs: dict[int, dict], verb: str) -> dict | None:
    """Two models' test predictions, seed ``s`` paired with seed ``s`` and pooled over the shared seeds.

    ``ours``/``theirs``: seed -> metrics dict (``per_patch`` with ``truth``, ``predicted``, ``slide``; the patches of
    one seed in the same order in both, as evaluation of aligned stores writes them). Returns ``seeds`` (shared, sorted),
    ``truth``, ``slides``, ``ours``, ``theirs`` (predicted grades, ``(N,)`` over the pooled seeds) and ``num_classes``;
    None when no seed is shared or fewer than two test slides hold labelled patches (a bootstrap over slides needs
    two). MetricsError (prefixed ``verb``) naming both files when the paired runs disagree on their patches' labels or
    slides: they were evaluated on different test sets, and a paired difference would compare different patches.
    """
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    a, b = [ours[s] for s in seeds], [theirs[s] for s in seeds]
    truth, slides = _pooled(a, "truth").astype(int), _pooled(a, "slide")
    if not (np.array_equal(truth, _pooled(b, "truth").astype(int)) and np.array_equal(slides, _pooled(b, "slide"))):
        raise MetricsError(f"{verb}: {a[0]['method']} and {b[0]['method']}{_files(a[0], b[0])} were evaluated on "
                           "different test patches; evaluate both on the same test stores")
    if truth.size == 0 or len(np.unique(slides)) < 2:
        return None
    return {"seeds": seeds, "truth": truth, "slides": slides, "ours": _pooled(a, "predicted").astype(int),
            "theirs": _pooled(b, "predicted").astype(int), "num_classes": len(a[0]["classes"])}


def comparison_cells(frame: pd.DataFrame, name: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one pivot (methods x magnifications) for metric ``name``, best Student in bold."""
    magnifications = sorted(frame.magnification.unique(), reverse=True)
    students = frame[frame.method != TEACHER].dropna(subset=[f"{name}_mean"])
    best = students.loc[students.groupby("magnification")[f"{name}_mean"].idxmax()] if len(students) else students
    best_keys = set(zip(best.method, best.magnification))
    rows = []
    for method in frame.method.unique():
        cells = [method]
        for magnification in magnifications:
            match = frame[(frame.method == method) & (frame.magnification == magnification)]
            if match.empty:
                cells.append("")
                continue
            row = match.iloc[0]
            if pd.isna(row[f"{name}_mean"]):
                cells.append("n/a")
                continue
            text = format_mean_std(row[f"{name}_mean"], row[f"{name}_std"])
            if (method, magnification) in best_keys and method != TEACHER:
                text = f"**{text}**"
            significant = row.get("significant_vs_baseline")
            if name == "kappa" and pd.notna(significant) and bool(significant):
                text += " ↑" if row["kappa_delta_vs_baseline"] > 0 else " ↓"
            cells.append(text)
        rows.append(cells)
    return ["method", *(f"{m:g}x" for m in magnifications)], rows


TITLES = {"kappa": "Quadratic kappa", "balanced_accuracy": "Balanced accuracy"}


def _legend(frame: pd.DataFrame, baseline: str) -> str:
    seeds = ", ".join(map(str, sorted(frame.seeds.unique())))
    return (f"Seeds per cell: {seeds}. Bold: best Student per magnification. ↑/↓: kappa significantly "
            f"above/below the `{baseline}` Student at that magnification (paired bootstrap over test slides, "
            "95% CI of the difference excludes 0). comparison.csv adds each cell's kappa over all seeds' "
            "predictions pooled, with its 95% bootstrap interval over test slides (`kappa_pooled_ci_low/high`).")


def evaluation_warnings(results: list[dict]) -> list[str]:
    """Each distinct warning of the evaluations (metrics JSON ``warnings``), once, with the models it concerns
    ("every model" when all)."""
    models: dict[str, list[str]] = {}
    for result in results:
        for line in result.get("warnings", []):
            models.setdefault(line, []).append(f"{result['method']} {float(result['magnification']):g}x "
                                               f"seed {result['seed']}")
    return [f"{line} ({'every model' if len(names) == len(results) else ', '.join(names)})"
            for line, names in models.items()]


def comparison_markdown(frame: pd.DataFrame, baseline: str = BASELINE, warnings: list[str] = ()) -> str:
    """Two pivot tables (kappa, balanced accuracy) with the best Student per column in bold, then ``warnings``
    (:func:`evaluation_warnings`) as a list."""
    lines = []
    for name, title in TITLES.items():
        header, rows = comparison_cells(frame, name)
        table = pd.DataFrame(rows, columns=header).to_markdown(index=False, stralign="left", disable_numparse=True)
        lines += [f"### {title} (mean ± std over seeds)", "", table, ""]
    lines += [_legend(frame, baseline), ""]
    if warnings:
        lines += ["### Warnings", "", *(f"- {line}" for line in warnings), ""]
    return "\n".join(lines)


def comparison_html(frame: pd.DataFrame, baseline: str = BASELINE, warnings: list[str] = ()) -> str:
    """The same tables as a standalone page: Snakemake's report displays HTML, not CSV or Markdown."""
    def cell(text: str, tag: str = "td") -> str:
        text = html.escape(text)
        if text.startswith("**"):
            end = text.index("**", 2)
            text = f"<b>{text[2:end]}</b>{text[end + 2:]}"
        return f"<{tag}>{text}</{tag}>"

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Comparison</title><style>"
             "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child{text-align:left}"
             "</style></head><body>"]
    for name, title in TITLES.items():
        header, rows = comparison_cells(frame, name)
        parts.append(f"<h3>{title} (mean ± std over seeds)</h3><table><tr>"
                     + "".join(cell(h, "th") for h in header) + "</tr>")
        parts += ["<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append(f"<p>{html.escape(_legend(frame, baseline))}</p>")
    if warnings:
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in warnings) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


#: Markers cycled beside the colours: with tab20's 20 colours and these 7 markers, no two of up to 140 methods
#: share both.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """Matplotlib keyword arguments (``color``, ``marker``) per method, in the order given.

    Colours from ``tab10`` up to 10 methods; beyond, ``tab20``'s ten dark colours first, then their pale
    partners, so that neighbours in the legend are not a dark and a pale shade of one hue. The marker
    changes with each method too, so that no two of up to 140 methods look alike (and lines stay apart in
    grey print).
    """
    import matplotlib

    methods = list(dict.fromkeys(methods))
    if len(methods) <= 10:
        colours = matplotlib.colormaps["tab10"].colors
    else:
        pairs = matplotlib.colormaps["tab20"].colors  # dark, pale, dark, pale, ...
        colours = pairs[0::2] + pairs[1::2]
    return {method: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)]}
            for i, method in enumerate(methods)}


def kappa_plot(frame: pd.DataFrame, path: str | Path) -> None:
    """Test kappa (mean ± std over seeds) against magnification, one line per method, the Teacher as a star.

    Each method's points are shifted by at most a tenth of an octave either way so that error bars at one
    magnification do not hide each other (the axis labels give the true magnifications). More than 6 methods
    put the legend beside the axes, in a wider figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = frame[frame.method != TEACHER]
    methods = sorted(students.method.unique())
    styles = method_styles(methods)
    step = min(0.02, 0.2 / max(len(methods) - 1, 1))  # octaves between neighbours: at most 0.1 each side
    figure, axis = plt.subplots(figsize=(6.5 if len(methods) > 6 else 5.5, 3.8))
    for i, method in enumerate(methods):
        rows = students[students.method == method].sort_values("magnification")
        dodge = 2.0 ** (step * (i - (len(methods) - 1) / 2))
        axis.errorbar(rows.magnification * dodge, rows.kappa_mean, yerr=rows.kappa_std, capsize=3, label=method,
                      markersize=5, **styles[method])
    teacher = frame[frame.method == TEACHER]
    for _, row in teacher.iterrows():
        axis.errorbar([row.magnification], [row.kappa_mean], yerr=[row.kappa_std], marker="*", markersize=12,
                      color="black", capsize=3, label=f"Teacher {row.magnification:g}x")
        axis.axhline(row.kappa_mean, color="black", linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    ticks = sorted(frame.magnification.unique())
    axis.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    axis.set(xlabel="magnification", ylabel="test quadratic kappa (mean ± std)")
    if len(methods) > 6:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def write_comparison(metric_paths: list[str | Path], out_csv, out_md, out_html, out_png,
                     baseline: str = BASELINE) -> pd.DataFrame:
    results = load_metrics(metric_paths)
    frame = comparison_frame(results, baseline=baseline)
    notes = evaluation_warnings(results)
    for line in notes:
        print(f"warning: {line}", flush=True)
    write_text(out_csv, frame.to_csv(index=False))
    write_text(out_md, "# Comparison\n\n" + comparison_markdown(frame, baseline, notes))
    write_text(out_html, comparison_html(frame, baseline, notes))
    kappa_plot(frame, out_png)
    return frame
