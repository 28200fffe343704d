"""Every stage of the pipeline, defined once: its matrix, files, params keys, code and command.

Both front-ends are rendered from this table, so they run the identical command per job:
- Snakemake: ``rules/*.smk`` build each rule from a :class:`Stage` (``get_*`` helpers);
- DVC: ``dvc.yaml`` is rendered by ``python -m pipeline dvc-yaml`` with DVC's own
  ``matrix`` templating over params.yaml, and a test checks the committed file is current.

Path patterns use ``{wildcard}`` fields; a wildcard is one axis of the run grid in params.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.infra import grid as _grid

# The run grid's axes and run sets live in pipeline/infra/grid.py; re-exported under these names.
from pipeline.infra.grid import GRID_AXES, RUN_SETS, grid_axis, run_sets  # noqa: F401

_NUMBER = r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?"  # a YAML number as Python's str spells it
# Each wildcard (one axis of the run grid): the regex Snakemake parses it back out of paths
# with, and the type the CLI reads it as.
WILDCARDS: dict[str, tuple[str, type]] = {
    "dataset": (r"[a-z][a-z0-9_]*", str),
    "imbalance_ratio": (_NUMBER, float),
    "model": (r"[a-z][a-z0-9_]*", str),
    "augmentation": (r"[a-z]+", str),
    "temperature": (_NUMBER, float),
    "batch_size": (r"[0-9]+", int),
    "iterations": (r"[0-9]+", int),
    "noise_fraction": (_NUMBER, float),
    "seed": (r"[0-9]+", int),
}
WILDCARD_CONSTRAINTS: dict[str, str] = {w: regex for w, (regex, _) in WILDCARDS.items()}
WILDCARD_TYPES: dict[str, type] = {w: kind for w, (_, kind) in WILDCARDS.items()}

PARAMS_FILE = "params.yaml"
LOCK_FILE = "dvc.lock"  # DVC's record of every stage run: committed, the lineage of results

# One training run's identity inside every per-run folder: the training data (dataset and its
# imbalance), the model and its input augmentation, the loss's temperature and the batch size
# (the paper's protocol fixes those two; an extension sweeps them), the training length T
# (fixed by the paper; swept to see whether a measure still moves with it), then noise and seed.
RUN = (
    "{dataset}/rho{imbalance_ratio}/{model}/{augmentation}/tau{temperature}-b{batch_size}-"
    "T{iterations}/"
    "noise{noise_fraction}-seed{seed}"
)

LABELS = "data/labels/{dataset}/rho{imbalance_ratio}/noise{noise_fraction}-seed{seed}.parquet"
MODEL = f"data/models/{RUN}.pt"
TRAIN_LOG = f"data/train_logs/{RUN}.parquet"
EMBEDDINGS = f"data/embeddings/{RUN}.parquet"
HEAD = f"data/heads/{RUN}.parquet"
GEOMETRY_DIR = "data/geometry"
GEOMETRY_METRICS = f"{GEOMETRY_DIR}/{RUN}/metrics.json"
COSINES = f"{GEOMETRY_DIR}/{RUN}/cosines.parquet"
TRAIN_LOG_DIR = "data/train_logs"
SUMMARY_DIR = "data/summary"
RUNS_TABLE = f"{SUMMARY_DIR}/runs.parquet"
SUMMARY_TABLE = f"{SUMMARY_DIR}/summary.parquet"
SUMMARY_CSV = f"{SUMMARY_DIR}/summary.csv"
GROWTH_METRICS = f"{SUMMARY_DIR}/growth.json"
HEADLINE_METRICS = f"{SUMMARY_DIR}/headline.json"
CURVES_CSV = f"{SUMMARY_DIR}/training_curves.csv"
FIGURES_DIR = "data/figures"
FREE_FEATURES_TABLE = "data/free_features/records.parquet"
FREE_FEATURES_FIGURES = "data/free_features/figures"
CLAIMS_DIR = "data/claims"
CLAIMS_CSV = f"{CLAIMS_DIR}/claims.csv"
CLAIMS_MD = f"{CLAIMS_DIR}/claims.md"
CLAIMS_METRICS = f"{CLAIMS_DIR}/verdicts.json"
LOG = "logs/{stage}/{key}.log"


@dataclass(frozen=True)
class GridDir:
    """A directory input of a grid-wide stage: DVC depends on the directory, Snakemake on
    the per-run files in it (``patterns`` expanded over the grid), the CLI gets the directory.
    """

    path: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    name: str  # everywhere: module pipeline/stages/<name>.py, CLI subcommand, Snakemake rule
    # and rules/<name>.smk, DVC stage, log folder logs/<name>/, tests/test_<name>.py
    entry: str  # the function of that module the CLI calls with the params and files
    matrix: tuple[str, ...]  # wildcards: one job per combination of grid values
    deps: dict[str, str | GridDir]  # CLI option -> input path pattern
    outs: dict[str, str]  # CLI option -> output path pattern
    params: tuple[str, ...]  # dotted params.yaml keys read (may hold {wildcard})
    code: tuple[str, ...]  # source files whose change must rerun the stage
    directory_outs: tuple[str, ...] = field(default=())  # outs that are directories
    # Outs that DVC lists as metrics (`dvc metrics show`, columns of `dvc exp show`): the few
    # headline numbers only, not every run's metrics.json (39 runs x ~150 keys would be
    # thousands of columns); they stay outputs like any other (cached, pushed, in dvc.lock).
    metrics: tuple[str, ...] = field(default=())
    # Deps read only on some grids: dep name -> whether a grid needs it. Both front-ends leave
    # the others out (no input, no CLI option), so a change to them reruns nothing.
    needed_when: dict[str, Callable[[dict], bool]] = field(default_factory=dict)

    def deps_for(self, grid: dict) -> dict[str, str | GridDir]:
        """The deps a job of this stage reads on ``grid``."""
        return {name: dep for name, dep in self.deps.items()
                if name not in self.needed_when or self.needed_when[name](grid)}

    @property
    def module(self) -> str:
        return f"pipeline.stages.{self.name}"

    @property
    def log(self) -> str:
        key = "-".join(f"{{{w}}}" for w in self.matrix) if self.matrix else self.name
        return LOG.format(stage=self.name, key=key)

    def command(self, values: dict[str, str], params_file: str = PARAMS_FILE) -> str:
        """The exact shell command of one job; ``values`` maps each placeholder to its text.

        Placeholders: each wildcard by name, each input as ``in.<name>``, each output as
        ``out.<name>`` and ``log``. Front-ends pass their own spelling of each placeholder,
        for the inputs of ``deps_for(grid)``: a dep the grid does not need has none.
        """
        parts = ["python -m pipeline", self.name, "--params", params_file]
        parts += [f"--{_flag(w)} {values[w]}" for w in self.matrix]
        parts += [f"--{_flag(n)} {values['in.' + n]}" for n in self.deps
                  if n not in self.needed_when or f"in.{n}" in values]
        parts += [f"--{_flag(n)} {values['out.' + n]}" for n in self.outs]
        parts += [f"--log {values['log']}"]
        return " ".join(parts)

    def dep_path(self, name: str) -> str:
        dep = self.deps[name]
        return dep.path if isinstance(dep, GridDir) else dep


def _flag(name: str) -> str:
    return name.replace("_", "-")


def fill(pattern: str, **wildcards: object) -> str:
    """Fill a path pattern; unlike str.format, an unknown field is an error naming it."""
    missing = set(re.findall(r"{(\w+)}", pattern)) - set(wildcards)
    if missing:
        raise KeyError(f"pattern {pattern!r} needs wildcard(s) {sorted(missing)}")
    return pattern.format(**wildcards)


# Every stage writes through these: a change to them may change any artifact's bytes
# (numerics.py fixes the kernels every stage computes with, and io.py records its mode).
_SHARED_CODE = ("pipeline/infra/io.py", "pipeline/infra/schemas.py", "pipeline/infra/numerics.py")
# A run's identity and the input md5s its artifacts record and check, for every stage that
# names runs.
_RUN_CODE = ("pipeline/infra/runs.py", "pipeline/infra/inputs.py")

# What drawing a figure runs, in the figures stage and in free_features alike: the plotting
# helpers and each figure's embedded provenance record (params digest, stage table, raw-data
# digest). tests/test_frontends.py checks every stage's code list against the imports of its
# module, so a figure caption edited in the figures stage does not rerun free features.
_PLOTTING_CODE = (
    "pipeline/report/plotting.py",
    "pipeline/infra/provenance.py",
    "pipeline/infra/config.py",
    "pipeline/infra/datasets.py",
    "pipeline/infra/stage_table.py",
    "pipeline/infra/grid.py",
    *_SHARED_CODE,
)

RUN_MATRIX = tuple(_grid.GRID_AXES)  # the per-run stages: one job per training run

_TRAIN_CODE = (
    "pipeline/stages/train.py",
    "pipeline/maths/models.py",
    "pipeline/maths/resnet.py",
    "pipeline/maths/losses.py",
    "pipeline/maths/products.py",
    "pipeline/maths/simplex.py",
    "pipeline/maths/theory.py",
    "pipeline/infra/datasets.py",
    "pipeline/maths/imbalance.py",
    "pipeline/maths/batches.py",
    "pipeline/infra/devices.py",
    "pipeline/maths/optim.py",
    *_RUN_CODE,
    *_SHARED_CODE,
)

NOISY_LABELS = Stage(
    name="noisy_labels",
    entry="make_noisy_labels",
    matrix=("dataset", "imbalance_ratio", "noise_fraction", "seed"),
    deps={},
    outs={"labels": LABELS},
    params=("datasets.{dataset}", "noisy_labels"),
    code=(
        "pipeline/stages/noisy_labels.py",
        "pipeline/infra/datasets.py",
        "pipeline/infra/inputs.py",
        "pipeline/maths/imbalance.py",
        *_SHARED_CODE,
    ),
)

TRAIN = Stage(
    name="train",
    entry="train",
    matrix=RUN_MATRIX,
    deps={"labels": LABELS},
    outs={"checkpoint": MODEL, "train_log": TRAIN_LOG},
    params=("datasets.{dataset}", "train.common", "train.models.{model}"),
    code=_TRAIN_CODE,
)

EMBED = Stage(
    name="embed",
    entry="extract_embeddings",
    matrix=RUN_MATRIX,
    deps={"labels": LABELS, "checkpoint": MODEL},
    outs={"embeddings": EMBEDDINGS, "head": HEAD},
    # the train keys too: the checkpoint must have been made with the current config
    params=("datasets.{dataset}", "train.common", "train.models.{model}", "embed"),
    code=("pipeline/stages/embed.py", "pipeline/infra/nested.py", *_TRAIN_CODE),
)

GEOMETRY = Stage(
    name="geometry",
    entry="measure_geometry",
    matrix=RUN_MATRIX,
    deps={"embeddings": EMBEDDINGS, "head": HEAD, "train_log": TRAIN_LOG},
    outs={"metrics": GEOMETRY_METRICS, "cosines": COSINES},
    params=("geometry",),
    code=(
        "pipeline/stages/geometry.py",
        "pipeline/maths/metrics.py",
        "pipeline/maths/collapse.py",
        "pipeline/maths/imbalance.py",
        "pipeline/maths/simplex.py",
        *_RUN_CODE,
        *_SHARED_CODE,
    ),
)

AGGREGATE = Stage(
    name="aggregate",
    entry="aggregate_runs",
    matrix=(),
    deps={
        "geometry_dir": GridDir(GEOMETRY_DIR, (GEOMETRY_METRICS,)),
        "train_log_dir": GridDir(TRAIN_LOG_DIR, (TRAIN_LOG,)),
    },
    outs={
        "runs": RUNS_TABLE,
        "summary": SUMMARY_TABLE,
        "summary_csv": SUMMARY_CSV,
        "curves": CURVES_CSV,
        "growth": GROWTH_METRICS,
        "headline": HEADLINE_METRICS,
    },
    params=("grid",),
    code=(
        "pipeline/stages/aggregate.py",
        "pipeline/maths/statistics.py",
        "pipeline/infra/stage_table.py",
        "pipeline/infra/grid.py",
        *_RUN_CODE,
        *_SHARED_CODE,
    ),
    metrics=("headline",),
)

FIGURES = Stage(
    name="figures",
    entry="draw_figures",
    matrix=(),
    deps={
        "runs": RUNS_TABLE,
        "growth": GROWTH_METRICS,  # the iterations figure's fit, interval and band, as is
        # metrics.json: the per-class test accuracies of the imbalance figure (the runs table
        # leaves lists out)
        "geometry_dir": GridDir(GEOMETRY_DIR, (COSINES, GEOMETRY_METRICS)),
        "train_log_dir": GridDir(TRAIN_LOG_DIR, (TRAIN_LOG,)),
        "free_features": FREE_FEATURES_TABLE,  # the temperature figure's free-feature side
    },
    # only a grid that sweeps tau draws the temperature figure, so only its figures rerun when
    # the free features change
    needed_when={"free_features": lambda grid: _grid.sweeps_axis(grid, "temperature")},
    outs={"figures": FIGURES_DIR},
    # The temperature figure marks which tau reach the simplex by the claims' own tolerances:
    # these three keys only, so another claims tolerance reruns no figure.
    params=("grid", "figures", "claims.simplex_cosine_deviation", "claims.free_relative_gap",
            "claims.free_cosine_deviation"),
    # the figures read the training logs and per-run metrics with aggregate's own readers
    code=(
        "pipeline/stages/figures.py",
        "pipeline/stages/aggregate.py",
        "pipeline/maths/statistics.py",
        "pipeline/report/paper_plots.py",
        "pipeline/report/sweep_plots.py",
        "pipeline/maths/imbalance.py",
        *_RUN_CODE,
        *_PLOTTING_CODE,
    ),
    directory_outs=("figures",),
)

FREE_FEATURES = Stage(
    name="free_features",
    entry="free_features",
    matrix=(),
    deps={},
    outs={"table": FREE_FEATURES_TABLE, "figures": FREE_FEATURES_FIGURES},
    params=("free_features",),
    code=(
        "pipeline/stages/free_features.py",
        "pipeline/maths/free_features.py",
        "pipeline/maths/optim.py",
        "pipeline/maths/theory.py",
        "pipeline/maths/losses.py",
        "pipeline/maths/products.py",
        "pipeline/maths/simplex.py",
        "pipeline/maths/metrics.py",
        "pipeline/maths/collapse.py",
        "pipeline/maths/imbalance.py",
        *_PLOTTING_CODE,
    ),
    directory_outs=("figures",),
)

CLAIMS = Stage(
    name="claims",
    entry="tabulate_claims",
    matrix=(),
    deps={"runs": RUNS_TABLE, "growth": GROWTH_METRICS, "free_features": FREE_FEATURES_TABLE},
    outs={"table": CLAIMS_CSV, "markdown_table": CLAIMS_MD, "verdicts": CLAIMS_METRICS},
    params=("claims",),
    code=(
        "pipeline/stages/claims.py",
        "pipeline/maths/statistics.py",
        "pipeline/infra/grid.py",
        *_RUN_CODE,
        *_SHARED_CODE,
    ),
    metrics=("verdicts",),
)

STAGES: tuple[Stage, ...] = (
    NOISY_LABELS, TRAIN, EMBED, GEOMETRY, AGGREGATE, FIGURES, FREE_FEATURES, CLAIMS,
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


@dataclass(frozen=True)
class Plot:
    """A view for `dvc plots show` (a top-level plot of dvc.yaml): one column of a data file
    a stage writes, drawn by a template (DVC's own, or a custom one in .dvc/plots/)."""

    name: str  # plot id
    y: tuple[tuple[str, str], ...]  # (data file, column) pairs
    x: str
    template: str
    title: str
    x_label: str
    y_label: str


def _curve_plot(name: str, column: str, title: str, y_label: str) -> Plot:
    """One training-log column of every run against the iteration (template "curves")."""
    return Plot(
        name,
        y=((CURVES_CSV, column),),
        x="iteration",
        template="curves",
        title=title,
        x_label="iteration (SGD steps)",
        y_label=y_label,
    )


# Custom Vega-Lite templates in .dvc/plots/: "by_model" draws a line per model over a band of
# one standard deviation over the seeds (the summary's <metric>_std beside the plotted
# <metric>_mean; none with one seed; tests/test_plot_templates.py), "curves" a line per run
# (colour: noise fraction); both facet by dataset and augmentation and dash by revision, so
# `dvc plots diff` overlays commits. DVC reads plot data from CSV, not Parquet:
# hence aggregate's training_curves.csv.
PLOTS: tuple[Plot, ...] = (
    Plot(
        "iterations_to_fit",
        y=((SUMMARY_CSV, "iterations_to_fit_mean"),),
        x="noise_fraction",
        template="by_model",
        title="Iterations to fit the noisy labels, mean (band: one std) over the seeds that fit",
        x_label="noise fraction p",
        y_label="iterations to fit (SGD steps)",
    ),
    Plot(
        "test_accuracy",
        y=((SUMMARY_CSV, "test_accuracy_class_mean_mean"),),
        x="noise_fraction",
        template="by_model",
        title="Test accuracy of the class-mean classifier, mean (band: one std) over seeds",
        x_label="noise fraction p",
        y_label="test accuracy (fraction)",
    ),
    _curve_plot(
        "training_loss",
        "loss",
        "Training loss (mean over the steps since the previous evaluation)",
        "loss (nats)",
    ),
    _curve_plot(
        "training_gap",
        "loss_gap",
        "Loss minus its optimum (supcon) or bound (ce models)",
        "gap (nats)",
    ),
    _curve_plot(
        "train_accuracy",
        "train_accuracy_noisy",
        "Train accuracy on the labels trained on (noisy)",
        "accuracy (fraction)",
    ),
    _curve_plot(
        "test_accuracy_curve",
        "test_accuracy_class_mean",
        "Test accuracy of the class-mean classifier during training",
        "accuracy (fraction)",
    ),
)


def grid_jobs(stage: Stage, grid: dict) -> list[dict[str, str]]:
    """Every job of ``stage`` for a validated ``grid`` section, as wildcard -> text: the union
    of its run sets' products, projected on the stage's wildcards, each job once, in the
    axes' product order (:func:`pipeline.infra.grid.jobs`)."""
    return _grid.jobs(stage.matrix, grid)


def run_file(pattern: str, directory: str | Path, **wildcards: object) -> Path:
    """Where a per-run file of ``pattern`` lies when its top folder is ``directory``.

    Grid-wide stages get the folder as an argument (so tests can point them elsewhere) and
    find each run's file in it by the same pattern the per-run stages write.
    """
    top = pattern.split("/{", 1)[0]  # e.g. "data/geometry"
    return Path(directory) / fill(pattern, **wildcards).removeprefix(top + "/")
