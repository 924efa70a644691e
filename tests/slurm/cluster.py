"""A throwaway single-node SLURM cluster on localhost, for tests/test_slurm.py.

Everything lives in one temporary directory and on free loopback ports, so it never touches
/etc/slurm, /etc/munge or a system MariaDB, and two test sessions on one host do not collide:

    munged      its own key and socket (AuthInfo / AccountingStoragePass point Slurm at it)
    mariadbd    a private datadir on 127.0.0.1:<port>, only for slurmdbd
    slurmdbd    accounting storage, so ``sacct`` and ``sacctmgr`` work as on a real site
    slurmctld   one partition, ``debug``
    slurmd      one node, this host's short hostname, no GRES (no GPU)

The account ``ACCOUNT`` is registered and enforced (AccountingStorageEnforce=associations), so a job
only runs when it is submitted with a valid account. Programs come from Debian's slurm-wlm, slurmdbd,
munge and mariadb-server-core packages (``make test-setup`` installs them). Every daemon runs in the
foreground as a child of this process and is stopped by :meth:`SlurmCluster.stop`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PARTITION = "debug"
ACCOUNT = "wsidistill_test"
CLUSTER_NAME = "wsidistill"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROGRAMS = ("munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "srun", "squeue", "sacct", "sacctmgr", "scancel", "sinfo")


def which(program: str) -> str | None:
    return shutil.which(program, path=f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN_PATH}")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if which(p) is None]


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ClusterError(RuntimeError):
    pass


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even if it is killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class SlurmCluster:
    """Start with :meth:`start`; ``env`` is what a SLURM client (sbatch, snakemake) needs."""

    def __init__(self, root: Path | None = None, *, cpus: int | None = None, memory_mb: int = 8000):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="wsidistill-slurm-"))
        # munged wants the socket's directory searchable by all; mkdtemp makes 0700.
        self.root.chmod(0o755)
        self.hostname = socket.gethostname().split(".")[0]
        # at least 4: two 2-thread jobs side by side even on a 2-core machine (they interleave their
        # start-up and polling gaps; memory is not a consumable here, so only CPUs limit what runs)
        self.cpus = cpus or max(4, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.db_port, self.dbd_port, self.ctld_port, self.slurmd_port = free_ports(4)
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.logs = self.root / "log"
        self.bin = self.root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}{os.pathsep}{SBIN_PATH}"}
        for name in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTERS", "SBATCH_ACCOUNT", "SBATCH_PARTITION"):
            self.env.pop(name, None)
        self.processes: list[tuple[str, subprocess.Popen]] = []

    # ------------------------------------------------------------------ helpers
    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def _daemon(self, name: str, *command: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "w")
        process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        out.close()
        self.processes.append((name, process))
        return process

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise ClusterError(f"{name} exited ({process.returncode}) while waiting for {what}\n"
                                       + self.log_tails())
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError, ClusterError):
                pass
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.log_tails())

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.logs.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        for sub in ("etc", "munge", "log", "state", "spool", "db", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_* variable, SLURM_CONF
        # included, from the environment of the `srun` it starts inside a job; without SLURM_CONF,
        # srun looks for /etc/slurm/slurm.conf (which this cluster leaves alone) and fails with
        # "Could not establish a configuration source". Jobs inherit PATH, so an srun first on PATH
        # puts it back.
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF="{self.conf}"\nexec "{which("srun")}" "$@"\n')
        srun.chmod(0o755)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(f"""\
# Generated by tests/slurm/cluster.py: a single-node test cluster.
ClusterName={CLUSTER_NAME}
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# the node's resources are those below, whatever the host has (memory is requested, not consumed)
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
InactiveLimit=0
KillWait=5
# accounting: slurmdbd on a private MariaDB; AccountingStoragePass names munged's socket for it
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
""")
        dbd_conf = self.conf.parent / "slurmdbd.conf"  # slurmdbd reads it next to $SLURM_CONF
        dbd_conf.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost={self.hostname}
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={self.logs}/slurmdbd.log
PidFile={r}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        dbd_conf.chmod(0o600)
        (r / "db" / "init.sql").write_text(
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';\n"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlurmCluster:
        missing = missing_programs()
        if missing:
            raise ClusterError(f"missing programs {missing}; run `make test-setup` as root")
        self._write_config()
        r = self.root
        try:
            self._daemon("munged", which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                         f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                         f"--log-file={self.logs}/munged.log", f"--seed-file={r}/munge/munged.seed")
            db = [f"--datadir={r}/db/data", "--user=root", "--innodb-log-file-size=8M",
                  "--innodb-buffer-pool-size=32M"]
            self.run(which("mariadb-install-db"), "--no-defaults", *db, "--skip-test-db",
                     "--auth-root-authentication-method=normal", timeout=120)
            self._daemon("mariadbd", which("mariadbd"), "--no-defaults", *db, f"--port={self.db_port}",
                         "--bind-address=127.0.0.1", f"--socket={r}/db/mysqld.sock", "--skip-name-resolve",
                         f"--pid-file={r}/db/mariadbd.pid", f"--init-file={r}/db/init.sql",
                         "--innodb-lock-wait-timeout=900")
            self._wait("munged", self.munge_socket.exists)
            self._wait("mariadbd", lambda: self._port_open(self.db_port))
            self._daemon("slurmdbd", which("slurmdbd"), "-D")
            self._wait("slurmdbd", lambda: self._port_open(self.dbd_port)
                       and self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
            self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
            self.run("sacctmgr", "-i", "add", "account", ACCOUNT, "Description=tests", "Organization=wsidistill")
            self.run("sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}")
            self._daemon("slurmctld", which("slurmctld"), "-D", "-i", "-f", str(self.conf))
            self._wait("slurmctld", lambda: self.run("scontrol", "ping").stdout.count("UP") >= 1)
            self._daemon("slurmd", which("slurmd"), "-D", "-f", str(self.conf), "-N", self.hostname)
            self._wait("the node to be idle", lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel what is left, stop the daemons (newest first) and remove the directory."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.processes):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ queries
    def sacct(self, *fields: str, name: str | None = None, all_steps: bool = False) -> list[dict]:
        """Jobs from the accounting database, one dict per job (``-X``: allocations, not steps)."""
        fields = fields or ("JobID", "JobName", "Account", "Partition", "State", "ExitCode", "Comment")
        command = ["sacct", "--parsable2", "--noheader", "--allusers", "--starttime", "now-1days",
                   "--format", ",".join(fields)]
        if not all_steps:
            command.append("-X")
        if name:
            command += ["--name", name]
        out = self.run(*command).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


if __name__ == "__main__":  # bring one up by hand: python tests/slurm/cluster.py
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = SlurmCluster().start()
    # Both are needed: jobs find the cluster through the srun wrapper on PATH (see _write_config).
    print(f'export SLURM_CONF={cluster.conf} PATH="{cluster.bin}:$PATH"   # Ctrl-C (or SIGTERM) stops the cluster',
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
