# Shared by all rules: the validated params, and helpers that spell a pipeline stage
# (pipeline/infra/stage_table.py) in Snakemake's terms. Stage commands and paths are defined there
# once; DVC's dvc.yaml is rendered from the same table.
import hashlib
import json

from snakemake.exceptions import WorkflowError

from pipeline.infra import stage_table as S
from pipeline.infra.config import ParamsError, load_params, select
from pipeline.infra.job_resources import job_resources

if len(workflow.overwrite_configfiles or []) > 1:
    raise WorkflowError("give at most one --configfile (a complete params file)")
PARAMS_FILE = str((workflow.overwrite_configfiles or [S.PARAMS_FILE])[0])
try:
    PARAMS = load_params(PARAMS_FILE)
except ParamsError as e:
    raise WorkflowError(str(e)) from None
if config and config != PARAMS:
    # The stage commands read PARAMS_FILE themselves: overrides would not reach them.
    raise WorkflowError(
        f"--config overrides are not supported: edit {PARAMS_FILE} (or pass another "
        "complete params file with --configfile)"
    )
GRID = PARAMS["grid"]


wildcard_constraints:
    **S.WILDCARD_CONSTRAINTS,


def get_grid_files(stage, name):
    """All per-run files behind a directory input of a grid-wide stage."""
    dep = stage.deps[name]
    return sorted(
        S.fill(pattern, **job) for pattern in dep.patterns for job in S.grid_jobs(S.GEOMETRY, GRID)
    )


def get_inputs(stage):
    inputs = {"code": list(stage.code)}
    for name, dep in stage.deps_for(GRID).items():
        inputs[name] = get_grid_files(stage, name) if isinstance(dep, S.GridDir) else dep
    return inputs


def get_outputs(stage):
    return {
        name: directory(path) if name in stage.directory_outs else path
        for name, path in stage.outs.items()
    }


def get_params(stage):
    """The values of the params keys the stage reads: a change reruns the job (Snakemake's
    `params` rerun trigger), exactly as DVC's params tracking does."""

    def values(wildcards):
        keys = [key.format(**wildcards) for key in stage.params]
        return json.dumps(select(PARAMS, keys, PARAMS_FILE), sort_keys=True)

    return values


def get_code_digest(stage):
    """Hash of the stage's source files: with modification times not trusted (DVC rewrites
    them), a code change still reruns the job through the `params` trigger."""
    h = hashlib.sha256()
    for path in stage.code:
        h.update(path.encode() + b"\0" + open(path, "rb").read())
    return h.hexdigest()[:16]


def get_resources(stage):
    """What one job asks a cluster for (GPUs, CPUs, mem_mb, runtime), sized from the params
    (pipeline/infra/job_resources.py). A local run ignores them unless --resources caps one."""
    return job_resources(stage.name, PARAMS)


def get_shell(stage):
    values = {w: f"{{wildcards.{w}}}" for w in stage.matrix}
    for name, dep in stage.deps_for(GRID).items():
        values[f"in.{name}"] = dep.path if isinstance(dep, S.GridDir) else f"{{input.{name}}}"
    values |= {f"out.{name}": f"{{output.{name}}}" for name in stage.outs}
    values["log"] = "{log}"
    return stage.command(values, PARAMS_FILE)
