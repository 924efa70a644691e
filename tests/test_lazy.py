import sys

import pytest

from wsidistill.lazy import lazy_module


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``lazypkg`` whose module ``heavy`` records each time it is executed."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text("executed = []\n")
    (root / "heavy.py").write_text("import lazypkg\nlazypkg.executed.append('heavy')\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg"
    for name in ("lazypkg", "lazypkg.heavy"):
        sys.modules.pop(name, None)


def test_a_lazy_module_runs_at_its_first_attribute_access_and_once(package):
    heavy = lazy_module("lazypkg.heavy")
    parent = sys.modules["lazypkg"]
    assert parent.executed == []
    assert heavy.VALUE == 42 and parent.executed == ["heavy"]
    import lazypkg.heavy

    assert lazypkg.heavy is heavy and parent.heavy is heavy and lazy_module("lazypkg.heavy") is heavy
    assert lazypkg.heavy.VALUE == 42 and parent.executed == ["heavy"]


def test_a_missing_module_is_an_error_now(package):
    with pytest.raises(ModuleNotFoundError, match="lazypkg.nosuch"):
        lazy_module("lazypkg.nosuch")


def test_the_term_registry_is_read_without_pytorch():
    """What the workflow's config check reads (wsidistill.config._check_methods), in a fresh interpreter."""
    import subprocess

    code = ("import sys; from wsidistill.distill import TERMS, DEFAULT_OPTIONS; "
            "assert 'atplus' in TERMS and 'kd_temperature' in DEFAULT_OPTIONS; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
