"""The workflow on a real Slurm (tests/slurm_cluster.py: one node, two fake GPUs) through
Snakemake's Slurm executor and profiles/slurm: every job a Slurm job, the same bytes as a local
run, a cancelled training job that resumes, a too-small memory request that reaches the user,
two workflows at once. Skipped, with the reason, where Slurm cannot be set up (not root, no
apt); CI runs as root with Debian's registry, so there they run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import slurm_cluster
import slurm_snakemake
import yaml
from conftest import ROOT, copy_project, sh, tiny_params
from tiny_project import built

from pipeline.infra import stage_table
from pipeline.stages.train import resume_path

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

# Settings of this test cluster, not of the profile: no accounting, so job status comes
# from squeue (MinJobAge 300 s keeps finished jobs listed) and there is no account; two
# CPUs, so a group job may not be wider than two; status checks every 2 s, not after 40 s
# and then 10 s slower each time (tests/slurm_snakemake.py says why that needs a launcher).
# Runs of a few targets add --no-hooks: dvc.lock records only whole-grid runs.
CLUSTER_ARGS = ["--workflow-profile", "profiles/slurm", "--cores", "2", "--slurm-no-account",
                "--slurm-status-command", "squeue",
                "--seconds-between-status-checks", str(slurm_snakemake.CAP_S),
                "--slurm-init-seconds-before-status-checks", str(slurm_snakemake.CAP_S),
                "--slurm-keep-successful-logs"]
ON_CLUSTER = [sys.executable, slurm_snakemake.__file__, *CLUSTER_ARGS]
LOCAL = [sys.executable, "-m", "snakemake", "--cores", "2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.start(directory)
    except slurm_cluster.Unavailable as e:
        pytest.skip(f"no Slurm cluster: {str(e).splitlines()[0]}")
    # The jobs see fake GPUs: they run on the CPU, on purpose (pipeline/infra/devices.py).
    env["PIPELINE_DEVICE"] = "cpu"
    try:
        yield env
    finally:
        slurm_cluster.stop(directory)


def snakemake(project: Path, env: dict, *args: str, check: bool = True):
    return sh(*ON_CLUSTER, *args, cwd=project, env=env, check=check)


def new_project(root: Path, params: dict) -> Path:
    project = copy_project(root)
    (project / "dvc.lock").unlink(missing_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def data_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


def submissions(output: str) -> dict[str, str]:
    """Slurm job id -> the rule or group folder of its log, from the executor's lines."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/([^/]+)/", output)
    return dict(found)


def squeue_states(env: dict, run_id: str) -> dict[str, str]:
    listed = sh("squeue", "--states=all", "--noheader", "--format=%i|%T", "--name", run_id,
                cwd=ROOT, env=env).stdout
    return dict(line.split("|") for line in listed.split())


def test_profile_keeps_the_default_profiles_rerun_rules():
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    for key, value in default.items():
        assert slurm[key] == value, key
    assert slurm["executor"] == "slurm"
    # nothing that names a cluster: those come from the user's own profile
    text = (ROOT / "profiles/slurm/config.yaml").read_text()
    assert not re.search(r"^\s*(slurm_partition|slurm_account|gpu_model)\s*:", text, re.M)


def one_model_params() -> dict:
    """The tiny params cut to one model: two runs, so every rule is still a Slurm job (and
    labels and geometry a group job of two) in a third of the tiny grid's time."""
    params = tiny_params()
    params["grid"]["models"] = ["supcon"]
    return params


def test_whole_workflow_as_slurm_jobs_matches_a_local_run(cluster, tmp_path, tmp_path_factory):
    params = one_model_params()
    project = new_project(tmp_path / "project", params)
    # The session's local tiny run (the byte reference below), when no other test has made it
    # yet, runs meanwhile: the Slurm run mostly waits on job start-up and polls.
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(built, tmp_path_factory)
        start = time.monotonic()
        result = snakemake(project, cluster)
        elapsed = time.monotonic() - start
        local_root = local_run.result()
    output = result.stdout + result.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)

    jobs = submissions(output)
    # every rule of the stage table on Slurm: one job per training and per embedding run,
    # one group job each for the labels and the geometry (profiles/slurm), one per grid-wide
    # stage; the target rule `all` is the only local one
    groups = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())["groups"]
    expected = {}
    for stage in stage_table.STAGES:
        if stage.name in groups:
            expected[f"group_{groups[stage.name]}_{stage.name}"] = 1
        else:
            expected[f"rule_{stage.name}"] = len(stage_table.grid_jobs(stage, params["grid"])) or 1
    assert expected["rule_train"] == expected["rule_embed"] == 2
    per_folder = {f: sum(v == f for v in jobs.values()) for f in set(jobs.values())}
    assert per_folder == expected
    assert re.findall(r"^localrule (\w+):", output, re.M) == ["all"]
    # Slurm itself ran each of them to completion, under this run's job name
    assert squeue_states(cluster, run_id) == dict.fromkeys(jobs, "COMPLETED")
    for job_id, folder in jobs.items():
        assert list((project / ".snakemake/slurm_logs" / folder).rglob(f"{job_id}.log"))
    # training and embedding jobs asked Slurm for one GPU (gpu=1 -> --gpus=1), no other did
    for job_id, folder in jobs.items():
        shown = sh("scontrol", "show", "job", job_id, cwd=ROOT, env=cluster).stdout
        gpu = "TresPerJob=gres:gpu:1" in shown
        assert gpu == (folder in ("rule_train", "rule_embed")), shown
    assert json.loads(sh("dvc", "status", "--json", cwd=project).stdout) == {}

    # The same bytes as local runs. Per-run files and the free features (no inputs) do not
    # depend on the grid: those of the local tiny run (a superset of these runs) must match.
    on_slurm = data_hashes(project)
    local = data_hashes(local_root)
    of_grid = [s for s in stage_table.STAGES if not s.matrix and s.deps]  # aggregate, figures, ...

    def of_the_grid(path: str) -> bool:
        return any(path == out or path.startswith(f"{out}/")
                   for stage in of_grid for out in stage.outs.values())

    per_run = {p: h for p, h in on_slurm.items() if not of_the_grid(p)}
    assert per_run and {p: local.get(p) for p in per_run} == per_run
    # The grid-wide stages do depend on it: run them again locally on the Slurm run's inputs.
    forced = [arg for s in of_grid for arg in ("--forcerun", s.name)]
    sh(*LOCAL, "--no-hooks", *forced, cwd=project, env=cluster)
    assert data_hashes(project) == on_slurm
    assert any(of_the_grid(p) for p in on_slurm)
    print(f"whole workflow on Slurm: {len(jobs)} Slurm jobs, {elapsed:.0f} s")


def test_slurm_gpus_key_the_device_locks(cluster, tmp_path):
    """Two jobs given one (fake) GPU each hold their device locks at the same time, keyed by
    the GPU Slurm allocated (SLURM_JOB_GPUS), with one lock directory for both."""
    script = tmp_path / "claim.py"
    script.write_text(
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "from pipeline.infra import devices\n"
        "names = devices.device_names(len(os.environ['CUDA_VISIBLE_DEVICES'].split(',')))\n"
        "claim = devices.acquire_slot(names, Path(sys.argv[1]), timeout_seconds=0)\n"
        "start = time.time(); time.sleep(4)\n"
        "print(json.dumps({'device': claim.device, 'visible': os.environ['CUDA_VISIBLE_DEVICES'],"
        " 'start': start, 'end': time.time()}))\n"
    )
    locks = tmp_path / "locks"
    locks.mkdir()
    ids = [sh("sbatch", "--parsable", "--gpus=1", "--mem=500", "-o", str(tmp_path / f"{i}.out"),
              "--wrap", f"{sys.executable} {script} {locks}", cwd=ROOT, env=cluster).stdout.strip()
           for i in range(2)]
    deadline = time.monotonic() + 60
    while set(squeue_states_by_id(cluster, ids).values()) - {"COMPLETED", "FAILED"}:
        assert time.monotonic() < deadline, "the two jobs did not finish"
        time.sleep(1)
    assert set(squeue_states_by_id(cluster, ids).values()) == {"COMPLETED"}
    records = [json.loads((tmp_path / f"{i}.out").read_text().splitlines()[-1]) for i in range(2)]
    assert sorted(r["device"] for r in records) == ["gpu0", "gpu1"]
    first, second = records
    assert first["start"] < second["end"] and second["start"] < first["end"], "ran one by one"


def squeue_states_by_id(env: dict, ids: list[str]) -> dict[str, str]:
    listed = sh("squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs",
                ",".join(ids), cwd=ROOT, env=env).stdout
    return dict(line.split("|") for line in listed.split())


RUN = "digits/rho1/supcon/none/tau0.1-b64-T2000/noise0.3-seed0"  # a run of long_training_params


def long_training_params() -> dict:
    params = tiny_params()
    # 2,000 steps (~10 s): long after the first resume point (step 25), when scancel lands
    params["grid"]["iterations"] = [2000]
    params["train"]["common"].update(eval_every=25)
    return params


def test_cancelled_training_job_fails_by_name_then_resumes_byte_identical(cluster, tmp_path):
    target = f"data/models/{RUN}.pt"
    reference = new_project(tmp_path / "reference", long_training_params())
    # The uninterrupted local run, on the CPU the Slurm job leaves free, while the cluster runs
    reference_log = tmp_path / "reference.log"
    with open(reference_log, "w") as out:
        reference_run = subprocess.Popen([*LOCAL, "--no-hooks", target], cwd=reference,
                                         env=cluster, stdout=out, stderr=subprocess.STDOUT)
    try:
        cancel_then_resume(cluster, tmp_path, target, reference, reference_run, reference_log)
    finally:
        if reference_run.poll() is None:
            reference_run.kill()
            reference_run.wait()


def cancel_then_resume(cluster, tmp_path, target, reference, reference_run, reference_log):
    project = new_project(tmp_path / "project", long_training_params())
    env = {**cluster, "PIPELINE_CHECKPOINT_SECONDS": "0"}  # a resume point every evaluation
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([*ON_CLUSTER, "--no-hooks", target],
                                 cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    resume = resume_path(project / target)
    try:
        deadline = time.monotonic() + 120
        while not resume.exists():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no resume point within 120 s"
            time.sleep(0.2)
        job_id = next(j for j, folder in submissions(log.read_text()).items()
                      if folder == "rule_train")
        sh("scancel", job_id, cwd=ROOT, env=cluster)
        assert first.wait(timeout=120) != 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    output = log.read_text()
    error = output[output.index("Error in rule train:"):]
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in error
    assert f"external_jobid: {job_id}" in error
    assert not (project / target).exists() and resume.exists()

    snakemake(project, env, "--no-hooks", target)
    train_log = (project / "logs/train/digits-1-supcon-none-0.1-64-2000-0.3-0.log").read_text()
    assert "resuming after iteration" in train_log
    assert reference_run.wait(timeout=300) == 0, reference_log.read_text()
    for path in (target, f"data/train_logs/{RUN}.parquet"):
        assert (project / path).read_bytes() == (reference / path).read_bytes(), path
    assert not resume.exists()


def test_too_small_memory_request_reaches_the_user_and_marks_nothing_done(cluster, tmp_path):
    project = new_project(tmp_path / "project", tiny_params())
    target = "data/labels/digits/rho1/noise0.3-seed0.parquet"
    result = snakemake(project, cluster, "--no-hooks", target, "--set-resources",
                       "noisy_labels:mem_mb=50", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # Slurm's own words, from the Slurm job log the profile's show-failed-logs prints
    assert re.search(r"StepId=\d+\.batch exceeded memory limit \(\d+ > 52428800\)", output), output
    assert "Exceeded job memory limit" in output
    assert "Error in rule noisy_labels:" in output
    assert not (project / target).exists()
    plan = sh(sys.executable, "-m", "snakemake", "-n", "--cores", "1", target, cwd=project)
    assert "noisy_labels" in plan.stdout  # still to do: nothing was marked complete


def test_second_workflow_on_the_same_checkout_refuses(cluster, tmp_path):
    project = new_project(tmp_path / "project", tiny_params())
    # Two Slurm jobs in a row (labels, then training): the first workflow holds its lock for
    # several status checks, long after the second has started, even on a loaded machine
    # (with the labels job alone it could finish before the second got going).
    target = "data/models/digits/rho1/supcon/none/tau0.1-b64-T60/noise0.3-seed0.pt"
    first = subprocess.Popen([*ON_CLUSTER, "--no-hooks", target],
                             cwd=project, env=cluster, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        locks = project / ".snakemake" / "locks"
        deadline = time.monotonic() + 60
        while not (locks.exists() and any(locks.iterdir())):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = snakemake(project, cluster, "--no-hooks", target, check=False)
        assert second.returncode != 0
        refusal = second.stdout + second.stderr
        assert "cannot be locked" in refusal or "Incomplete files" in refusal, refusal
        assert "submitted with SLURM jobid" not in refusal
        assert first.wait(timeout=180) == 0, first.stdout.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (project / target).exists()


def test_without_root_or_apt_the_cluster_says_why(monkeypatch):
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.Unavailable, match="needs root"):
        slurm_cluster.install()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(slurm_cluster.Unavailable, match="no apt-get"):
        slurm_cluster.install()
