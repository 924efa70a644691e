"""A killed extraction leaves nothing a rerun keeps; a full disk is one line; a damaged store is refused."""

import errno
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsidistill.cli import main
from wsidistill.demo import plan_cohort, write_slide
from wsidistill.io import temporaries
from wsidistill.patches.dataset import load_patches
from wsidistill.patches.store import CHUNK_FILES, IncompleteStoreError, open_store
from wsidistill.patches.zarr_io import chunk_files

FLAGS = ["--patch-size", "32", "--magnifications", "40", "20", "10", "5", "--no-reuse-source-tiles",
         "--min-tissue-fraction", "0"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(plan_cohort(6, 0)[0], tmp_path_factory.mktemp("slide"), width=2048, height=1536)


def test_a_killed_extraction_leaves_nothing_after_a_rerun(slide, tmp_path, kill_mid_write):
    out = tmp_path / "s.zarr"
    argv = ["extract", slide["slide"], "--annotations", slide["annotations"], "--out", out, *FLAGS]
    left = kill_mid_write(argv, out)
    assert left.exists() and not out.exists()  # what a kill leaves: the litter issue 15 saw
    assert main([str(a) for a in argv]) == 0
    assert temporaries(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    store = open_store(out)  # complete: every chunk file its record lists
    recorded = store.attrs[CHUNK_FILES]
    assert recorded == chunk_files(out) and recorded["40x/images"] >= 1
    patches = load_patches([out], [40, 5], labelled_only=False)
    assert len(patches) == store["coords"].shape[0] == 64 * 48 and patches.images["40x"].any()


def test_a_full_disk_is_one_line_naming_the_store(slide, tmp_path, monkeypatch, capsys):
    """The writer threads' ENOSPC reaches the command line as one line naming the output; nothing is left."""
    write_bytes = Path.write_bytes

    def full_disk(self, data):
        if "/c." in str(self) and "images" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    out = tmp_path / "s.zarr"
    assert main(["extract", str(slide["slide"]), "--out", str(out), *FLAGS]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last = error.splitlines()[-1]  # after the progress bar's carriage returns
    assert last.startswith(f"wsidistill extract: error: cannot write {out}: No space left on device (")
    assert f"{out.name}.tmp-" in last and "free some space" in last
    assert list(tmp_path.iterdir()) == []


def test_a_store_missing_a_chunk_file_is_refused_naming_it(demo_stores, tmp_path, capsys):
    """A copy that lost a chunk file would read black patches; training and evaluation refuse it instead."""
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(demo_stores["train"][0], store)
    chunk = sorted((store / "10x" / "images").glob("c.*"))[-1]
    chunk.unlink()
    message = (f"{store}: incomplete patch store: 10x/images has {len(list(chunk.parent.glob('c.*')))} of its "
               f"{len(list(chunk.parent.glob('c.*'))) + 1} chunk files; delete it and extract the slide again")
    with pytest.raises(IncompleteStoreError, match=f"^{message}"):
        load_patches([store], [10])
    assert main(["train-teacher", "--train-stores", str(store), "--val-stores", str(demo_stores["val"][0]),
                 "--magnification", "10", "--out", str(tmp_path / "m/model.pt"), "--history",
                 str(tmp_path / "m/h.csv"), "--device", "cpu", "--training", '{"epochs": 1}']) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"wsidistill train-teacher: error: {message}") and error.count("\n") == 1
    assert not (tmp_path / "m").exists()
    # a store written before the record existed is read as it is
    attributes = zarr.open_group(str(demo_stores["train"][0]), mode="r").attrs.asdict()
    old = tmp_path / "old.zarr"
    shutil.copytree(demo_stores["train"][0], old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs.put({k: v for k, v in attributes.items() if k != CHUNK_FILES})
    (old / "10x" / "images" / chunk.name).unlink()
    assert np.array_equal(load_patches([old], [40]).labels, load_patches([demo_stores["train"][0]], [40]).labels)
