"""Which device a job runs on, and how many concurrently running jobs share one GPU.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but hands out no
device ids (snakemake issue #281). Each job therefore claims a free slot itself: every device
has ``PIPELINE_SLOTS_PER_DEVICE`` slots (default 1), each one lock file held with ``flock``
for the life of the process. The kernel drops a flock when its file descriptor closes, which
it does on every exit, SIGKILL included, so a killed job never leaves a slot taken.

Environment (execution settings, not params: they never change a result):

- ``PIPELINE_DEVICE``: ``cpu``; ``cuda`` (a GPU is required: no silent fallback to the CPU);
  unset or ``auto``: a GPU when torch sees one, else the CPU, said in the log. Inside a Slurm
  job that Slurm gave GPUs, ``auto`` without a usable GPU is an error, not a CPU run.
- ``PIPELINE_SLOTS_PER_DEVICE``: how many jobs may run on one device at once (an integer
  >= 1). Small models leave a GPU mostly idle; 2-4 runs per device raise the throughput.
  With it, ``snakemake --resources gpu=N`` counts *job slots*, not GPUs: N = devices x slots
  (every GPU rule declares gpu=1), e.g. 2 GPUs x 3 slots -> ``--resources gpu=6``.
- ``PIPELINE_LOCK_DIR``: where the lock files live (default: a folder in the machine's temp
  directory, shared by every job of every checkout on it). Lock names carry the host name,
  so a folder shared by several machines is safe too.

Which device a slot names: ``CUDA_VISIBLE_DEVICES`` is honoured (the slots are the devices it
lists). Inside a Slurm job (``SLURM_JOB_ID`` set) the devices are the ones Slurm allocated,
named by their node-wide ids in ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``: under
``ConstrainDevices=yes`` every job sees its GPU as index 0 in ``CUDA_VISIBLE_DEVICES``, so
keying the locks by that index would make two jobs on different GPUs block each other.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SLOTS_ENV = "PIPELINE_SLOTS_PER_DEVICE"

# Held for the life of the process: closing it (on any exit) releases the slot.
_held: list[int] = []


class DeviceError(EnvironmentError):
    """The requested device is unavailable."""


@dataclass(frozen=True)
class Claim:
    index: int  # position in the device list (the torch device index)
    device: str  # the device's name (the lock key)
    slot: int  # which of the device's slots, 0 .. slots_per_device-1


def lock_dir() -> Path:
    """Where slot locks live: per machine, shared by every job of every checkout on it."""
    default = Path(tempfile.gettempdir()) / "supcon-geometry-device-locks"
    path = Path(os.environ.get("PIPELINE_LOCK_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def slots_per_device() -> int:
    """``PIPELINE_SLOTS_PER_DEVICE``: jobs allowed on one device at once (default 1)."""
    raw = os.environ.get(SLOTS_ENV, "1").strip()
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if slots < 1:
        raise DeviceError(f"{SLOTS_ENV}: expected an integer >= 1, got {raw!r}")
    return slots


def acquire_slot(devices: list[str], directory: Path, per_device: int = 1,
                 poll_seconds: float = 0.2, timeout_seconds: float | None = None) -> Claim:
    """The first free slot of any device (taken by this process); waits while all are held.

    ``devices`` name the physical devices (e.g. CUDA_VISIBLE_DEVICES entries), so two jobs
    that see the same GPU under different indices still contend for the same locks. Slots
    are tried slot-major (slot 0 of every device, then slot 1, ...): jobs spread over the
    devices before any device takes a second one.
    """
    if not devices:
        raise DeviceError("no devices to choose from")
    if per_device < 1:
        raise DeviceError(f"slots per device must be >= 1, got {per_device}")
    host = socket.gethostname()
    start = time.monotonic()
    announced = False
    while True:
        for slot in range(per_device):
            for index, device in enumerate(devices):
                path = directory / f"{host}-device-{device}-slot{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _held.append(fd)
                return Claim(index, device, slot)
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise DeviceError(f"all {per_device} slot(s) of devices {devices} stayed busy "
                              f"for {timeout_seconds} s")
        if not announced:
            log.info("all %d slot(s) of devices %s busy; waiting for one", per_device, devices)
            announced = True
        time.sleep(poll_seconds)


def visible_gpus(count: int) -> list[str]:
    """Names of the GPUs this process sees, physical where CUDA_VISIBLE_DEVICES says."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        names = [name.strip() for name in listed.split(",") if name.strip()]
        return names[:count]
    return [str(i) for i in range(count)]


def slurm_gpus() -> list[str] | None:
    """Node-wide ids of the GPUs Slurm allocated to this job (step), or None outside Slurm
    or without GPUs. Unlike CUDA_VISIBLE_DEVICES they are never renumbered by cgroups."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        listed = os.environ.get(name, "").strip()
        if listed:
            return [g.strip() for g in listed.split(",") if g.strip()]
    return None


def device_names(count: int) -> list[str]:
    """The lock key of each of the ``count`` GPUs torch numbers 0..count-1."""
    allocated = slurm_gpus()
    if allocated is None:
        return visible_gpus(count)
    if len(allocated) != count:
        # e.g. CUDA_VISIBLE_DEVICES narrowed inside the job: which id is which is unknown,
        # and a guess could put two jobs on one GPU.
        raise DeviceError(
            f"Slurm job {os.environ['SLURM_JOB_ID']} was allocated GPU(s) "
            f"{','.join(allocated)} (SLURM_STEP_GPUS/SLURM_JOB_GPUS) but torch sees {count} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return [f"gpu{g}" for g in allocated]


def pick_device():
    """The torch device for this job; for a GPU, a slot of its own (held until exit)."""
    import torch

    choice = os.environ.get("PIPELINE_DEVICE", "auto").strip().lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"PIPELINE_DEVICE: expected auto, cpu or cuda, got {choice!r}")
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if choice == "cuda":
            raise DeviceError("PIPELINE_DEVICE=cuda but torch sees no CUDA device")
        allocated = slurm_gpus()
        if allocated:
            raise DeviceError(
                f"Slurm job {os.environ['SLURM_JOB_ID']} was allocated GPU(s) "
                f"{','.join(allocated)} but torch sees no CUDA device; set PIPELINE_DEVICE=cpu "
                "to run on the CPU on purpose"
            )
        log.warning("no CUDA device visible: running on the CPU")
        return torch.device("cpu")
    names = device_names(torch.cuda.device_count())
    claim = acquire_slot(names, lock_dir(), slots_per_device())
    log.info("using GPU %s slot %d (cuda:%d)", claim.device, claim.slot, claim.index)
    torch.cuda.set_device(claim.index)
    return torch.device("cuda", claim.index)
