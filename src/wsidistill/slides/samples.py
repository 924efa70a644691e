"""The sample sheet: one row per slide, checked before any job runs.

Columns: ``slide_id``, ``path``, ``patient_id``, ``split`` (train/val/test)
and optionally ``annotations``, ``label_mask``, ``tissue_mask``, ``mpp``,
``objective_power``.
Relative paths are resolved against the sheet's own directory, so a cohort
folder can be moved as a whole.

A ``slide_id`` names output files and reaches shell commands, so it is data
with a narrow alphabet: letters, digits, ``.``, ``_`` and ``-``, starting with
a letter or digit (``SLIDE_ID_PATTERN``, also in ``schemas/samples.schema.yaml``).
Any other id is rejected before any job, with its sheet line named.

:func:`check_roles` then asks whether each slide can serve its split, from the
sheet alone (no slide is opened: a dry run stays cheap): a training slide needs
labels, and a slide whose sheet gives its resolution must reach the Teacher's
magnification (issue 17, kind 7).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .grid import standard_power

REQUIRED_COLUMNS = ("slide_id", "path", "patient_id", "split")
OPTIONAL_COLUMNS = ("annotations", "label_mask", "tissue_mask", "mpp", "objective_power")
#: Columns that give a slide its patch labels; a training slide needs one of them.
LABEL_COLUMNS = ("annotations", "label_mask")
SPLITS = ("train", "val", "test")
#: Allowed slide ids: no spaces, quotes, shell or path metacharacters; no leading '.' or '-'.
SLIDE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SampleSheetError(InputError, ValueError):
    """A sample sheet that would make a job fail later; raised before any job."""


def load_sample_sheet(path: str | Path, *, check_files: bool = True,
                      required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read and validate a TSV (or CSV) sample sheet; paths come back absolute.

    ``required``: the columns the sheet must have; a training sheet needs :data:`REQUIRED_COLUMNS`, a sheet
    of new slides to predict only ``("slide_id", "path")``. Raises :class:`SampleSheetError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"sample sheet {path} not found. Set `samples` in config.yaml to your sheet's path.")
    sep = "," if path.suffix == ".csv" else "\t"
    try:
        sheet = pd.read_csv(path, sep=sep, dtype={"slide_id": str, "patient_id": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise SampleSheetError(f"sample sheet {path} is empty; it needs a header line "
                               f"({', '.join(required)}) and one row per slide") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise SampleSheetError(f"sample sheet {path} is not a readable table: {message}") from None
    missing = [c for c in required if c not in sheet.columns]
    if missing:
        raise SampleSheetError(f"{path}: missing columns {missing}; required: {list(required)}")
    unknown = sorted(set(sheet.columns) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise SampleSheetError(f"{path}: unknown columns {unknown}; optional ones are {list(OPTIONAL_COLUMNS)}")
    problems = []
    duplicated = sorted(sheet.loc[sheet.slide_id.duplicated(), "slide_id"].unique())
    if duplicated:
        problems.append(f"duplicate slide_id values {duplicated}: each slide needs a unique id")
    bad_ids = [(line, s) for line, s in enumerate(sheet.slide_id, start=2) if not SLIDE_ID_PATTERN.fullmatch(s)]
    if bad_ids:
        problems.append(
            "slide_id values " + ", ".join(f"{s!r} (line {line})" for line, s in bad_ids)
            + " use characters other than letters, digits, '.', '_' and '-' (or start with '.' or '-'); rename them"
        )
    bad_splits = sorted(set(sheet.split) - set(SPLITS)) if "split" in sheet else []
    if bad_splits:
        problems.append(f"unknown split values {bad_splits}; use one of {list(SPLITS)}")
    leaking = sheet.groupby("patient_id").split.nunique() if {"split", "patient_id"} <= set(sheet) else pd.Series()
    leaking = sorted(leaking[leaking > 1].index)
    if leaking:
        problems.append(f"patients {leaking} have slides in more than one split; split by patient")
    for column in ("path", "annotations", "label_mask", "tissue_mask"):
        if column not in sheet:
            continue
        resolved = [str((path.parent / p).resolve()) if p else "" for p in sheet[column]]
        sheet[column] = resolved
        if check_files:
            absent = [p for p in resolved if p and not Path(p).exists()]
            if column == "path":
                absent += [f"(empty path for {s})" for s, p in zip(sheet.slide_id, resolved) if not p]
            if absent:
                problems.append(f"`{column}` files not found: {absent}")
    for column in ("mpp", "objective_power"):
        if column in sheet:
            values = pd.to_numeric(sheet[column].replace("", None), errors="coerce")
            bad = sheet.slide_id[(sheet[column] != "") & ~(values > 0)].tolist()
            if bad:
                problems.append(f"`{column}` must be a positive number (slides {bad})")
            sheet[column] = values
    if problems:
        raise SampleSheetError(f"{path}: " + "; ".join(problems))
    return sheet.set_index("slide_id", drop=False)


def sheet_power(row: pd.Series) -> tuple[float, str] | None:
    """A slide's objective power as its sheet row gives it, and the column it came from: ``objective_power``,
    else the standard objective of ``mpp`` (as extraction derives it); None when the sheet gives neither."""
    power, mpp = row.get("objective_power"), row.get("mpp")
    if power is not None and not pd.isna(power) and power != "":
        return float(power), "`objective_power`"
    if mpp is not None and not pd.isna(mpp) and mpp != "":
        return standard_power(float(mpp)), f"`mpp` {float(mpp):g}"
    return None


def check_roles(sheet: pd.DataFrame, path: str | Path, teacher_magnification: float) -> None:
    """Stop before any job when a slide cannot serve its split, from what the sheet says (issue 17, kind 7).

    * a ``train`` slide with neither ``annotations`` nor ``label_mask``: training learns from labelled
      patches only (``val`` and ``test`` slides may be unlabelled: they are predicted and left out of the
      metrics);
    * a slide whose ``objective_power`` (or ``mpp``, snapped to the standard objective) is below
      ``teacher_magnification``: slides are never upsampled, and every split feeds the Teacher.

    A slide whose sheet says nothing is checked by its extraction job, which reads the file. Raises
    :class:`SampleSheetError` naming the sheet, the slides and the choices.
    """
    problems = []
    labelled = pd.Series(False, index=sheet.index)
    for column in LABEL_COLUMNS:
        if column in sheet:
            labelled |= sheet[column].fillna("").astype(str) != ""
    unlabelled = sheet.slide_id[(sheet.split == "train") & ~labelled].tolist()
    if unlabelled:
        problems.append(f"training slides {unlabelled} have no `annotations` or `label_mask`: training learns from "
                        "labelled patches only. Annotate them, move them to the test split (predicted, left out of "
                        "the metrics), or drop them from the sheet")
    low = []
    for _, row in sheet.iterrows():
        given = sheet_power(row)
        if given is not None and teacher_magnification > given[0] * 1.001:
            low.append(f"{row.slide_id} ({given[0]:g}x from {given[1]})")
    if low:
        problems.append(f"slides {', '.join(low)} are below the Teacher's {teacher_magnification:g}x "
                        "(`teacher.magnification`) and are never upsampled. Give a scan at "
                        f"{teacher_magnification:g}x or above, correct the column if it is wrong, drop them from the "
                        "sheet, or lower `teacher.magnification` and `magnifications` for the whole study")
    if problems:
        raise SampleSheetError(f"{path}: " + "; ".join(problems))
