import copy

import pytest
import yaml

from wsidistill.config import ConfigError, active_methods, check_config, student_magnifications


@pytest.fixture
def config(repo_root):
    return yaml.safe_load((repo_root / "config.yaml").read_text())


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
    check_config(config)
    assert active_methods(config) == {"ce": {"ce": 1}}
