import json

import numpy as np
import pandas as pd
import pytest

from wsidistill.evaluation.metrics import quadratic_kappa
from wsidistill.report.tables import comparison_frame, comparison_html, comparison_markdown, kappa_plot, method_styles


def result(method, magnification, seed, predicted, truth, slides):
    from wsidistill.evaluation.metrics import summarise

    return {"method": method, "magnification": magnification, "seed": seed, "classes": ["NC", "G3", "G4", "G5"],
            **summarise(np.array(truth), np.array(predicted), 4),
            "per_patch": {"truth": truth, "predicted": predicted, "slide": slides}}


def test_table_marks_best_and_significance_and_reports_mean_std():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400).tolist()
    slides = [f"s{i % 8}" for i in range(400)]
    results = []
    for seed in (0, 1):
        noisy = [t if rng.random() < 0.3 else int(rng.integers(0, 4)) for t in truth]
        good = [t if rng.random() < 0.95 else int(rng.integers(0, 4)) for t in truth]
        results += [result("teacher", 40, seed, truth, truth, slides), result("ce", 10, seed, noisy, truth, slides),
                    result("atplus", 10, seed, good, truth, slides)]
    frame = comparison_frame(results, n_boot=200)
    atplus = frame[frame.method == "atplus"].iloc[0]
    assert atplus.seeds == 2 and atplus.significant_vs_baseline and atplus.kappa_delta_vs_baseline > 0
    kappas = [r["quadratic_kappa"] for r in results if r["method"] == "atplus"]
    assert np.isclose(atplus.kappa_mean, np.mean(kappas)) and np.isclose(atplus.kappa_std, np.std(kappas, ddof=1))
    markdown = comparison_markdown(frame)
    atplus_line = next(line for line in markdown.splitlines() if line.startswith("| atplus"))
    assert "**" in atplus_line and "↑" in atplus_line
    page = comparison_html(frame)
    assert "<b>" in page and "<td>teacher</td>" in page and "↑" in page
    assert pd.isna(frame[frame.method == "ce"].iloc[0].get("significant_vs_baseline", np.nan))


def test_pooled_kappa_interval_resamples_slides_of_all_seeds():
    truth = [0, 1, 2, 3] * 10
    slides = [f"s{i // 8}" for i in range(40)]
    perfect = [result("ce", 10, seed, truth, truth, slides) for seed in (0, 1)]
    row = comparison_frame(perfect, n_boot=50).iloc[0]
    assert row.kappa_pooled == row.kappa_pooled_ci_low == row.kappa_pooled_ci_high == 1.0

    rng = np.random.default_rng(1)
    noisy = [result("ce", 10, seed, [int(rng.integers(0, 4)) if i < 8 * (seed + 2) else t for i, t in enumerate(truth)],
                    truth, slides) for seed in (0, 1)]
    row = comparison_frame(noisy, n_boot=300).iloc[0]
    pooled = np.concatenate([r["per_patch"]["predicted"] for r in noisy])
    assert np.isclose(row.kappa_pooled, quadratic_kappa(np.array(truth * 2), pooled, 4))
    assert row.kappa_pooled_ci_low < row.kappa_pooled < row.kappa_pooled_ci_high


def test_baseline_on_other_test_patches_or_a_model_twice_is_an_error():
    truth = [0, 1, 2, 3] * 10
    slides = [f"s{i // 8}" for i in range(40)]
    other_slides = [f"t{i // 8}" for i in range(40)]
    ce = result("ce", 10, 0, truth, truth, other_slides)
    atplus = result("atplus", 10, 0, truth, truth, slides)
    # a paired difference over different patches would be meaningless: the table refuses it, naming both files
    with pytest.raises(ValueError, match=r"tables: atplus and ce \(a.json and c.json\) were evaluated on different"):
        comparison_frame([{**ce, "source": "c.json"}, {**atplus, "source": "a.json"}], n_boot=20)
    # one model and seed twice would count one run twice in its mean and std
    with pytest.raises(ValueError, match="tables: two metrics for atplus at 10x, seed 0"):
        comparison_frame([atplus, atplus], n_boot=20)


@pytest.mark.parametrize("verb", ["tables", "claims"])
def test_unreadable_or_incomplete_metrics_are_one_line_errors(tmp_path, capsys, verb):
    from wsidistill.cli import main

    good = tmp_path / "good.json"
    good.write_text(json.dumps(result("ce", 10, 0, [0, 1], [0, 1], ["s0", "s1"])))
    bad = {"not_json.json": "not json", "partial.json": json.dumps({"method": "ce"}), "list.json": "[1, 2]",
           "missing.json": None}
    for name, text in bad.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        outputs = {"--csv": tmp_path / "t.csv", "--md": tmp_path / "t.md", "--plot": tmp_path / "t.png"}
        if verb == "tables":
            outputs["--html"] = tmp_path / "t.html"
        argv = [verb, "--metrics", str(good), str(path)] + [str(x) for pair in outputs.items() for x in pair]
        assert main(argv) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"wsidistill {verb}: error: {path}:") and "\n" not in error
        assert "rerun `wsidistill evaluate`" in error
        if name == "partial.json":
            assert "without magnification, seed, classes, per_patch" in error
        assert not any(p.exists() for p in outputs.values())  # nothing written


def test_every_method_of_a_twelve_method_study_gets_its_own_line_style():
    """issue 19's degraded cohort has 12 Student methods: tab10 alone gave two pairs the same colour and marker."""
    methods = ["at", "atplus", "atplusl2", "ce", "fm", "fma", "gradcam", "kd", "kdref", "mip", "saliency", "sr"]
    styles = method_styles(methods)
    assert len({style["color"] for style in styles.values()}) == 12
    assert len({style["color"] for style in method_styles(methods[:4]).values()}) == 4
    # no dark-and-pale pair of one tab20 hue side by side: the first ten are tab20's dark colours
    import matplotlib

    dark = matplotlib.colormaps["tab20"].colors[0::2]
    assert [styles[m]["color"] for m in methods[:10]] == list(dark)
    many = method_styles([f"m{i}" for i in range(140)])
    assert len({(style["color"], style["marker"]) for style in many.values()}) == 140


def test_kappa_plot_puts_a_long_legend_beside_the_axes(tmp_path):
    import matplotlib.image

    rows = [{"method": "teacher", "magnification": 40.0, "kappa_mean": 0.9, "kappa_std": 0.01}]
    rows += [{"method": f"m{i}", "magnification": mag, "kappa_mean": 0.5 + i / 100, "kappa_std": 0.02}
             for i in range(12) for mag in (20.0, 10.0, 5.0)]
    kappa_plot(pd.DataFrame(rows), tmp_path / "kappa.png")
    assert matplotlib.image.imread(tmp_path / "kappa.png").shape[:2] == (456, 780)  # 6.5 x 3.8 in at 120 dpi
    kappa_plot(pd.DataFrame(rows[:7]), tmp_path / "few.png")  # the Teacher and two methods: legend inside
    assert matplotlib.image.imread(tmp_path / "few.png").shape[:2] == (456, 660)
