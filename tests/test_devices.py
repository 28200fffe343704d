"""Device slots: locks under contention and SIGKILL, several slots per device, and the GPUs a
Slurm allocation names (fake devices: no GPU is needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.infra import devices

# A job as Snakemake would start it: claim a slot, record the interval, exit. Until as many
# jobs as there are slots have held one, each holder waits (at most 5 s) for the others: so
# the first wave fills every slot however slowly a loaded machine starts the interpreters.
JOB = """
import json, os, sys, time
from pathlib import Path
from pipeline.infra.devices import acquire_slot
slots, lock_dir, out = sys.argv[1].split(","), Path(sys.argv[2]), Path(sys.argv[3])
per_device = int(sys.argv[4])
claim = acquire_slot(slots, lock_dir, per_device, poll_seconds=0.005)
start = time.monotonic()
(lock_dir / f"held-{os.getpid()}").touch()
deadline = start + 5.0
while len(list(lock_dir.glob("held-*"))) < len(slots) * per_device and time.monotonic() < deadline:
    time.sleep(0.005)
time.sleep(0.02)
out.write_text(json.dumps({"slot": slots[claim.index], "sub": claim.slot, "start": start,
                           "end": time.monotonic()}))
"""


def run_jobs(tmp_path, devices: list[str], per_device: int, jobs: int, workers: int):
    def job(i: int) -> dict:
        out = tmp_path / f"job{i}.json"
        subprocess.run([sys.executable, "-c", JOB, ",".join(devices), str(tmp_path), str(out),
                        str(per_device)], check=True)
        return json.loads(out.read_text())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(job, range(jobs)))


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        peak = max(peak, now)
    return peak


def test_fifty_jobs_over_four_slots_never_share_a_slot(tmp_path):
    slots = ["gpu0", "gpu1", "gpu2", "gpu3"]
    # Like `--resources gpu=4`: at most four jobs at once. Six workers make the scheduler
    # overshoot on purpose: the locks alone must keep two jobs off one slot.
    records = run_jobs(tmp_path, slots, per_device=1, jobs=50, workers=6)
    assert len(records) == 50
    for slot in slots:
        intervals = sorted((r["start"], r["end"]) for r in records if r["slot"] == slot)
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"two jobs held {slot} at once"
    assert {r["slot"] for r in records} == set(slots)


def test_a_killed_holder_releases_its_slot(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from pipeline.infra.devices import acquire_slot;"
         f"acquire_slot(['only'], Path({str(tmp_path)!r})); print('held', flush=True);"
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(devices.DeviceError, match="stayed busy"):
        devices.acquire_slot(["only"], tmp_path, poll_seconds=0.01, timeout_seconds=0.2)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    assert devices.acquire_slot(["only"], tmp_path, timeout_seconds=5).index == 0
    assert time.monotonic() - start < 5


def test_cuda_visible_devices_names_the_slots(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert devices.visible_gpus(2) == ["3", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.visible_gpus(2) == ["0", "1"]


def test_cuda_requested_without_a_gpu_is_an_error(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("PIPELINE_DEVICE", "cuda")
    with pytest.raises(devices.DeviceError, match="PIPELINE_DEVICE=cuda but torch sees no CUDA"):
        devices.pick_device()
    monkeypatch.setenv("PIPELINE_DEVICE", "tpu")
    with pytest.raises(devices.DeviceError, match="expected auto, cpu or cuda, got 'tpu'"):
        devices.pick_device()


def test_forty_jobs_over_two_devices_with_three_slots_each(tmp_path):
    # `--resources gpu=6` with PIPELINE_SLOTS_PER_DEVICE=3 on two GPUs; eight workers
    # overshoot the six slots on purpose.
    records = run_jobs(tmp_path, ["gpu0", "gpu1"], per_device=3, jobs=40, workers=8)
    assert len(records) == 40
    for device in ("gpu0", "gpu1"):
        on_device = [(r["start"], r["end"]) for r in records if r["slot"] == device]
        assert most_at_once(on_device) <= 3, f"more than 3 jobs on {device} at once"
        for sub in range(3):
            on_slot = [(r["start"], r["end"]) for r in records
                       if r["slot"] == device and r["sub"] == sub]
            assert most_at_once(on_slot) == 1, f"two jobs held {device} slot {sub} at once"
    assert {(r["slot"], r["sub"]) for r in records} == {
        (d, s) for d in ("gpu0", "gpu1") for s in range(3)
    }, "every slot is used"


def test_slots_fill_every_device_before_doubling_up(tmp_path):
    claims = [devices.acquire_slot(["a", "b"], tmp_path, 2, timeout_seconds=0) for _ in range(4)]
    assert [(c.device, c.slot) for c in claims] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    with pytest.raises(devices.DeviceError, match="all 2 slot"):
        devices.acquire_slot(["a", "b"], tmp_path, 2, poll_seconds=0.01, timeout_seconds=0.05)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", ""])
def test_slots_per_device_must_be_a_positive_integer(monkeypatch, raw):
    monkeypatch.setenv("PIPELINE_SLOTS_PER_DEVICE", raw)
    with pytest.raises(devices.DeviceError,
                       match=f"PIPELINE_SLOTS_PER_DEVICE: expected an integer >= 1, got '{raw}'"):
        devices.slots_per_device()


def test_slots_per_device_default_and_value(monkeypatch):
    monkeypatch.delenv("PIPELINE_SLOTS_PER_DEVICE", raising=False)
    assert devices.slots_per_device() == 1
    monkeypatch.setenv("PIPELINE_SLOTS_PER_DEVICE", " 3 ")
    assert devices.slots_per_device() == 3


def slurm_job(monkeypatch, job_id: str, job_gpus: str | None, visible: str | None):
    """The environment Slurm gives a job (SLURM_STEP_GPUS unset: the batch step)."""
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    for name, value in (("SLURM_JOB_GPUS", job_gpus), ("CUDA_VISIBLE_DEVICES", visible)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_slurm_allocation_names_the_devices_not_the_renumbered_index(monkeypatch):
    # ConstrainDevices=yes: both jobs see their GPU as CUDA_VISIBLE_DEVICES=0
    slurm_job(monkeypatch, "101", "2", "0")
    assert devices.device_names(1) == ["gpu2"]
    slurm_job(monkeypatch, "102", "3", "0")
    assert devices.device_names(1) == ["gpu3"]
    monkeypatch.setenv("SLURM_STEP_GPUS", "1,3")  # inside an srun step: the step's GPUs
    assert devices.device_names(2) == ["gpu1", "gpu3"]
    monkeypatch.delenv("SLURM_JOB_ID")  # outside Slurm: CUDA_VISIBLE_DEVICES as before
    assert devices.device_names(1) == ["0"]


def test_slurm_allocation_that_disagrees_with_torch_is_an_error(monkeypatch):
    slurm_job(monkeypatch, "103", "0,1", "0")
    with pytest.raises(devices.DeviceError,
                       match=r"Slurm job 103 was allocated GPU\(s\) 0,1 .* torch sees 1"):
        devices.device_names(1)


HOLD = """
import os, sys, time
from pathlib import Path
from pipeline.infra import devices
claim = devices.acquire_slot(devices.device_names(1), Path(sys.argv[1]),
                             devices.slots_per_device(), timeout_seconds=0)
print(claim.device, flush=True)
time.sleep(600)
"""


def hold_as_slurm_job(tmp_path, job_id: str, job_gpu: str, slots: int = 1):
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOB_GPUS": job_gpu,
           "CUDA_VISIBLE_DEVICES": "0", "PIPELINE_SLOTS_PER_DEVICE": str(slots)}
    env.pop("SLURM_STEP_GPUS", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    return proc, line


def test_two_slurm_jobs_on_different_gpus_of_one_node_do_not_block(tmp_path, monkeypatch):
    first, device = hold_as_slurm_job(tmp_path, "201", "0")
    try:
        assert device == "gpu0"
        # same node, other GPU, also index 0 under ConstrainDevices: must not wait
        slurm_job(monkeypatch, "202", "1", "0")
        claim = devices.acquire_slot(devices.device_names(1), tmp_path, timeout_seconds=0)
        assert claim.device == "gpu1"
        # a job Slurm put on the held GPU (e.g. GPU sharing) waits for a free slot
        second, line = hold_as_slurm_job(tmp_path, "203", "0")
        assert line == "" and second.wait(timeout=30) != 0
        assert "stayed busy" in second.stderr.read()
        # ... unless that GPU has a second slot
        third, line = hold_as_slurm_job(tmp_path, "204", "0", slots=2)
        assert line == "gpu0"
        third.kill()
        third.wait()
    finally:
        first.kill()
        first.wait()


def test_slurm_gpus_without_a_usable_gpu_are_an_error_not_a_cpu_run(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    slurm_job(monkeypatch, "301", "0", "0")
    monkeypatch.delenv("PIPELINE_DEVICE", raising=False)
    with pytest.raises(devices.DeviceError, match="Slurm job 301 was allocated GPU"):
        devices.pick_device()
    monkeypatch.setenv("PIPELINE_DEVICE", "cpu")  # on purpose: allowed
    assert devices.pick_device().type == "cpu"
    monkeypatch.delenv("PIPELINE_DEVICE")
    monkeypatch.delenv("SLURM_JOB_GPUS")  # a Slurm job without GPUs: the CPU, as anywhere
    assert devices.pick_device().type == "cpu"
