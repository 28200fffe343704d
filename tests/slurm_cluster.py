"""A real one-node Slurm cluster on this machine, for tests/test_slurm.py and docs/slurm.md.

`python tests/slurm_cluster.py start DIR` installs Debian's slurm-wlm and munge through apt when
they are missing, writes a slurm.conf for this host (CPUs and memory read from the machine)
into DIR, starts munged, slurmctld and slurmd in the background and waits until the node is
idle; `stop DIR` ends exactly the processes `start` started (their pids are in DIR/pids).
Everything lives in DIR: nothing under /etc/slurm is written. Clients find the cluster
through SLURM_CONF=DIR/slurm.conf, or on this node through the configless copy slurmd
keeps in /run/slurm/conf.

No systemd and no accounting database, so: proctrack/linuxproc (no cgroups), task/none,
accounting_storage/none (job status then comes from squeue, which remembers a finished job
for MinJobAge seconds), select/cons_tres with memory as a consumable resource. Two fake GPUs
(gres.conf naming two character devices that are /dev/null) let `--gpus=1` jobs be scheduled
on a machine without a GPU: Slurm hands them out and sets CUDA_VISIBLE_DEVICES /
SLURM_JOB_GPUS exactly as it would for real devices; the jobs themselves run on the CPU
(PIPELINE_DEVICE=cpu).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
FAKE_GPUS = 2
# squeue must still list a finished job when the executor polls: the plugin falls back to
# sacct (which has no data without accounting) unless MinJobAge >= 3x its first poll delay.
MIN_JOB_AGE_S = 300
# scancel: SIGTERM, then SIGKILL this many seconds later.
KILL_WAIT_S = 5


class Unavailable(RuntimeError):
    """Slurm cannot be set up here (not root, no apt, ...): the tests skip with this reason."""


def _run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


def _with_sbin() -> None:
    """Put /usr/sbin and /sbin on PATH: Debian installs the daemons, mungekey and runuser
    there, and a PATH cut to /usr/local/bin:/usr/bin:/bin (CI's, a cron job's) leaves them
    out. This process's PATH, so the clients and daemons it starts find them too."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in ("/usr/sbin", "/sbin") if d not in parts]
    os.environ["PATH"] = os.pathsep.join([*parts, *extra])


def install() -> None:
    """slurm-wlm and munge from Debian's registry, unless slurmctld is already there."""
    _with_sbin()
    if all(shutil.which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise Unavailable("slurm-wlm is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable("slurm-wlm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (("apt-get", "update", "-qq"),
                ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES)):
        result = _run(*cmd, check=False, env=env)
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()[-300:]}")
    # The package's post-install starts its own daemons where systemd runs; here it does
    # not, so nothing else holds the ports. A stray one would make start() fail loudly.


def machine() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine, as slurmd will find them."""
    cpus = os.cpu_count() or 1
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    # RealMemory above what slurmd measures drains the node; 90 % leaves room for the OS.
    return cpus, int(total_kb / 1024 * 0.9)


def write_config(directory: Path) -> Path:
    node = socket.gethostname().split(".")[0]
    cpus, memory_mb = machine()
    for sub in ("state", "spool", "gpus"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for i in range(FAKE_GPUS):
        # slurmd accepts only character devices; these are /dev/null's (major 1, minor 3),
        # so nothing a job opens there is ever a real device.
        fake = directory / "gpus" / f"fake{i}"
        if not fake.exists():
            os.mknod(fake, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (directory / "gres.conf").write_text(
        f"NodeName={node} Name=gpu File={directory}/gpus/fake[0-{FAKE_GPUS - 1}]\n"
    )
    conf = directory / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=supcon-test",
        f"SlurmctldHost={node}",
        "SlurmUser=root",
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge",
        f"StateSaveLocation={directory}/state",
        f"SlurmdSpoolDir={directory}/spool",
        f"SlurmctldPidFile={directory}/slurmctld.pid",
        f"SlurmdPidFile={directory}/slurmd.pid",
        f"SlurmctldLogFile={directory}/slurmctld.log",
        f"SlurmdLogFile={directory}/slurmd.log",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        # Memory limits enforced by polling each job's processes once a second.
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=task=1",
        "JobAcctGatherParams=OverMemoryKill",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "GresTypes=gpu",
        f"MinJobAge={MIN_JOB_AGE_S}",
        f"KillWait={KILL_WAIT_S}",
        "ReturnToService=2",
        f"NodeName={node} CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _munge_key() -> None:
    key = Path("/etc/munge/munge.key")
    if not key.exists():  # the package normally creates it; create one if it did not
        _run("mungekey", "--create", "--keyfile", str(key))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)


def start(directory: Path, timeout_s: float = 60) -> dict[str, str]:
    """Install if needed, configure, start the daemons; the environment clients need."""
    install()
    directory = Path(directory).resolve()
    conf = write_config(directory)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    node = socket.gethostname().split(".")[0]
    _munge_key()
    # The Popen objects are kept: one dropped while its daemon runs is reaped by subprocess
    # when it exits, and a later waitpid of its pid would raise ECHILD instead of saying so.
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(directory / f"{name}.out", "w") for name in DAEMONS}  # noqa: SIM115
    try:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        commands = {
            # munged refuses root; the munge user owns the key. -F: stay in the foreground,
            # so the pid we hold is the daemon's.
            "munged": ["runuser", "-u", "munge", "--", "munged", "-F"],
            "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
            # configless: slurmd fetches the config from slurmctld and caches it under
            # /run/slurm/conf, where every client on the node finds it. The Slurm executor's
            # job step calls srun with SLURM_* (SLURM_CONF included) removed from its
            # environment, so a config only SLURM_CONF names is invisible to it.
            "slurmd": ["slurmd", "-D", "--conf-server", node, "-N", node],
        }
        for name in DAEMONS:
            procs[name] = subprocess.Popen(commands[name], env=env, stdout=logs[name],
                                           stderr=subprocess.STDOUT, start_new_session=True)
            (directory / "pids").write_text("".join(f"{p.pid}\n" for p in procs.values()))
            if name == "munged":
                _wait(lambda: _run("munge", "-n", check=False).returncode == 0, timeout_s,
                      "munged did not answer", directory)
        _wait(lambda: _node_state(env) == "idle", timeout_s,
              "the node did not become idle", directory)
        # A cluster already running here (ports taken) would answer sinfo for ours.
        # (an error, not Unavailable: the tests would be skipped for a cluster that is there)
        exited = [f"{name} (status {proc.returncode})" for name, proc in procs.items()
                  if proc.poll() is not None]
        if exited:
            raise RuntimeError(f"{', '.join(exited)} exited at start: daemons of an earlier "
                               f"run still up? (`pgrep -a 'slurm|munge'`){_tails(directory)}")
    except BaseException:
        stop(directory)
        raise
    finally:
        for f in logs.values():
            f.close()
    return env


def _node_state(env: dict[str, str]) -> str:
    result = _run("sinfo", "--noheader", "--format=%T", env=env, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _wait(ready, timeout_s: float, what: str, directory: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} within {timeout_s} s{_tails(directory)}")
        time.sleep(0.5)


def _tails(directory: Path) -> str:
    """The last lines of every daemon's output and log, for an error message."""
    return "".join(
        f"\n--- {p.name}:\n" + "\n".join(p.read_text().splitlines()[-15:])
        for p in sorted(directory.glob("*.out")) + sorted(directory.glob("*.log"))
    )


def stop(directory: Path) -> None:
    """SIGTERM exactly the daemons start() started (newest first), SIGKILL if they linger."""
    pid_file = Path(directory) / "pids"
    if not pid_file.exists():
        return
    pids = [int(p) for p in pid_file.read_text().split()]
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in reversed(pids):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (started by another process): poll
                try:
                    os.kill(pid, 0)
                    finished = 0
                except ProcessLookupError:
                    finished = pid
            if finished:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pid_file.unlink()
    # the configless copy our slurmd cached: left behind, it would point clients at a
    # cluster that no longer runs
    shutil.rmtree("/run/slurm/conf", ignore_errors=True)


if __name__ == "__main__":
    usage = "usage: python tests/slurm_cluster.py start|stop DIR"
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(usage)
    where = Path(sys.argv[2])
    if sys.argv[1] == "start":
        try:
            start(where)
        except Unavailable as e:
            sys.exit(f"slurm unavailable: {e}")
        print(f"export SLURM_CONF={where.resolve() / 'slurm.conf'}")
    else:
        stop(where)
