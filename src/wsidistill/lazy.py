"""Modules imported on first attribute access, so that a light entry point does not pay for a heavy one."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, executed on its first attribute access rather than now.

    The recipe of the Python documentation (``importlib.util.LazyLoader``, "Implementing lazy imports").
    Its parent packages are imported now; the module is registered in ``sys.modules`` and on its parent, so a
    later ``import`` of it gets this object. ModuleNotFoundError if it does not exist. Unlike a plain import,
    a module whose first run fails (its own imports missing, an interrupt) stays registered half-run: the first
    access raises the real error, later ones AttributeError. Its first run is not thread-safe before CPython
    3.12.3 (gh-114763): trigger it before starting threads that use it.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module
