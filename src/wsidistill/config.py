"""The workflow's config: its schema (every key declared once, with its default) and the checks on it.

``schemas/config.schema.yaml`` (shipped inside the package, so the CLI and
:class:`~wsidistill.patches.extract.ExtractionSettings` read their defaults
from it; ``workflow/schemas`` links to it) declares every key, its type and
its default.  :func:`validate_config` fills the defaults and checks the types;
:func:`check_config` checks what a JSON schema cannot express (a
magnification that does not cut the patch into whole pixels, a baseline that
is not a method, a loss term that is not in the registry).  Both raise
:class:`ConfigError`, one line naming the key, before any job starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import yaml

from .errors import InputError
from .slides.grid import GridError, patch_pixels

#: The Teacher's method name: its model directory (``teacher_{mag}x``), metrics and table rows. Declared here only.
TEACHER = "teacher"

#: The schemas (config.yaml, the sample sheet), package data; ``workflow/schemas`` is a link to this folder.
SCHEMA_DIR = Path(__file__).parent / "schemas"


class ConfigError(InputError, ValueError):
    """A config value that would make the workflow fail later; the message names the key."""


@cache
def load_schema(name: str = "config") -> dict:
    """The JSON schema ``schemas/{name}.schema.yaml`` (``config`` or ``samples``)."""
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def section_schema(section: str) -> dict[str, dict]:
    """The schema of each key of config section ``section`` (e.g. ``extraction``)."""
    return load_schema()["properties"][section]["properties"]


def section_defaults(section: str) -> dict:
    """Every key of config section ``section`` with its schema default."""
    return {key: spec.get("default") for key, spec in section_schema(section).items()}


def config_default(key: str):
    """The schema default of top-level config key ``key``."""
    return load_schema()["properties"][key]["default"]


def flag_name(key: str) -> str:
    """The command-line flag of a config key: ``patch_size`` -> ``--patch-size``."""
    return "--" + key.replace("_", "-")


def cli_flags(section: Mapping) -> list[str]:
    """A config section as command-line flags, the one mapping from config to the ``wsidistill`` CLI.

    ``{patch_size: 128, reuse_source_tiles: false, patience: null}`` ->
    ``["--patch-size", "128", "--no-reuse-source-tiles"]``: booleans are ``--key``/``--no-key``,
    null is left out (the command's default applies), lists give one value each, mappings are JSON.
    """
    flags: list[str] = []
    for key, value in section.items():
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag_name(key) if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag_name(key), *map(str, value)]
        elif isinstance(value, Mapping):
            flags += [flag_name(key), json.dumps(value)]
        else:
            flags += [flag_name(key), str(value)]
    return flags


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Set every missing key that has a default, recursing into objects (also those just defaulted)."""
    for key, spec in schema.get("properties", {}).items():
        if key not in instance and "default" in spec:
            instance[key] = json.loads(json.dumps(spec["default"]))
        if isinstance(instance.get(key), dict) and "properties" in spec:
            _fill_defaults(instance[key], spec)


def _jsonschema():
    """jsonschema's ``Draft202012Validator`` and ``best_match``, imported without its optional ``iri`` format checker.

    When rfc3987_syntax is installed (Jupyter's ``jsonschema[format-nongpl]`` brings it), jsonschema imports it,
    and it compiles 39 Lark grammars at import: 2.5 s of the 6 s of a ``snakemake -n`` here (cProfile), in every
    dry run and every cluster job's Snakemake. The schema has no ``format`` keyword and no FormatChecker is used,
    so that checker is never needed: the import is blocked only while jsonschema itself is first imported.
    """
    import sys

    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # `import rfc3987_syntax` raises ImportError: jsonschema skips `iri`
        try:
            import jsonschema  # noqa: F401
        finally:
            del sys.modules["rfc3987_syntax"]
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    return Draft202012Validator, best_match


def validate_config(config: dict) -> dict:
    """Fill ``config``'s defaults from the schema (in place) and check it against the schema.

    Raises ConfigError naming the key (``training.lr``) and what is wrong; returns ``config``.
    """
    Draft202012Validator, best_match = _jsonschema()
    schema = load_schema()
    _fill_defaults(config, schema)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(map(str, error.absolute_path)) or "(top level)"
        message = error.message.replace("\n", " ")
        if len(message) > 300:
            message = message[:300] + "..."
        raise ConfigError(f"config key `{key}`: {message}")
    return config


def active_methods(config: dict) -> dict[str, dict]:
    """``methods`` without those set to null (how an overlay config removes a method of config.yaml)."""
    return {name: weights for name, weights in config["methods"].items() if weights is not None}


def student_magnifications(config: dict) -> list[float]:
    teacher = config["teacher"]["magnification"]
    return sorted((m for m in config["magnifications"] if m < teacher), reverse=True)


def _check_methods(config: dict) -> None:
    """Method weights against the term registry, ``distill_options`` against the Distiller's options."""
    from .distill import DEFAULT_OPTIONS, TERMS

    methods = active_methods(config)
    for name, weights in methods.items():
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ConfigError(f"`methods.{name}` has unknown loss term(s) {unknown}; valid terms: {list(TERMS)}")
        if not any(weights.values()):
            raise ConfigError(f"`methods.{name}`: every weight is 0; give at least one term a non-zero weight")
    unknown = sorted(set(config.get("distill_options") or {}) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(f"`distill_options` has unknown key(s) {unknown}; valid keys: {sorted(DEFAULT_OPTIONS)}")
    unknown = [m for m in config.get("panel_methods") or [] if m not in methods]
    if unknown:
        raise ConfigError(f"`panel_methods` names {unknown}, which are not in `methods` {sorted(methods)}")


def check_config(config: dict) -> None:
    """Checks across keys, on a config that passed :func:`validate_config`; ConfigError naming the key."""
    teacher = config["teacher"]["magnification"]
    magnifications = config["magnifications"]
    if teacher not in magnifications:
        raise ConfigError(f"`teacher.magnification` {teacher:g} must be one of `magnifications` {magnifications}")
    for magnification in magnifications:
        if magnification > teacher:
            raise ConfigError(
                f"`magnifications` contains {magnification:g}, above the Teacher's {teacher:g}x; "
                "Students see lower magnifications only"
            )
        try:
            patch_pixels(config["extraction"]["patch_size"], magnification, teacher)
        except GridError as err:
            raise ConfigError(f"`magnifications` contains unknown magnification {magnification:g}: {err}") from err
    if not student_magnifications(config):
        raise ConfigError("`magnifications` needs at least one magnification below `teacher.magnification`")
    methods = active_methods(config)
    if not methods:
        raise ConfigError("`methods` has no method left: every one is null")
    if TEACHER in methods:
        raise ConfigError("`methods` may not contain a method named 'teacher': that name is the Teacher's")
    baseline = config.get("baseline_method")
    if baseline and baseline not in methods:
        raise ConfigError(f"`baseline_method` {baseline!r} is not one of `methods` {sorted(methods)}")
    unknown = sorted(set(config["annotation_classes"].values()) - set(config["classes"]) - {None})  # null: ignored
    if unknown:
        raise ConfigError(f"`annotation_classes` maps to {unknown}, which are not in `classes` {config['classes']}")
    unknown = sorted({v for v in (config.get("label_mask_classes") or {}).values() if v is not None}
                     - set(config["classes"]))
    if unknown:
        raise ConfigError(f"`label_mask_classes` maps to {unknown}, which are not in `classes` {config['classes']}")
    from .slides.geojson import AnnotationError
    from .slides.mask_values import RADBOUD_CLASSES, check_label_mask_context  # no imaging stack: snakemake -n

    try:
        check_label_mask_context(config.get("label_mask_classes") or RADBOUD_CLASSES,
                                 config.get("label_mask_context") or ())
    except AnnotationError as err:
        raise ConfigError(str(err)) from None
    _check_methods(config)
