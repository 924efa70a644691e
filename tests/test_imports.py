"""The package's import structure: ``distill`` is pure tensor maths, and no two modules import each other."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = "wsidistill"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def test_distill_imports_no_storage_slide_reading_or_training():
    """Every name of ``wsidistill.distill``, used in a fresh interpreter, loads neither zarr, openslide nor the
    training loop (the package resolves its names on first use: each is asked for here, and the lazily loaded
    loss and map modules are run)."""
    code = (
        "import json, sys; import wsidistill.distill as d; [getattr(d, name) for name in d.__all__]; "
        "d.terms.losses.ce; d.terms.attention.at_map; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SOURCE.parent)})
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"torch", "wsidistill.distill.losses", "wsidistill.distill.distiller"} <= loaded  # the probe ran them
    forbidden = {"zarr", "openslide", "wsidistill.training", "wsidistill.train"}
    assert not forbidden & loaded, sorted(forbidden & loaded)
    assert not any(m.startswith(("zarr.", "openslide.", "wsidistill.training.")) for m in loaded)


def test_a_job_on_a_small_cnn_does_not_import_torchvision():
    """The modules of the training, evaluation, Teacher-cache and prediction jobs, and a SmallCNN built, leave
    torchvision (and the torch._dynamo its ops pull in, ~1.5 s of each job's start) unimported; building
    a ResNet imports it."""
    code = (
        "import json, sys; import wsidistill.training.loop, wsidistill.evaluation.evaluate, "
        "wsidistill.training.teacher_cache, wsidistill.predict; from wsidistill.models import build_model; "
        "build_model('smallcnn', 4); before = 'torchvision' in sys.modules; build_model('resnet18', 4); "
        "print(json.dumps([before, 'torchvision' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SOURCE.parent)})
    assert json.loads(result.stdout.splitlines()[-1]) == [False, True]


def _module_names() -> dict[str, Path]:
    """Every module of the package, dotted name -> file (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that module ``name`` imports anywhere in its body (module or function level).

    Relative imports are resolved against the module's package; ``from pkg import x`` counts as an
    import of ``pkg.x`` where that is a module, else of ``pkg``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` also runs ``a.b``; the innermost package module is what it imports.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_resolution_of_relative_and_from_imports(tmp_path):
    modules = {"wsidistill": Path("__init__.py"), "wsidistill.models": Path("models/__init__.py"),
               "wsidistill.models.checkpoint": Path("models/checkpoint.py"),
               "wsidistill.training.loop": Path("training/loop.py"), "wsidistill.training": Path("t/__init__.py")}
    source = tmp_path / "loop.py"
    source.write_text("from ..models import checkpoint, build_model\nfrom . import x\n"
                      "def f():\n    import wsidistill.models.checkpoint\n")
    assert _imports("wsidistill.training.loop", source, modules) == {
        "wsidistill.models.checkpoint", "wsidistill.models", "wsidistill.training"}


def test_no_import_cycle_between_package_modules():
    modules = _module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(len(targets) for targets in graph.values()) > 50  # the walk found the package's imports
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
