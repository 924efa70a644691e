"""Extraction through a dask distributed scheduler writes the very same store as local threads.

The cluster runs on loopback with its worker in a separate process, so blocks are pickled, shipped
over TCP and computed elsewhere: what a scheduler on another machine (``dask.scheduler_address`` in
config.yaml, ``wsidistill extract --scheduler-address``) does.
"""

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import distributed
import numpy as np
import pytest
import zarr

from wsidistill.patches.extract import ExtractionSettings, extract_slide

CLASS_MAP = {"Benign": "NC", "Gleason 3": "G3", "Gleason 4": "G4", "Gleason 5": "G5"}
# floats, as the CLI parses them, so the CLI's store can be compared with these settings' store too
SETTINGS = ExtractionSettings(
    classes=("NC", "G3", "G4", "G5"),
    class_map=CLASS_MAP,
    magnifications=(40.0, 20.0, 10.0, 5.0),
    teacher_magnification=40.0,
    patch_size=64,
    block_cells=2,  # many small blocks: many tasks for the worker
)
# what legitimately differs between two runs of the summary; the store itself has no such field
RUN_SPECIFIC = {"timings", "patch_sets_per_second", "store"}


@pytest.fixture(scope="module")
def threaded(demo_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("threaded") / "s.zarr"
    summary = extract_slide(demo_slide["slide"], out, SETTINGS, slide_id="s", annotations=demo_slide["annotations"],
                            threads=2, summary_path=out.with_suffix(".json"), progress=False)
    return out, summary


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        yield cluster


def read_block_tasks(address: str) -> int:
    """How many ``_read_block`` tasks the scheduler at ``address`` has seen."""
    with distributed.Client(address) as client:
        # state_counts counts every task that ever entered a state: "memory" = computed on a worker
        return client.run_on_scheduler(
            lambda dask_scheduler: sum(prefix.state_counts["memory"]
                                       for name, prefix in dask_scheduler.task_prefixes.items() if "read_block" in name)
        )


def assert_same_store(actual: Path, expected: Path) -> None:
    a, e = zarr.open_group(str(actual), mode="r"), zarr.open_group(str(expected), mode="r")
    names = sorted(name for name, _ in e.arrays()) + [f"{g}/images" for g, _ in sorted(e.groups())]
    assert sorted(name for name, _ in a.arrays()) + [f"{g}/images" for g, _ in sorted(a.groups())] == names
    assert len(names) == 6 + len(SETTINGS.magnifications)
    for name in names:
        x, y = a[name], e[name]
        assert (x.shape, x.dtype, x.chunks) == (y.shape, y.dtype, y.chunks), name
        assert x[...].tobytes() == y[...].tobytes(), f"{name} differs"
    assert a.attrs.asdict() == e.attrs.asdict()
    # and on disk: the same files, byte for byte (metadata with its attributes, every compressed chunk)
    files = {p.relative_to(expected): p.read_bytes() for p in sorted(expected.rglob("*")) if p.is_file()}
    assert {p.relative_to(actual): p.read_bytes() for p in sorted(actual.rglob("*")) if p.is_file()} == files


def same_summary(actual: dict, expected: dict) -> bool:
    strip = lambda s: {k: v for k, v in s.items() if k not in RUN_SPECIFIC}  # noqa: E731
    return strip(actual) == strip(expected)


def test_extraction_through_a_scheduler_address_matches_threads(demo_slide, threaded, cluster, tmp_path):
    expected, expected_summary = threaded
    before = read_block_tasks(cluster.scheduler_address)
    settings = dataclasses.replace(SETTINGS, scheduler_address=cluster.scheduler_address)
    out = tmp_path / "s.zarr"
    summary = extract_slide(demo_slide["slide"], out, settings, slide_id="s", annotations=demo_slide["annotations"],
                            threads=2, progress=False)
    assert expected_summary["tissue_patches"] > 0
    assert read_block_tasks(cluster.scheduler_address) - before >= 2  # the blocks really went to the worker
    assert same_summary(summary, expected_summary)
    assert_same_store(out, expected)


def test_cli_scheduler_address_matches_threads(demo_slide, threaded, cluster, tmp_path):
    expected, expected_summary = threaded
    before = read_block_tasks(cluster.scheduler_address)
    out = tmp_path / "s.zarr"
    command = [
        str(Path(sys.executable).parent / "wsidistill"), "extract", str(demo_slide["slide"]), "--out", str(out),
        "--slide-id", "s", "--annotations", str(demo_slide["annotations"]), "--summary", str(tmp_path / "s.json"),
        "--magnifications", "40", "20", "10", "5", "--teacher-magnification", "40", "--patch-size", "64",
        "--classes", *SETTINGS.classes, "--class-map", json.dumps(CLASS_MAP), "--block-cells", "2",
        "--scheduler-address", cluster.scheduler_address, "--threads", "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_block_tasks(cluster.scheduler_address) - before >= 2
    assert same_summary(json.loads((tmp_path / "s.json").read_text()), expected_summary)
    assert_same_store(out, expected)


def test_the_comparison_sees_a_single_changed_byte(threaded, tmp_path):
    """The check above is not vacuous: one patch pixel off is caught."""
    expected, _ = threaded
    copy = tmp_path / "copy.zarr"
    shutil.copytree(expected, copy)
    images = zarr.open_array(str(copy / "40x" / "images"), mode="r+")
    images[0, 0, 0, 0] = np.uint8(images[0, 0, 0, 0]) ^ 1
    with pytest.raises(AssertionError, match="40x/images differs"):
        assert_same_store(copy, expected)
