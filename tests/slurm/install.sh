#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs for its single-node SLURM cluster: Debian's Slurm
# (slurmctld, slurmd, client commands), slurmdbd with a MariaDB server for accounting (sacct), and
# munge. Idempotent: does nothing when every program is already there. Run by `make test-setup`.
#
# Needs root (CI runs as root). Without root it only says what is missing: tests/test_slurm.py then
# skips with that reason, or fails when CI=true.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server-core mariadb-client-core)
PROGRAMS=(munged mariadb-install-db mariadbd slurmdbd slurmctld slurmd sbatch srun squeue sacct sacctmgr scancel sinfo)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
for program in "${PROGRAMS[@]}"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "test-setup: SLURM, munge and MariaDB are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test-setup: missing ${missing[*]} and not root, so not installing ${PACKAGES[*]};" \
         "tests/test_slurm.py will skip (or fail under CI=true)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-setup: missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}" >&2
    exit 1
fi

echo "test-setup: installing ${PACKAGES[*]} (missing: ${missing[*]})"
# Packages must not start their system services (the test runs its own daemons): the Debian way is
# a policy-rc.d that refuses, kept only for this install when there is none already.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
