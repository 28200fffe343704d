"""The code's layers and the one name of each stage, checked from the source.

pipeline/maths   pure maths: imports no other layer (no files, no params)
pipeline/infra   params, I/O, numerics, devices, the stage table, provenance, front-ends,
                 lineage, audit: imports maths, never report or a stage
pipeline/report  presentation (figure drawing, the rendered results text): imports maths
                 and infra, never a stage
pipeline/stages  one module per stage, named as the stage; may call any layer below

Imports are read with ast, function-level ones included, so a lazy import cannot hide an
edge. A stage may use another stage's module only along the edges listed here, so every new
coupling between stages (and the reruns it causes through the code lists) is a visible edit.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from pipeline.infra import stage_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
LAYERS = ("maths", "infra", "report", "stages")  # the order: each imports only those before
# (importer, imported) stage modules: the figures draw aggregate's growth fit exactly as
# growth.json holds it; embed rebuilds the model from train's checkpoint and config.
STAGE_EDGES = {("figures", "aggregate"), ("embed", "train")}


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Dotted names of the pipeline modules ``path`` imports (a name imported from a package
    counts as its submodule when there is one)."""
    names = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in names else node.module)
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lies_in_a_layer():
    loose = [m for m in modules() if layer_of(m) is None
             and m not in ("pipeline", "pipeline.__main__", *(f"pipeline.{x}" for x in LAYERS))]
    assert loose == []


@pytest.mark.parametrize("module", [m for m in modules() if layer_of(m) == "maths"])
def test_maths_imports_no_other_layer(module):
    outside = {m for m in imports_of(modules()[module]) if layer_of(m) != "maths"}
    assert outside == set(), f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", [m for m in modules() if layer_of(m) in ("infra", "report")])
def test_a_layer_imports_only_the_layers_before_it(module):
    """infra: maths; report: maths and infra (never a stage, nor infra the report)."""
    allowed = LAYERS[:LAYERS.index(layer_of(module)) + 1]
    above = {m for m in imports_of(modules()[module]) if layer_of(m) not in allowed}
    assert above == set(), f"{module} imports {sorted(above)}"


def test_presentation_lives_in_report():
    """Every module that draws (matplotlib) or renders the results text is in the report
    layer or is a stage that calls it; none is infrastructure."""
    def draws(path: Path) -> bool:
        return any(name.split(".")[0] == "matplotlib"
                   for node in ast.walk(ast.parse(path.read_text()))
                   for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                else [node.module or ""] if isinstance(node, ast.ImportFrom)
                                else []))

    drawing = {m for m, path in modules().items() if draws(path)}
    assert drawing and {layer_of(m) for m in drawing} <= {"report", "stages"}
    assert "pipeline.report.results" in modules()


def test_stages_use_each_other_only_along_the_listed_edges():
    edges = set()
    for module, path in modules().items():
        if layer_of(module) == "stages" and module != "pipeline.stages":
            for imported in imports_of(path):
                if layer_of(imported) == "stages" and imported != "pipeline.stages":
                    edges.add((module.split(".")[-1], imported.split(".")[-1]))
    assert edges == STAGE_EDGES


def test_the_layer_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.infra.io import write_parquet\n")
    assert imports_of(bad) == {"pipeline.infra.io"}
    bad.write_text("from pipeline.infra import stage_table, io\nimport pipeline.maths.losses\n")
    assert imports_of(bad) == {"pipeline.infra.stage_table", "pipeline.infra.io",
                               "pipeline.maths.losses"}


@pytest.mark.parametrize("stage", stage_table.STAGES, ids=lambda s: s.name)
def test_each_stage_has_one_name_everywhere(stage):
    name = stage.name
    assert stage.module == f"pipeline.stages.{name}"
    assert callable(getattr(importlib.import_module(stage.module), stage.entry))
    rule_file = ROOT / "rules" / f"{name}.smk"
    assert re.findall(r"^rule (\w+):", rule_file.read_text(), re.M) == [name]
    assert (ROOT / "tests" / f"test_{name}.py").is_file()
    assert stage.log.startswith(f"logs/{name}/")


def test_no_module_rule_file_or_stage_without_the_others():
    stage_names = {s.name for s in stage_table.STAGES}
    stage_modules = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__"}
    rule_files = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {"common"}
    assert stage_modules == stage_names
    assert rule_files == stage_names
    snakefile = (ROOT / "Snakefile").read_text()
    assert set(re.findall(r'include: "rules/(\w+)\.smk"', snakefile)) == stage_names | {"common"}


def imports_pandas(path: Path) -> bool:
    return any(name.split(".")[0] == "pandas"
               for node in ast.walk(ast.parse(path.read_text()))
               for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []))


def reached_from(module: str) -> set[str]:
    """Every pipeline module ``module`` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen and current in modules():
            seen.add(current)
            todo += imports_of(modules()[current])
    return seen


def test_stages_run_without_pandas_exactly_when_none_of_their_code_imports_it():
    """pipeline/__main__.py hides pandas from the stages of WITHOUT_PANDAS (pyarrow would
    import it for nothing): none of the code they reach may import pandas, and every stage
    whose code does not is in the list (the start-up it saves is per job)."""
    from pipeline.__main__ import WITHOUT_PANDAS

    uses = {s.name for s in stage_table.STAGES
            if any(imports_pandas(modules()[m]) for m in reached_from(s.module))}
    assert WITHOUT_PANDAS == {s.name for s in stage_table.STAGES} - uses
    assert imports_pandas(modules()["pipeline.stages.aggregate"])  # the check sees an import


def test_a_stage_job_without_pandas_never_imports_it_and_writes_the_same_bytes(tmp_path):
    """The labels job through the command line, with an exit hook reporting whether pandas
    was ever imported: not (pyarrow saw no pandas), and the file is the one an in-process
    call (pandas loaded) writes."""
    import subprocess
    import sys

    args = ["noisy_labels", "--params", str(ROOT / "params.yaml"), "--dataset", "digits",
            "--imbalance-ratio", "1", "--noise-fraction", "0.2", "--seed", "0",
            "--labels", str(tmp_path / "cli.parquet")]
    probe = ("import atexit, runpy, sys; atexit.register(lambda: print('pandas imported:', "
             "'pandas' in sys.modules)); sys.argv = ['pipeline', *sys.argv[1:]]; "
             "runpy.run_module('pipeline', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pandas imported: False"
    control = subprocess.run([sys.executable, "-c", f"import pandas; {probe}", *args[:-1],
                              str(tmp_path / "control.parquet")], capture_output=True,
                             text=True, cwd=ROOT)  # the hook sees pandas where it was loaded
    assert control.returncode == 0 and control.stdout.strip() == "pandas imported: True"
    import pandas  # noqa: F401  (loaded here, as in any test process)

    from pipeline.infra.config import load_params, select
    from pipeline.stages.noisy_labels import make_noisy_labels

    assert "pandas" in sys.modules
    keys = [k.format(dataset="digits") for k in stage_table.NOISY_LABELS.params]
    make_noisy_labels(select(load_params(ROOT / "params.yaml"), keys, "params.yaml"),
                      dataset="digits", imbalance_ratio=1.0, noise_fraction=0.2, seed=0,
                      labels=tmp_path / "in_process.parquet")
    assert (tmp_path / "cli.parquet").read_bytes() == (
        tmp_path / "in_process.parquet").read_bytes()
