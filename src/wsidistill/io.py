"""Atomic writes: a killed job never leaves a file or store that looks complete."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputWriteError


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f"{TEMPORARY_PREFIX.format(name=path.name)}{uuid.uuid4().hex[:8]}")


#: Temporary siblings are ``.{name}.tmp-{8 hex digits}``: hidden, and found again by a rerun.
TEMPORARY_PREFIX = ".{name}.tmp-"
#: OSErrors that are the output's, not an input's, wherever they were raised from.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def temporaries(path: str | Path) -> list[Path]:
    """Temporary siblings of ``path`` left by writes that never finished (a killed job)."""
    path = Path(path)
    return sorted(path.parent.glob(glob.escape(TEMPORARY_PREFIX.format(name=path.name)) + "*"))


def _remove(path: Path) -> None:
    """Remove a file or folder; a folder is removed again while files still appear in it.

    Writer threads this package starts are joined before this runs; a library's own
    threads (zarr-python's, after one of its writes failed) may still be finishing theirs.
    """
    for attempt in range(10):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        if not (path.exists() or path.is_symlink()):
            return
        time.sleep(0.05 * (attempt + 1))


def _is_output_error(err: OSError, tmp: Path) -> bool:
    if err.errno in _OUTPUT_ERRNOS:
        return True
    return any(name is not None and (Path(name) == tmp or tmp in Path(name).parents)
               for name in (err.filename, err.filename2))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path`` in one rename.

    Works for files and directories (Zarr stores).  On failure the temporary
    is removed and any existing ``path`` is left untouched.  Temporaries a
    killed job left for the same ``path`` (:func:`temporaries`) are removed
    first: one job writes an output at a time (Snakemake's lock sees to it).
    An OSError writing the output (disk full, quota, read-only, or any error on
    a file inside the temporary) becomes :class:`~wsidistill.errors.OutputWriteError`,
    one line naming ``path`` and the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temporaries(path):
        _remove(stale)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = _temporary_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, OutputWriteError) or not _is_output_error(err, tmp):
            raise
        where = f" ({err.filename})" if err.filename else ""
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "fix the folder"
        raise OutputWriteError(f"cannot write {path}: {err.strerror or err}{where}; {fix} and rerun") from err
    finally:
        _remove(tmp)


def write_json(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(figure, path: str | Path, **kwargs) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    plt.close(figure)
