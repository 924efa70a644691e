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
    # non-inferiority with a 0.05 margin: the Student may lose up to 0.05 kappa
    assert non_inferiority_verdict(-0.04, 0.01, 0.05) == "reproduced"
    assert non_inferiority_verdict(-0.04, -0.01, 0.05) == "reproduced"  # surely worse, but within the margin
    assert non_inferiority_verdict(-0.20, -0.06, 0.05) == "not reproduced"
    assert non_inferiority_verdict(-0.08, 0.00, 0.05) == "not decidable"


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
                    result("ce", 5, seed, corrupt(0.5, 20 + seed)),
                    result("fm", 5, seed, corrupt(0.1, 30 + seed)),       # as good as AT+
                    result("atplus", 5, seed, corrupt(0.1, 40 + seed)),
                    result("atplus", 10, seed, corrupt(0.05, 50 + seed)),  # no comparator at 10x
                    result("kd", 20, seed, TRUTH)]                          # no AT+ at 20x
    frame = claims_frame(results, n_boot=300).set_index(["method", "magnification", "claim"])
    assert frame.loc[("atplus", 5.0, "beats ce"), "verdict"] == "reproduced"
    assert frame.loc[("atplus", 5.0, "beats fm"), "verdict"] == "not decidable"
    assert frame.loc[("atplus", 5.0, "matches the Teacher"), "verdict"] in ("not decidable", "not reproduced")
    assert frame.loc[("atplus", 10.0, "matches the Teacher"), "verdict"] == "reproduced"
    assert set(frame.index) == {("atplus", 5.0, "beats ce"), ("atplus", 5.0, "beats fm"),
                                ("atplus", 5.0, "matches the Teacher"), ("atplus", 10.0, "matches the Teacher")}
    # the 5x Student that loses a tenth of its patches is clearly below a Teacher that loses a twentieth
    assert frame.loc[("atplus", 5.0, "matches the Teacher"), "delta"] < 0
    # Benjamini-Hochberg: never below the raw p-value, and in the raw p-values' order
    assert (frame.p_adjusted >= frame.p_value).all()
    order = np.argsort(frame.p_value.to_numpy(), kind="stable")
    assert np.all(np.diff(frame.p_adjusted.to_numpy()[order]) >= 0)


def test_different_test_patches_are_an_error():
    ours = {0: result("atplus", 5, 0, TRUTH)}
    theirs = {0: result("ce", 5, 0, TRUTH, slides=[f"t{i // 20}" for i in range(200)])}
    with pytest.raises(ValueError, match="different test patches"):
        paired_claim(ours, theirs)


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
