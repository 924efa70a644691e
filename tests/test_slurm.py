"""The workflow on a real SLURM cluster through ``workflow/profiles/slurm``; GPU jobs one at a time locally.

A module fixture brings up a single-node SLURM on localhost (tests/slurm/cluster.py: munged, MariaDB
and slurmdbd for accounting, slurmctld, slurmd; Debian packages that ``make test-setup`` installs) and
shuts it down afterwards. The tiny workflow (three 1024 x 768 demo slides in a sample sheet, one per
split; 40x and 10x; one epoch; methods ce and atplus) then builds the comparison table twice, with the
same config:

* locally, ``--cores 4 --resources gpu=1``, each ``wsidistill`` process timed by a wrapper on PATH;
* on the cluster, with the SLURM profile as a site would use it, only partition and account pointed
  at the test cluster's and the GPU requests dropped (the test node has no GPU): the profile's own
  ``default-resources`` and ``set-resources`` with those keys replaced (see ``cluster_overrides``).

On the cluster extraction, Teacher, Teacher cache, Students, inference and the table all go through
sbatch; the outputs must equal the local run's (training on CPU with the same seed and threads is
deterministic). The status polling is sped up for the test (tests/slurm/snakemake_fast_poll.py).

Without root or the packages this module is skipped with the reason; under CI (CI=true) it fails.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from wsidistill.demo import plan_cohort, write_slide


def _helper(name: str):
    """tests/slurm/<name>.py (the suite imports with --import-mode=importlib: no sys.path entry)."""
    spec = importlib.util.spec_from_file_location(f"wsidistill_tests_slurm_{name}",
                                                  Path(__file__).parent / "slurm" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cluster = _helper("cluster")
ACCOUNT, PARTITION, SlurmCluster, missing_programs = (_cluster.ACCOUNT, _cluster.PARTITION, _cluster.SlurmCluster,
                                                      _cluster.missing_programs)
die_with_parent = _cluster.die_with_parent

PROFILE = Path("workflow/profiles/slurm")
TARGET = "results/tables/comparison.md"
VENV_BIN = Path(sys.executable).parent
FAST_POLL = Path(__file__).parent / "slurm" / "snakemake_fast_poll.py"
GPU_RESOURCE_KEYS = ("gpu", "gpu_model", "gres", "slurm_partition")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


SHEET_COLUMNS = ["slide_id", "path", "patient_id", "split", "annotations"]


def write_sheet(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(row) + "\n" for row in [SHEET_COLUMNS, *rows]))
    return path


def tiny_config(repo_root: Path, sheet: Path) -> dict:
    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config["samples"] = str(sheet)
    config["magnifications"] = [40, 10]
    config.setdefault("extraction", {})["patch_size"] = 64
    config["training"].update(epochs=1, batch_size=16)
    config["methods"] = {"ce": {"ce": 1}, "atplus": {"ce": 1, "fm": 0.1, "atplus": 10}}
    config["seeds"] = [0]
    config["device"] = "cpu"
    return config


def profile(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / PROFILE / "config.yaml").read_text())


def cluster_overrides(repo_root: Path) -> list[str]:
    """The profile's resources with the test cluster's partition and account and no GPU request.

    A key given on the command line replaces that key of the profile entirely, so both keys are
    rebuilt from the profile itself: everything else in them stays as a site would have it.
    """
    settings = profile(repo_root)
    defaults = {**settings["default-resources"], "slurm_partition": PARTITION, "slurm_account": ACCOUNT}
    per_rule = []
    for rule, resources in settings["set-resources"].items():
        kept = {k: v for k, v in resources.items() if k not in GPU_RESOURCE_KEYS}
        per_rule += [f"{rule}:{k}={v}" for k, v in {**kept, "gpu": 0}.items()]
    return ["--default-resources", *(f"{k}={v}" for k, v in defaults.items()), "--set-resources", *per_rule]


class Snakemake:
    """``snakemake`` on ``workdir``/config.yaml in the background; :meth:`wait` gives its result.

    The runs are started together and waited for when needed: the cluster run spends much of its
    time waiting on SLURM, which the local run's work fills.
    """

    def __init__(self, workdir: Path, repo_root: Path, *args: str, targets=(), env=None, launcher=None, cwd=None,
                 path=()):
        command = [*(launcher or [str(VENV_BIN / "snakemake")]), "--snakefile", str(repo_root / "Snakefile"),
                   "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args, "--", *targets]
        env = env or os.environ
        env = {**env, "PATH": os.pathsep.join([*map(str, path), str(VENV_BIN), env["PATH"]])}
        self.out = (workdir / "snakemake.out").open("w+")
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.out,
                                        stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent)
        self.result = None

    def wait(self) -> subprocess.CompletedProcess:
        if self.result is None:
            self.process.wait()
            self.out.seek(0)
            self.result = subprocess.CompletedProcess(self.process.args, self.process.returncode, self.out.read(), "")
            self.out.close()
        return self.result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # snakemake cancels its SLURM jobs
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.wait()


def snakemake(workdir: Path, repo_root: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return Snakemake(workdir, repo_root, *args, **kwargs).wait()


def on_cluster(cluster: SlurmCluster, workdir: Path, repo_root: Path, *targets: str) -> Snakemake:
    return Snakemake(workdir, repo_root, "--workflow-profile", str(repo_root / PROFILE), *cluster_overrides(repo_root),
                     targets=targets, env=cluster.env, launcher=[sys.executable, str(FAST_POLL)])


def tail(result: subprocess.CompletedProcess, n: int = 6000) -> str:
    return (result.stdout + result.stderr)[-n:]


# ---------------------------------------------------------------------------------------- fixtures
def cohort(tmp_path_factory) -> list[list[str]]:
    """Three 1024 x 768 demo slides, one per split: sample-sheet rows (absolute paths)."""
    out = tmp_path_factory.mktemp("slides")
    rows = []
    for slide in plan_cohort(3, 0):
        files = write_slide(slide, out, width=1024, height=768)
        rows.append([slide.slide_id, str(files["slide"]), slide.patient_id, slide.split, str(files["annotations"])])
    assert {row[3] for row in rows} == {"train", "val", "test"}
    return rows


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    return write_sheet(tmp_path_factory.mktemp("sheet") / "slides.tsv", cohort(tmp_path_factory))


@pytest.fixture(scope="module")
def cluster():
    reason = None
    if os.geteuid() != 0:
        reason = "the single-node SLURM test cluster needs root (slurmd starts jobs as their user)"
    elif missing := missing_programs():
        reason = f"the single-node SLURM test cluster needs {missing}: run `make test-setup` as root"
    if reason:
        if in_ci():
            pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
        pytest.skip(reason)
    cluster = SlurmCluster().start()
    yield cluster
    cluster.stop()


TIMELINE_WRAPPER = """#!/usr/bin/env bash
# Records when each `wsidistill <verb>` process starts and ends (tests/test_slurm.py).
start=$(date +%s.%N)
"$WSIDISTILL_REAL" "$@"
rc=$?
printf '%s\\t%s\\t%s\\t%s\\n' "$1" "$start" "$(date +%s.%N)" "$rc" >> "$WSIDISTILL_TIMELINE"
exit $rc
"""


@pytest.fixture(scope="module")
def local_started(tmp_path_factory, repo_root, sheet):
    workdir = tmp_path_factory.mktemp("local")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(repo_root, sheet)))
    wrapper_dir = tmp_path_factory.mktemp("wrapper")
    (wrapper_dir / "wsidistill").write_text(TIMELINE_WRAPPER)
    (wrapper_dir / "wsidistill").chmod(0o755)
    timeline = workdir / "timeline.tsv"
    env = {**os.environ, "WSIDISTILL_REAL": str(VENV_BIN / "wsidistill"), "WSIDISTILL_TIMELINE": str(timeline)}
    run = Snakemake(workdir, repo_root, "--workflow-profile", "none", "--cores", "4", "--resources", "gpu=1",
                    targets=[TARGET], env=env, path=[wrapper_dir])
    yield workdir, timeline, run
    run.stop()


@pytest.fixture(scope="module")
def local_run(local_started):
    workdir, timeline, run = local_started
    result = run.wait()
    assert result.returncode == 0, tail(result)
    return workdir, timeline, result


@pytest.fixture(scope="module")
def failed_started(cluster, sheet, tmp_path_factory, repo_root):
    """A slide that cannot be read, whose extraction then fails on the cluster."""
    workdir = tmp_path_factory.mktemp("failing")
    rows = [line.split("\t") for line in sheet.read_text().splitlines()[1:]]
    (workdir / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 100)  # a TIFF header and nothing else
    rows.append(["broken", str(workdir / "broken.svs"), "p-broken", "train", rows[0][4]])
    config = tiny_config(repo_root, write_sheet(workdir / "slides.tsv", rows))
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run = on_cluster(cluster, workdir, repo_root, "results/patches/broken.zarr")
    yield workdir, run
    run.stop()


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory, repo_root, sheet, local_started, failed_started):
    """The tiny workflow on the cluster (the local and the failing run start first and run alongside)."""
    workdir = tmp_path_factory.mktemp("cluster")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(repo_root, sheet)))
    run = on_cluster(cluster, workdir, repo_root, TARGET)
    result = run.wait()
    assert result.returncode == 0, tail(result) + "\n" + cluster.log_tails()
    return workdir, result


def cluster_jobs(cluster: SlurmCluster, workdir: Path) -> list[dict]:
    jobs = cluster.sacct("JobID", "JobName", "Account", "Partition", "State", "ExitCode", "Comment", "WorkDir",
                         "AllocTRES")
    return [job for job in jobs if Path(job["WorkDir"]) == workdir]


def rule_of(job: dict) -> str:
    return re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", job["Comment"]).group(1)


# ------------------------------------------------------------------------------------------- tests
def test_every_cluster_job_went_through_sbatch(cluster_run, cluster):
    workdir, result = cluster_run
    jobs = cluster_jobs(cluster, workdir)
    # one sbatch allocation per Snakemake job, each in the accounting database with its rule
    planned = job_stats(result.stdout + result.stderr)
    assert Counter(rule_of(job) for job in jobs) == planned
    assert {"extract", "train_teacher", "distill", "evaluate"} <= set(planned) and sum(planned.values()) >= 8
    assert {(job["State"], job["ExitCode"], job["Account"], job["Partition"]) for job in jobs} == {
        ("COMPLETED", "0:0", ACCOUNT, PARTITION)}
    assert len({job["JobName"] for job in jobs}) == 1  # the run's id: how the plugin asks sacct for states
    assert not any("gpu" in job["AllocTRES"] for job in jobs)
    cpus = {rule_of(job): re.search(r"cpu=(\d+)", job["AllocTRES"]).group(1) for job in jobs}
    assert cpus["extract"] == cpus["distill"] == "2"  # the rules' threads: 2 -> --cpus-per-task=2


def job_stats(output: str) -> Counter:
    """Snakemake's "Job stats" table: rule -> number of jobs (without the total)."""
    table = re.search(r"Job stats:\njob +count\n[- ]+\n(.*?)\ntotal +\d+", output, re.S)
    assert table, output[-3000:]
    return Counter({rule: int(n) for rule, n in (line.split() for line in table.group(1).splitlines())})


@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp:UserWarning")
def test_cluster_outputs_equal_local_outputs(cluster_run, local_run):
    """Every output file is the same, byte for byte, but for run times and the run's own directory.

    JSON (summaries, metrics, Zarr metadata) is compared parsed, without timing fields and with the
    working directory replaced by a placeholder; everything else (Zarr chunks, models, tables, plots)
    by its bytes, except each model's history.csv without its `seconds` column.
    """
    remote, _ = cluster_run
    local, _, _ = local_run
    files = outputs(local)
    assert files == outputs(remote)
    assert {"tables/comparison.csv", "models/atplus_10x/seed0/model.pt", "metrics/atplus_10x/seed0.json",
            "patches/demo000.zarr/zarr.json"} <= {str(f) for f in files}
    for name in files:
        a, b = local / "results" / name, remote / "results" / name
        if name.suffix == ".json":
            assert comparable_json(a, local) == comparable_json(b, remote), name
        elif name.name == "history.csv":
            assert drop_column(a, "seconds") == drop_column(b, "seconds"), name
        else:
            assert a.read_bytes() == b.read_bytes(), name
    # the numbers behind the (one-epoch, all-zero-kappa) table are not trivially equal: real probabilities
    predictions = zarr.open_group(str(remote / "results/predictions/atplus_10x/seed0.zarr"), mode="r")
    arrays = [array[...] for _, group in predictions.groups() for _, array in group.arrays()]
    assert any(np.issubdtype(x.dtype, np.floating) and x.size and np.ptp(x) > 0 for x in arrays)


def outputs(workdir: Path) -> list[Path]:
    """Output files, not logs or records of how long things took."""
    results = workdir / "results"
    names = (p.relative_to(results) for p in results.rglob("*") if p.is_file())
    return sorted(n for n in names if n.parts[0] not in ("logs", "benchmarks") and n.name != ".snakemake_timestamp"
                  and not (n.parts[0] == "tables" and n.stem == "cost"))


TIMING_KEYS = {"timings", "seconds", "patch_sets_per_second", "patches_per_second"}


def comparable_json(path: Path, workdir: Path):
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in TIMING_KEYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace(str(workdir), "<workdir>")
        return value

    return clean(json.loads(path.read_text()))


def drop_column(path: Path, column: str) -> list[list[str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != column]
    return [[row[i] for i in keep] for row in rows]


def test_a_failed_cluster_job_names_its_logs(failed_started, cluster, repo_root):
    """A slide that cannot be read makes its extraction fail on the cluster; the report names the logs."""
    tmp_path, run = failed_started
    result = run.wait()
    output = result.stdout + result.stderr
    assert result.returncode != 0
    reports = re.findall(r"Error in rule extract:\n(.*?)\n    external_jobid: (\d+)", output, re.S)
    assert reports, output[-6000:]
    jobs = cluster_jobs(cluster, tmp_path)
    # every attempt (the profile retries once) really ran and failed on the cluster, and was reported
    assert len(jobs) == len(reports) == 1 + int(profile(repo_root).get("retries", 0))
    assert {(job["State"], rule_of(job)) for job in jobs} == {("FAILED", "extract")}
    assert {job["JobID"] for job in jobs} == {job_id for _, job_id in reports}
    for report, job_id in reports:
        logs = re.search(r"^    log: (.*) \(check log file\(s\) for error details\)$", report, re.M).group(1)
        logs = logs.split(", ")
        # the report names the rule's log, which says what is wrong with which file ...
        assert "results/logs/extract/broken.log" in logs
        # ... and the job's SLURM log
        slurm_log = tmp_path / f".snakemake/slurm_logs/rule_extract/broken/{job_id}.log"
        assert str(slurm_log) in logs
        assert "Error in rule extract" in slurm_log.read_text()
    reason = (tmp_path / "results/logs/extract/broken.log").read_text()
    assert "broken.svs" in reason and "not a slide format OpenSlide reads" in reason


def test_gpu_jobs_never_overlap_locally(local_run):
    """``--resources gpu=1``: at most one training or inference process at any moment.

    Times come from a wrapper around ``wsidistill`` on PATH (start and end of each process; a rule
    ``x_y`` runs ``wsidistill x-y``). With four cores there is room for two two-thread jobs at once,
    and CPU-only jobs do run side by side, so the GPU jobs ran one at a time because of the limit.
    """
    _, timeline, result = local_run
    gpu_jobs = Counter(rule.replace("_", "-") for rule, resources in job_blocks(result.stdout + result.stderr)
                       if resources.get("gpu") == "1")
    assert {"train-teacher", "distill", "evaluate"} <= set(gpu_jobs)
    records = [line.split("\t") for line in timeline.read_text().splitlines()]
    spans = [(verb, float(start), float(end)) for verb, start, end, rc in records if rc == "0"]
    gpu = sorted((start, end, verb) for verb, start, end in spans if verb in gpu_jobs)
    assert Counter(verb for _, _, verb in gpu) == gpu_jobs
    for (s1, e1, v1), (s2, e2, v2) in zip(gpu, gpu[1:]):
        assert e1 <= s2, f"{v1} ({s1:.3f}-{e1:.3f}) overlaps {v2} ({s2:.3f}-{e2:.3f})"
    cpu = sorted((start, end) for verb, start, end in spans if verb not in gpu_jobs)
    assert any(s2 < e1 for (_, e1), (s2, _) in zip(cpu, cpu[1:])), "no parallelism at all: the check proves nothing"


def job_blocks(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of each job Snakemake lists, in a run or a dry run."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if head and resources:
            jobs.append((head.group(1), dict(kv.split("=", 1) for kv in resources.group(1).split(", "))))
    return jobs


def test_dry_run_with_the_slurm_profile_shows_gpu_requests(repo_root, tmp_path):
    shutil.copy(repo_root / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(tmp_path, repo_root, "-n", "--workflow-profile", str(PROFILE), cwd=repo_root)
    assert result.returncode == 0, tail(result)
    jobs = dict(job_blocks(result.stdout + result.stderr))
    settings = profile(repo_root)
    gpu_rules = {rule for rule, resources in jobs.items() if resources.get("gpu") == "1"}
    assert {"train_teacher", "distill", "evaluate"} <= gpu_rules
    assert gpu_rules == set(settings["set-resources"]), "every GPU rule, and only those, go to the GPU partition"
    for rule, resources in jobs.items():
        gpu_partition = settings["set-resources"].get(rule, {}).get("slurm_partition")
        assert resources["slurm_partition"] == (gpu_partition or settings["default-resources"]["slurm_partition"])
        assert resources["slurm_account"] == settings["default-resources"]["slurm_account"]
        assert ("gpu_model" in resources) == (rule in gpu_rules)
        for key in ("mem_mb", "runtime"):
            assert int(resources[key]) > 0
    assert "extract" in jobs and len(set(jobs) - gpu_rules) >= 3
