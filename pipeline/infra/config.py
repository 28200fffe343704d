"""Load and validate params.yaml; hand each stage exactly the keys it declares.

Both front-ends (the Snakefile and, through every stage CLI, DVC) call :func:`load_params`,
so a misspelt key or an out-of-range value stops either one with the same message, naming
the file, the key and the value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")

try:  # libyaml's parser, the same documents as PyYAML's pure-Python one in a tenth of the time:
    # every stage process reads params.yaml and the schema (30 ms of CPU a process before)
    SAFE_LOADER: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    SAFE_LOADER = yaml.SafeLoader
# dvc.yaml's line naming the grid it enumerates (pipeline/infra/frontends.py writes it)
GRID_DIGEST_LINE = "# Jobs of the grid with digest "


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file, key and value."""


def _schema() -> dict:
    with SCHEMA_PATH.open() as f:
        return yaml.load(f, Loader=SAFE_LOADER)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_params(params: Any, source: str = "params.yaml") -> dict:
    """Check ``params`` against the schema and the cross-field rules; return it unchanged."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {params!r}")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = []
        for e in errors:
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                for name in extra:
                    allowed = ", ".join(sorted(e.schema.get("properties", {})))
                    where = _key([*e.path, name])
                    lines.append(f"{source}: unknown key {where!r} (allowed here: {allowed})")
            else:
                lines.append(f"{source}: {_key(e.path)}: {e.message}")
        raise ParamsError("\n".join(lines))
    _check_cross_fields(params, source)
    return params


def _check_run_sets(grid: dict, source: str) -> None:
    """Each run set: not empty, and within the grid's axes; each axis value used by a run.

    The axes stay the grid's vocabulary and order (aggregate sorts by them, figures draw one
    set per dataset and augmentation of them), so a set may only choose among their values.
    """
    from pipeline.infra.grid import GRID_AXES, RUN_SETS, grid_axis, jobs

    for name, sub in (grid.get(RUN_SETS) or {}).items():
        where = f"grid.{RUN_SETS}.{name}"
        if not sub:
            raise ParamsError(
                f"{source}: {where} is an empty sub-grid ({sub!r}): list the axes it narrows "
                "(an axis left out takes all of the grid's values), or remove it"
            )
        for axis, values in sub.items():
            if not values:
                raise ParamsError(
                    f"{source}: {where} is an empty sub-grid ({axis}: []): it adds no runs; "
                    "list values or remove the set"
                )
            outside = [v for v in values if v not in grid[axis]]
            if outside:
                raise ParamsError(
                    f"{source}: {where}.{axis} lists {outside}, not in grid.{axis} "
                    f"{grid[axis]} (the axes list every value a run set may use)"
                )
    if not grid.get(RUN_SETS):
        return
    runs = jobs(tuple(GRID_AXES), grid)  # every run: one job per training run
    for wildcard in GRID_AXES:
        axis = grid_axis(wildcard)
        used = {job[wildcard] for job in runs}
        unused = [v for v in grid[axis] if str(v) not in used]
        if unused:
            raise ParamsError(
                f"{source}: grid.{axis} lists {unused}, which no run set uses: remove them"
            )
    pairs = {(job["dataset"], job["augmentation"]) for job in runs}
    for dataset in grid["datasets"]:
        for augmentation in grid["augmentations"]:
            if (dataset, augmentation) not in pairs:
                raise ParamsError(
                    f"{source}: grid.{RUN_SETS}: no run of dataset {dataset!r} with "
                    f"augmentation {augmentation!r}, though both are on the grid's axes "
                    "(figures are drawn per dataset and augmentation of the axes)"
                )


def _check_cross_fields(params: dict, source: str) -> None:
    from pipeline.infra.datasets import REGISTRY
    from pipeline.infra.grid import jobs

    _check_run_sets(params["grid"], source)
    for name in params["grid"]["datasets"]:
        if name not in REGISTRY:
            raise ParamsError(
                f"{source}: grid.datasets: unknown dataset {name!r} (known: {', '.join(REGISTRY)})"
            )
        if name not in params["datasets"]:
            raise ParamsError(
                f"{source}: grid.datasets lists {name!r} but datasets.{name} is missing"
            )
    imbalanced = {job["dataset"] for job in jobs(("dataset", "imbalance_ratio"), params["grid"])
                  if float(job["imbalance_ratio"]) != 1.0}
    for name in sorted(imbalanced):
        if "imbalance" not in params["datasets"][name]:
            ratios = [r for r in params["grid"]["imbalance_ratios"] if r != 1]
            raise ParamsError(
                f"{source}: grid.imbalance_ratios lists {ratios} for dataset {name!r}, but "
                f"datasets.{name}.imbalance (profile and seed) is missing"
            )
    for job in jobs(("dataset", "augmentation", "model"), params["grid"]):
        refused = dict(REGISTRY[job["dataset"]].refuses)
        view = params["train"]["models"].get(job["model"], {}).get("view_augmentation")
        for key, value in (("grid.augmentations", job["augmentation"]),
                           (f"train.models.{job['model']}.view_augmentation", view)):
            if value in refused:
                raise ParamsError(
                    f"{source}: {key}: {value!r} is refused for dataset {job['dataset']!r}: "
                    f"{refused[value]}"
                )
    for model in params["grid"]["models"]:
        if model not in params["train"]["models"]:
            raise ParamsError(
                f"{source}: grid.models lists {model!r} but train.models.{model} is missing"
            )
    common = params["train"]["common"]
    if common["encoder"] == "resnet18" and common["representation_dim"] != 512:
        raise ParamsError(
            f"{source}: train.common.representation_dim: {common['representation_dim']} does "
            "not match encoder resnet18, whose pooled output is 512-d"
        )
    if "ce_fixed" in params["grid"]["models"]:
        h = params["train"]["common"]["representation_dim"]
        for name in params["grid"]["datasets"]:
            k = REGISTRY[name].num_classes
            if h < k - 1:
                raise ParamsError(
                    f"{source}: train.common.representation_dim: {h} is too small for ce_fixed "
                    f"on {name!r}: a regular simplex of {k} classes needs at least {k - 1} dims"
                )
    if params["figures"]["geometry_noise"] not in params["grid"]["noise_fractions"]:
        raise ParamsError(
            f"{source}: figures.geometry_noise: {params['figures']['geometry_noise']} is not one "
            f"of grid.noise_fractions {params['grid']['noise_fractions']}"
        )


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ParamsError(f"{path}: cannot read params file ({e.strerror})") from e
    try:
        params = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    params = validate_params(params, str(path))
    check_dvc_yaml_grid(path, params["grid"])
    return params


def check_dvc_yaml_grid(path: Path, grid: dict) -> None:
    """Under `dvc repro`, stop when dvc.yaml lists the jobs of another grid than params.yaml's.

    dvc.yaml enumerates the grid's jobs (pipeline/infra/frontends.py); after an edit of the grid
    without `python -m pipeline dvc-yaml`, DVC would build the old runs and aggregate the new
    ones. DVC sets DVC_STAGE and DVC_ROOT for each stage command; elsewhere (Snakemake, a CLI
    by hand, another params file) there is nothing to check.
    """
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_STAGE") or not root:
        return
    if path.resolve() != (Path(root) / "params.yaml").resolve():
        return
    try:
        with open(Path(root) / "dvc.yaml") as f:
            head = [next(f, "") for _ in range(5)]
    except OSError:
        return
    recorded = [line[len(GRID_DIGEST_LINE):].strip() for line in head
                if line.startswith(GRID_DIGEST_LINE)]
    # no such line: a dvc.yaml of DVC matrices (before run sets), which follows params itself
    if recorded and recorded[0] != digest(grid):
        raise ParamsError(
            f"{path}: grid has digest {digest(grid)}, but dvc.yaml lists the jobs of grid "
            f"{recorded[0]}: run `python -m pipeline dvc-yaml`, then `dvc repro` again"
        )


def lookup(params: dict, dotted: str, source: str = "params.yaml") -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{source}: missing key {dotted!r}")
        node = node[part]
    return node


def select(params: dict, keys: list[str] | tuple[str, ...], source: str = "params.yaml") -> dict:
    """The sub-tree of ``params`` holding exactly the dotted ``keys`` (a deep copy).

    Stages receive only this, so a stage cannot read a key it did not declare to DVC.
    """
    out: dict = {}
    for dotted in keys:
        value = copy.deepcopy(lookup(params, dotted, source))
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def digest(obj: Any) -> str:
    """A stable short hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
