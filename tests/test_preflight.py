"""The README's promise "A bad config or sample sheet stops before any job", key by key, through Snakemake.

Every key the config schema declares gets a bad value and goes through Snakemake's real dry run
(``snakemake -n``: the repository's Snakefile parsed in a workdir holding that config.yaml, then a
dry-run DAG). The pre-flight in ``workflow/rules/common.smk`` must end it with exit status 1 and one
line on stderr naming the key, with no traceback and no file written. The dry runs go through
Snakemake's Python API in this process (``SnakemakeApi``): a subprocess costs seconds of interpreter
start-up per key, a parse here costs milliseconds. The command line itself is exercised by
``tests/test_workflow.py`` (``test_the_preflight_stops_before_any_job_in_one_line`` and others).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from wsidistill.config import load_schema, validate_config


def _leaves(schema, path=()):
    """(dotted key, its schema) for every key the config schema declares, nested ones included."""
    for key, spec in schema.get("properties", {}).items():
        yield ".".join((*path, key)), spec
        yield from _leaves(spec, (*path, key))


def _bad_value(spec):
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "enum" in spec or "pattern" in spec:
        return "no such value!"
    if "string" not in types:
        return "not-a-value"
    return 12345


#: Keys whose bad value needs a shape the generic one does not give.
SPECIAL_BAD = {
    "methods": {"ce": {"nosuch": 1}},
    "annotation_classes": {"Benign": "NOSUCH"},
    "label_mask_classes": {"3": "NOSUCH"},
    "distill_options": {"nosuch": 1},
    "panel_methods": ["nosuch"],
    "baseline_method": "nosuch",
    "teacher.magnification": 30,
}


def bad_configs(config):
    """One config per key of the schema, with that key set to a bad value: (key, config)."""
    for key, spec in _leaves(load_schema()):
        bad = copy.deepcopy(config)
        *parents, leaf = key.split(".")
        section = bad
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = SPECIAL_BAD.get(key, _bad_value(spec))
        yield key, bad


def dry_run(repo_root: Path, workdir: Path, config: dict) -> tuple[int, str, str]:
    """``snakemake -n`` in ``workdir`` with ``config`` as its config.yaml: (exit status, stdout, stderr).

    The Snakefile's ``configfile: "config.yaml"`` reads the workdir's file, as a user's run does.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    out, err, cwd, status = io.StringIO(), io.StringIO(), os.getcwd(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(),
                                    snakefile=repo_root / "Snakefile", workdir=workdir)
            workflow.dag().execute_workflow(executor="dryrun")
    except SystemExit as exit_:  # the pre-flight's stop(): sys.exit(1) after its one line
        status = exit_.code
    finally:
        os.chdir(cwd)  # the API changes into the workdir
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def config(repo_root):
    return validate_config(yaml.safe_load((repo_root / "config.yaml").read_text()))


def test_the_default_config_passes_the_dry_run(tmp_path, repo_root, config, caplog):
    """The control: the walk's harness plans the demo run when no key is bad (Snakemake logs the plan;
    under pytest its records reach ``caplog``)."""
    caplog.set_level(logging.INFO)
    status, out, err = dry_run(repo_root, tmp_path, config)
    assert status == 0, err[-2000:]
    assert "train_teacher" in caplog.text and "This was a dry-run" in caplog.text


def test_every_key_of_the_schema_stops_the_dry_run_naming_it(tmp_path, repo_root, config, caplog):
    """A bad value of any key ends ``snakemake -n`` with one line naming that key, before any job."""
    caplog.set_level(logging.INFO)
    keys = []
    for key, bad in bad_configs(config):
        workdir = tmp_path / key
        caplog.clear()
        status, out, err = dry_run(repo_root, workdir, bad)
        lines = err.strip().splitlines()
        assert status == 1, (key, status, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("config error: "), (key, err[-2000:])
        assert f"`{key}" in lines[0], (key, lines[0])
        assert "Traceback" not in out + err + caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], (key, caplog.text[-2000:])
        # No job ran: nothing beside the config and Snakemake's own metadata folder.
        assert {p.name for p in workdir.iterdir()} <= {"config.yaml", ".snakemake"}, key
        keys.append(key)
    assert len(keys) == len(list(_leaves(load_schema()))) > 50
    assert {"extraction.patch_size", "training.lr", "device", "methods", "distill_options", "panel_methods",
            "predict.model", "student.grid"} <= set(keys)


def test_slides_that_cannot_serve_their_split_stop_the_dry_run_naming_them(tmp_path, repo_root, config, caplog):
    """Issue 17, kind 7: from the sheet alone (the files are never opened), a training slide without annotations
    and a slide the sheet says is 20x stop `snakemake -n` in one line; an unannotated test slide does not."""
    feature = {"type": "Feature", "properties": {"classification": {"name": "Benign"}},
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}}
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.svs").write_bytes(b"never opened")

    def sheet(*rows):
        (tmp_path / "slides.tsv").write_text("slide_id\tpath\tannotations\tpatient_id\tsplit\tobjective_power\n"
                                             + "".join("\t".join(row) + "\n" for row in rows))
        return {**copy.deepcopy(config), "demo": {**config["demo"], "enabled": False},
                "samples": str(tmp_path / "slides.tsv")}

    good = [("a", "a.svs", "a.geojson", "p1", "train", ""), ("b", "b.svs", "a.geojson", "p2", "val", ""),
            ("c", "c.svs", "", "p3", "test", "")]
    status, _, err = dry_run(repo_root, tmp_path / "good", sheet(*good))
    assert status == 0, err[-2000:]
    status, out, err = dry_run(repo_root, tmp_path / "bad", sheet(*good, ("d", "d.svs", "", "p4", "train", "20")))
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "Traceback" not in out + err + caplog.text
    assert lines[0].startswith(f"sample sheet error: {tmp_path / 'slides.tsv'}: training slides ['d'] have no "
                               "`annotations` or `label_mask`")
    assert "slides d (20x from `objective_power`) are below the Teacher's 40x" in lines[0]
    assert not (tmp_path / "bad" / "results").exists()
