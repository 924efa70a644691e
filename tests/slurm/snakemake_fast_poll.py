"""``snakemake`` with the SLURM executor asking for job states every second: for the tests only.

The plugin waits 40 s before its first status query and then 10 s longer after every query that
finds no finished job (up to 180 s), which is right for a shared production cluster and turns a
two-minute test into a ten-minute one. Nothing else changes: jobs still go through sbatch and their
states still come from sacct. Usage: python snakemake_fast_poll.py <snakemake arguments>.
"""

import os
import sys

import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main

SECONDS = float(os.environ.get("WSIDISTILL_TEST_POLL_SECONDS", "1"))
slurm.Executor.next_seconds_between_status_checks = property(lambda self: SECONDS, lambda self, value: None)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
