"""Which device a job runs on, and one GPU per concurrently running job.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but hands out no
device ids (snakemake issue #281). Each job therefore claims a free slot itself: one lock
file per visible GPU, held with ``flock`` for the life of the process. The kernel drops a
flock when its file descriptor closes, which it does on every exit, SIGKILL included, so a
killed job never leaves a slot taken.

``PIPELINE_DEVICE`` chooses: ``cpu``; ``cuda`` (a GPU is required: no silent fallback to
the CPU); unset or ``auto``: a GPU when torch sees one, else the CPU, said in the log.
``CUDA_VISIBLE_DEVICES`` is honoured: the slots are the devices it lists.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Held for the life of the process: closing it (on any exit) releases the slot.
_held: list[int] = []


class DeviceError(EnvironmentError):
    """The requested device is unavailable."""


def lock_dir() -> Path:
    """Where slot locks live: per machine, shared by every job of every checkout on it."""
    default = Path(tempfile.gettempdir()) / "supcon-geometry-device-locks"
    path = Path(os.environ.get("PIPELINE_LOCK_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def acquire_slot(slots: list[str], directory: Path, poll_seconds: float = 0.2,
                 timeout_seconds: float | None = None) -> int:
    """Index of the first slot whose lock this process could take; waits while all are held.

    ``slots`` name the physical devices (e.g. CUDA_VISIBLE_DEVICES entries), so two jobs
    that see the same GPU under different indices still contend for the same lock.
    """
    if not slots:
        raise DeviceError("no device slots to choose from")
    start = time.monotonic()
    announced = False
    while True:
        for index, slot in enumerate(slots):
            fd = os.open(directory / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _held.append(fd)
            return index
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise DeviceError(f"all device slots {slots} stayed busy for {timeout_seconds} s")
        if not announced:
            log.info("all device slots %s busy; waiting for one", slots)
            announced = True
        time.sleep(poll_seconds)


def visible_gpus(count: int) -> list[str]:
    """Names of the GPUs this process sees, physical where CUDA_VISIBLE_DEVICES says."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        names = [name.strip() for name in listed.split(",") if name.strip()]
        return names[:count]
    return [str(i) for i in range(count)]


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
        log.warning("no CUDA device visible: running on the CPU")
        return torch.device("cpu")
    slots = visible_gpus(torch.cuda.device_count())
    index = acquire_slot(slots, lock_dir())
    log.info("using GPU slot %s (cuda:%d)", slots[index], index)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
