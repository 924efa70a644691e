"""The sample sheet: one row per slide, checked before any job runs.

Columns: ``slide_id``, ``path``, ``patient_id``, ``split`` (train/val/test)
and optionally ``annotations``, ``label_mask``, ``mpp``, ``objective_power``.
Relative paths are resolved against the sheet's own directory, so a cohort
folder can be moved as a whole.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputError

REQUIRED_COLUMNS = ("slide_id", "path", "patient_id", "split")
OPTIONAL_COLUMNS = ("annotations", "label_mask", "mpp", "objective_power")
SPLITS = ("train", "val", "test")


class SampleSheetError(InputError, ValueError):
    """A sample sheet that would make a job fail later; raised before any job."""


def load_sample_sheet(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a TSV (or CSV) sample sheet; paths come back absolute."""
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"sample sheet {path} not found. Set `samples` in config.yaml to your sheet's path.")
    sep = "," if path.suffix == ".csv" else "\t"
    sheet = pd.read_csv(path, sep=sep, dtype={"slide_id": str, "patient_id": str}, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise SampleSheetError(f"{path}: missing columns {missing}; required: {list(REQUIRED_COLUMNS)}")
    unknown = sorted(set(sheet.columns) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise SampleSheetError(f"{path}: unknown columns {unknown}; optional ones are {list(OPTIONAL_COLUMNS)}")
    problems = []
    duplicated = sorted(sheet.loc[sheet.slide_id.duplicated(), "slide_id"].unique())
    if duplicated:
        problems.append(f"duplicate slide_id values {duplicated}: each slide needs a unique id")
    bad_ids = sorted(s for s in sheet.slide_id if not s or "/" in s or s.startswith("."))
    if bad_ids:
        problems.append(f"slide_id values {bad_ids} are empty or contain '/' or a leading '.'")
    bad_splits = sorted(set(sheet.split) - set(SPLITS))
    if bad_splits:
        problems.append(f"unknown split values {bad_splits}; use one of {list(SPLITS)}")
    leaking = sheet.groupby("patient_id").split.nunique()
    leaking = sorted(leaking[leaking > 1].index)
    if leaking:
        problems.append(f"patients {leaking} have slides in more than one split; split by patient")
    for column in ("path", "annotations", "label_mask"):
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
