import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from wsidistill.cli import main
from wsidistill.report.claims import (
    claims_frame,
    non_inferiority_verdict,
    paired_claim,
    superiority_verdict,
    write_claims,
)
from wsidistill.report.tables import load_metrics

TRUTH = [0, 1, 2, 3] * 50
SLIDES = [f"s{i // 20}" for i in range(200)]  # 10 test slides


def result(method, magnification, seed, predicted, truth=TRUTH, slides=SLIDES):
    return {"method": method, "magnification": magnification, "seed": seed, "classes": ["NC", "G3", "G4", "G5"],
            "per_patch": {"truth": list(truth), "predicted": list(predicted), "slide": list(slides)}}


def corrupt(share, seed):
    """TRUTH with ``share`` of the patches (spread over every slide) moved to a random other class."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(TRUTH)) < share
    return [int((t + rng.integers(1, 4)) % 4) if w else t for t, w in zip(TRUTH, wrong)]


def test_verdicts_follow_their_definitions():
    assert superiority_verdict(0.01, 0.05) == "reproduced"
    assert superiority_verdict(-0.05, -0.01) == "not reproduced"
    assert superiority_verdict(-0.02, 0.03) == "not decidable"
    assert superiority_verdict(0.0, 0.03) == "not decidable"  # an interval touching 0 does not exclude it
    # non-inferiority with a 0.05 margin: the Student may lose up to 0.05 kappa
    assert non_inferiority_verdict(-0.04, 0.01, 0.05) == "reproduced"
    assert non_inferiority_verdict(-0.04, -0.01, 0.05) == "reproduced"  # surely worse, but within the margin
    assert non_inferiority_verdict(-0.20, -0.06, 0.05) == "not reproduced"
    assert non_inferiority_verdict(-0.08, 0.00, 0.05) == "not decidable"
    assert non_inferiority_verdict(-0.05, 0.00, 0.05) == "not decidable"  # a loss of exactly the margin may be


def test_difference_is_the_pooled_kappa_difference_of_seed_paired_runs():
    ours = {s: result("atplus", 5, s, corrupt(0.1, s)) for s in (0, 1, 2)}
    theirs = {s: result("ce", 5, s, corrupt(0.4, 10 + s)) for s in (0, 1)}  # seed 2 has no partner
    claim = paired_claim(ours, theirs, n_boot=200)
    pooled = lambda runs: np.concatenate([r["per_patch"]["predicted"] for r in runs])  # noqa: E731
    truth = np.array(TRUTH * 2)
    kappa_ours = cohen_kappa_score(truth, pooled([ours[0], ours[1]]), weights="quadratic")
    kappa_theirs = cohen_kappa_score(truth, pooled([theirs[0], theirs[1]]), weights="quadratic")
    assert claim["seeds"] == 2 and claim["test_slides"] == 10
    assert np.isclose(claim["kappa"], kappa_ours) and np.isclose(claim["kappa_other"], kappa_theirs)
    assert np.isclose(claim["delta"], kappa_ours - kappa_theirs)
    assert claim["kappa_low"] <= claim["kappa"] <= claim["kappa_high"]
    assert 0 < claim["delta_low"] <= claim["delta"] <= claim["delta_high"]


def test_claims_frame_gives_each_claim_its_verdict():
    results = []
    for seed in (0, 1):
        results += [result("teacher", 40, seed, corrupt(0.05, seed)),
                    result("ce", 5, seed, corrupt(0.6, 20 + seed)),
                    result("fm", 5, seed, corrupt(0.3, 30 + seed)),       # as good as AT+
                    result("atplus", 5, seed, corrupt(0.3, 40 + seed)),
                    result("atplus", 10, seed, corrupt(0.05, 50 + seed)),  # no comparator at 10x
                    result("kd", 20, seed, TRUTH)]                          # no AT+ at 20x
    frame = claims_frame(results, n_boot=300).set_index(["method", "magnification", "claim"])
    assert frame.loc[("atplus", 5.0, "beats ce"), "verdict"] == "reproduced"
    assert frame.loc[("atplus", 5.0, "beats fm"), "verdict"] == "not decidable"
    assert frame.loc[("atplus", 5.0, "matches the Teacher"), "verdict"] == "not reproduced"
    assert frame.loc[("atplus", 10.0, "matches the Teacher"), "verdict"] == "reproduced"
    assert set(frame.index) == {("atplus", 5.0, "beats ce"), ("atplus", 5.0, "beats fm"),
                                ("atplus", 5.0, "matches the Teacher"), ("atplus", 10.0, "matches the Teacher")}
    # non-inferiority's p is one-sided, of "the Student loses the margin or more": near 1 for the 5x Student
    # far below the Teacher, small for the 10x one that matches it (its interval's low end is above -0.05)
    assert frame.loc[("atplus", 5.0, "matches the Teacher"), "p_value"] > 0.9
    assert frame.loc[("atplus", 10.0, "matches the Teacher"), "p_value"] < 0.05
    # Benjamini-Hochberg by its definition: p_(i) * m / i, made monotone from the largest p down
    p = frame.p_value.to_numpy()
    order = np.argsort(p)
    by_rank = p[order] * len(p) / np.arange(1, len(p) + 1)
    expected = np.empty_like(p)
    expected[order] = np.minimum(1, np.minimum.accumulate(by_rank[::-1])[::-1])
    assert np.allclose(frame.p_adjusted.to_numpy(), expected)


def test_ambiguous_or_mismatched_metrics_are_errors():
    ours = {0: result("atplus", 5, 0, TRUTH)}
    theirs = {0: result("ce", 5, 0, TRUTH, slides=[f"t{i // 20}" for i in range(200)])}
    with pytest.raises(ValueError, match="different test patches"):
        paired_claim(ours, theirs)
    with pytest.raises(ValueError, match="two metrics for atplus at 5x, seed 0"):
        claims_frame([result("atplus", 5, 0, TRUTH), result("atplus", 5, 0, TRUTH)])
    with pytest.raises(ValueError, match="Teachers at 40x, 20x"):
        claims_frame([result("teacher", 40, 0, TRUTH), result("teacher", 20, 0, TRUTH)])
    # a pair on a single test slide cannot be bootstrapped over slides: no row
    one_slide = ["s0"] * 200
    assert paired_claim({0: result("atplus", 5, 0, TRUTH, slides=one_slide)},
                        {0: result("ce", 5, 0, TRUTH, slides=one_slide)}) is None


def test_claims_verb_writes_table_and_forest_plot(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        for method, magnification, share in (("teacher", 40, 0.05), ("ce", 5, 0.5), ("atplus", 5, 0.1)):
            path = tmp_path / f"{method}_{magnification}_{seed}.json"
            path.write_text(json.dumps(result(method, magnification, seed, corrupt(share, seed + 7 * len(paths)))))
            paths.append(str(path))
    out = tmp_path / "tables"
    main(["claims", "--metrics", *paths, "--csv", str(out / "claims.csv"), "--md", str(out / "claims.md"),
          "--plot", str(out / "claims.png"), "--margin", "0.2"])
    frame = pd.read_csv(out / "claims.csv")
    assert list(frame.claim) == ["beats ce", "matches the Teacher"]
    assert frame.verdict.tolist() == ["reproduced", "reproduced"]  # within the 0.2 margin given on the command line
    markdown = (out / "claims.md").read_text()
    assert "atplus 5x beats ce" in markdown and "less than 0.2 kappa" in markdown
    assert (out / "claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "atplus 5x beats ce" in capsys.readouterr().out
    assert write_claims(paths[:1], out / "a.csv", out / "a.md", out / "a.png").empty  # the Teacher alone: no claim
    assert "No claim can be tested" in (out / "a.md").read_text()
    assert load_metrics(paths[:1])[0]["method"] == "teacher"
    # bad input: one line naming the model and the fix, exit status 1, no traceback
    assert main(["claims", "--metrics", paths[0], paths[0], "--csv", str(out / "b.csv"), "--md", str(out / "b.md"),
                 "--plot", str(out / "b.png")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("wsidistill claims: error:") and "pass each model's metrics once" in error
    assert f"({paths[0]} and {paths[0]})" in error  # the files
    assert "\n" not in error and not (out / "b.csv").exists()
