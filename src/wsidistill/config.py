"""Checks on a validated config that a JSON schema cannot express.

The schema catches unknown keys, misspelt loss terms and wrong types; these
checks catch combinations (a magnification that does not cut the patch into
whole pixels, a baseline that is not a method) before any job starts.
"""

from __future__ import annotations

from .errors import InputError
from .slides.grid import GridError, patch_pixels

TEACHER = "teacher"


class ConfigError(InputError, ValueError):
    """A config value that would make the workflow fail later; the message names the key."""


def active_methods(config: dict) -> dict[str, dict]:
    """``methods`` without those set to null (how an overlay config removes a method of config.yaml)."""
    return {name: weights for name, weights in config["methods"].items() if weights is not None}


def student_magnifications(config: dict) -> list[float]:
    teacher = config["teacher"]["magnification"]
    return sorted((m for m in config["magnifications"] if m < teacher), reverse=True)


def check_config(config: dict) -> None:
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
