"""`python tests/slurm_snakemake.py ARGS` = `python -m snakemake ARGS`, with the Slurm executor's
status polling held at its first interval, for tests/test_slurm.py.

snakemake-executor-plugin-slurm 2.8.0 waits `--slurm-init-seconds-before-status-checks` after
a poll that saw a job finish, and 10 s more after each poll that saw none, up to 180 s
(`check_active_jobs`: the +10 step and the cap are constants, no setting reaches them;
Snakemake's `--seconds-between-status-checks` sets only the sleep before the first poll). On a
cluster of hours-long jobs that is the right policy. In the tests each job takes a few seconds,
so the steps were ~220 s of the whole-workflow test's 323 s: time spent waiting for jobs Slurm
had already finished. Capping the interval changes when the executor asks, not what it asks or
does with the answer (submission, squeue parsing, failure messages are the plugin's own).
"""

from __future__ import annotations

import os
import sys

from snakemake_executor_plugin_slurm import Executor

CAP_S = 2  # the tests' --slurm-init-seconds-before-status-checks: poll every 2 s throughout

_interval = Executor.next_seconds_between_status_checks  # defined on the base RemoteExecutor
Executor.next_seconds_between_status_checks = property(
    _interval.fget, lambda self, seconds: _interval.fset(self, min(seconds, CAP_S))
)

if __name__ == "__main__":
    from snakemake.cli import main

    # As `python -m snakemake` would: the project in the working directory (a test's copy),
    # not this folder, is first on sys.path, so the Snakefile imports that copy's `pipeline`.
    sys.path[0] = os.getcwd()
    sys.argv[0] = "snakemake"
    main()
