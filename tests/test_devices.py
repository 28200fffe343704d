"""One device per concurrently running job: slot locks under contention and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline import devices

# A job as Snakemake would start it: claim a slot, record the interval, exit.
JOB = """
import json, sys, time
from pathlib import Path
from pipeline.devices import acquire_slot
slots, lock_dir, out = sys.argv[1].split(","), Path(sys.argv[2]), Path(sys.argv[3])
index = acquire_slot(slots, lock_dir, poll_seconds=0.005)
start = time.monotonic()
time.sleep(0.02)
out.write_text(json.dumps({"slot": slots[index], "start": start, "end": time.monotonic()}))
"""


def test_fifty_jobs_over_four_slots_never_share_a_slot(tmp_path):
    slots = ["gpu0", "gpu1", "gpu2", "gpu3"]

    def job(i: int) -> dict:
        out = tmp_path / f"job{i}.json"
        subprocess.run(
            [sys.executable, "-c", JOB, ",".join(slots), str(tmp_path), str(out)], check=True
        )
        return json.loads(out.read_text())

    # Like `--resources gpu=4`: at most four jobs at once. Six workers make the scheduler
    # overshoot on purpose: the locks alone must keep two jobs off one slot.
    with ThreadPoolExecutor(max_workers=6) as pool:
        records = list(pool.map(job, range(50)))
    assert len(records) == 50
    for slot in slots:
        intervals = sorted((r["start"], r["end"]) for r in records if r["slot"] == slot)
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"two jobs held {slot} at once"
    assert {r["slot"] for r in records} == set(slots)


def test_a_killed_holder_releases_its_slot(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from pipeline.devices import acquire_slot;"
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
    assert devices.acquire_slot(["only"], tmp_path, timeout_seconds=5) == 0
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
