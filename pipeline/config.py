"""Load and validate params.yaml; hand each stage exactly the keys it declares.

Both front-ends (the Snakefile and, through every stage CLI, DVC) call :func:`load_params`,
so a misspelt key or an out-of-range value stops either one with the same message, naming
the file, the key and the value.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file, key and value."""


def _schema() -> dict:
    with SCHEMA_PATH.open() as f:
        return yaml.safe_load(f)


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


def _check_cross_fields(params: dict, source: str) -> None:
    from pipeline.datasets import REGISTRY

    for name in params["grid"]["datasets"]:
        if name not in REGISTRY:
            raise ParamsError(
                f"{source}: grid.datasets: unknown dataset {name!r} (known: {', '.join(REGISTRY)})"
            )
        if name not in params["datasets"]:
            raise ParamsError(
                f"{source}: grid.datasets lists {name!r} but datasets.{name} is missing"
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
        params = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    return validate_params(params, str(path))


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
