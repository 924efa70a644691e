import copy

import pytest
import yaml

from wsidistill.config import (
    ConfigError,
    active_methods,
    check_config,
    cli_flags,
    load_schema,
    section_defaults,
    student_magnifications,
    validate_config,
)


@pytest.fixture
def config(repo_root):
    return validate_config(yaml.safe_load((repo_root / "config.yaml").read_text()))


def test_default_config_passes(config):
    check_config(config)
    assert student_magnifications(config) == [20, 10, 5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(magnifications=[40, 20, 7]), "`magnifications` contains unknown magnification 7"),
        (lambda c: c.update(magnifications=[80, 40, 20]), "above the Teacher"),
        (lambda c: c["teacher"].update(magnification=30), "`teacher.magnification` 30"),
        (lambda c: c.update(baseline_method="ce_only"), "`baseline_method` 'ce_only'"),
        (lambda c: c["methods"].update(teacher={"ce": 1}), "named 'teacher'"),
        (lambda c: c["annotation_classes"].update(Tumour="G6"), "`annotation_classes` maps to ['G6']"),
        (lambda c: c["methods"].update(ce=None, atplus=None), "`methods` has no method left"),
        (lambda c: c["methods"].update(ce=None), "`baseline_method` 'ce' is not one of `methods` ['atplus']"),
        (lambda c: c["methods"].update(atplus={"ce": 1, "atplsu": 10}), "`methods.atplus` has unknown loss term"),
        (lambda c: c["methods"].update(atplus={"ce": 0, "atplus": 0}), "`methods.atplus`: every weight is 0"),
        (lambda c: c.update(distill_options={"kd_temprature": 2}), "`distill_options` has unknown key(s) ['kd_temprature']"),
        (lambda c: c.update(panel_methods=["nosuch"]), "`panel_methods` names ['nosuch']"),
        (lambda c: c.update(label_mask_classes={"3": "G6"}), "`label_mask_classes` maps to ['G6']"),
        (lambda c: c.update(label_mask_context=[0, 1]), "config: `label_mask_context` values [0] are not tissue"),
        (lambda c: c.update(label_mask_classes={"0": None, "1": None, "2": "G3"}), "`label_mask_context` values [1]"),
    ],
)
def test_bad_values_name_the_key(config, change, message):
    bad = copy.deepcopy(config)
    change(bad)
    with pytest.raises(ConfigError) as err:
        check_config(bad)
    assert message in str(err.value)


def test_a_null_method_is_dropped(config):
    """How an overlay config removes a method of config.yaml (Snakemake merges configs key by key)."""
    config["methods"]["atplus"] = None
    with pytest.raises(ConfigError, match="`panel_methods` names \\['atplus'\\]"):
        check_config(config)
    config["panel_methods"] = ["ce"]  # as config/resolution.yaml does
    check_config(config)
    assert active_methods(config) == {"ce": {"ce": 1}}


def test_defaults_come_from_the_schema(repo_root):
    """Keys left out of config.yaml take the schema's default; config.yaml need not repeat them."""
    config = validate_config({"samples": "s.tsv", "teacher": {"magnification": 40}, "methods": {"ce": {"ce": 1}}})
    assert config["extraction"] == section_defaults("extraction")
    assert config["classes"] == ["NC", "G3", "G4", "G5"] and config["device"] == "auto"
    assert config["training"]["lr"] == load_schema()["properties"]["training"]["properties"]["lr"]["default"]
    check_config(config)


def test_extraction_defaults_are_declared_once(repo_root):
    """The schema's extraction defaults are those of ExtractionSettings and of `wsidistill extract`."""
    import dataclasses

    from wsidistill.cli import build_parser
    from wsidistill.patches.extract import ExtractionSettings

    defaults = section_defaults("extraction")
    fields = {f.name: f.default for f in dataclasses.fields(ExtractionSettings)}
    assert {key: fields[key] for key in defaults} == defaults
    args = build_parser().parse_args(["extract", "slide.svs", "--out", "s.zarr"])
    assert {key: getattr(args, key) for key in defaults} == defaults


def test_training_defaults_and_cli_options_come_from_the_schema():
    """TrainSettings' defaults are the schema's `training` section (with `device`, `precision`); the CLI's
    options for config keys take the schema's default and choices."""
    import argparse
    import dataclasses

    from wsidistill.cli import build_parser
    from wsidistill.config import config_default, section_schema
    from wsidistill.training.loop import TrainSettings

    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    assert fields == {**section_defaults("training"), "device": config_default("device"),
                      "precision": config_default("precision")}
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    options = {action.dest: action for action in verbs["distill"]._actions}
    student = section_schema("student")
    for dest, spec in (("student_grid", student["grid"]), ("student_input", student["input"]),
                       ("arch", student["arch"]), ("precision", load_schema()["properties"]["precision"])):
        assert (options[dest].default, options[dest].choices) == (spec["default"], spec["enum"]), dest
    assert options["device"].default == config_default("device")
    assert options["distill_options"].default == config_default("distill_options")
    assert parser.parse_args(["tables", "--metrics", "m", "--csv", "c", "--md", "m", "--html", "h", "--plot",
                              "p"]).baseline == config_default("baseline_method")


def test_cli_flags_are_read_back_by_the_cli_as_the_section():
    """Workflow -> CLI and CLI -> settings use the same naming: a section survives the round trip."""
    from wsidistill.cli import build_parser

    section = {"patch_size": 64, "min_tissue_fraction": 0.25, "min_label_fraction": 0.75,
               "tissue_method": "tiatoolbox-otsu", "on_missing_magnification": "error", "block_cells": 3,
               "reuse_source_tiles": False}
    assert cli_flags({"patch_size": 64, "reuse_source_tiles": False, "x": None, "y": [1, 2], "z": {"a": 1}}) == [
        "--patch-size", "64", "--no-reuse-source-tiles", "--y", "1", "2", "--z", '{"a": 1}']
    args = build_parser().parse_args(["extract", "slide.svs", "--out", "s.zarr", *cli_flags(section)])
    assert {key: getattr(args, key) for key in section} == section


def _overlay(base: dict, *overlays: dict) -> dict:
    """Snakemake's merge of --configfile overlays: nested mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for overlay in overlays:
        for key, value in overlay.items():
            out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _study_config(repo_root, *names: str) -> dict:
    """config.yaml with config/<name>.yaml layered on in order, as Snakemake's --configfile does, validated."""
    read = lambda name: yaml.safe_load((repo_root / "config" / f"{name}.yaml").read_text())  # noqa: E731
    return validate_config(_overlay(yaml.safe_load((repo_root / "config.yaml").read_text()), *map(read, names)))


def _plan(demo: dict) -> list:
    """The demo cohort a config's `demo` section describes."""
    from wsidistill.demo import plan_cohort

    return plan_cohort(demo["slides"], demo["seed"], val_patients=demo["val_patients"],
                       test_patients=demo["test_patients"])


@pytest.mark.parametrize("parts", [["benchmark"], ["study_ce_only"], ["study_ce_only", "study_holdout"]])
def test_study_cohorts_differ_only_in_their_cues(repo_root, parts):
    """Issue #19: the absent and degraded cohorts run the same protocol on 10 test patients, split by patient."""
    merged = {cues: _study_config(repo_root, parts[0], f"study_{cues}", *parts[1:])
              for cues in ("absent", "degraded")}
    for config in merged.values():
        check_config(config)
    absent, degraded = merged["absent"], merged["degraded"]
    assert (absent["demo"]["cues"], degraded["demo"]["cues"]) == ("absent", "degraded")
    assert _overlay(absent, {"demo": {"cues": "degraded"}, "samples": degraded["samples"]}) == degraded
    test = [s for s in _plan(degraded["demo"]) if s.split == "test"]
    assert len(test) >= 10 and len({s.patient_id for s in test}) == 10


def test_the_second_hold_out_keeps_the_design_and_training_size_with_20_test_patients(repo_root):
    """Issue #19, acceptance 1: config/study_holdout2.yaml is the degraded design from an unused cohort seed, with as
    many training slides as the study cohort and twice its test patients (a narrower interval over test slides)."""
    study = _study_config(repo_root, "study_degraded", "study_ce_only")
    holdout1 = _study_config(repo_root, "study_degraded", "study_ce_only", "study_holdout")
    holdout2 = _study_config(repo_root, "study_degraded", "study_ce_only", "study_holdout2")
    check_config(holdout2)
    assert holdout2["demo"]["cues"] == "degraded"
    assert holdout2["demo"]["seed"] not in {study["demo"]["seed"], holdout1["demo"]["seed"]}
    assert _overlay(holdout2, {"demo": {k: study["demo"][k] for k in ("seed", "slides", "test_patients")}}) == study

    def count(slides, split):
        return sum(s.split == split for s in slides), len({s.patient_id for s in slides if s.split == split})

    ours, theirs = _plan(holdout2["demo"]), _plan(study["demo"])
    assert count(ours, "train")[0] == count(theirs, "train")[0] == 8
    assert count(ours, "val")[1] == count(theirs, "val")[1] == 3
    assert count(ours, "test")[1] == 20
